"""The --metrics-out file: one strict-JSON object per epoch (JSON Lines), appended.

Written by the trainer, read by `gpucnn plot`. Strict JSON: a value that is not a finite
number (a test loss that overflowed) is written as null, never as NaN, which standard JSON
parsers reject. A file is "ours", and may be appended to, when it is empty or every line is
a JSON object holding at least KEYS; anything else is refused before training starts.
"""
import json
import math
import os

from gpucnn.errors import GpucnnError
from gpucnn.outputs import OutputWriteError, write_atomically

KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
MAX_LINE = 1 << 20  # one epoch's row is a few hundred bytes


class MetricsError(GpucnnError, ValueError):
    """A metrics file that cannot be read; the message names the file, the line and why."""


def encode(row):
    """One line of strict JSON for `row`; non-finite floats become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def start(path):
    """Empty the metrics file at `path` (a new run's; check_output has made sure it is ours)."""
    write_atomically(path, lambda f: None, what="metrics file")  # its own OutputWriteError names the path


def append(path, row):
    """Append `row` as one line to the metrics file at `path` (created if missing)."""
    line = encode(row)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as e:
        raise OutputWriteError(f"{path}: cannot write the metrics file: {e.strerror or e}") from None


def read(path, allow_empty=False):
    """The rows of a metrics file, each checked: a JSON object with KEYS, whose values are
    numbers or null (epoch: a finite number). MetricsError names the first bad line; reading
    stops there, so a large file that is not ours costs one line, not the whole file."""
    rows = []
    try:
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block, a device never end
            raise MetricsError(f"cannot read metrics file {path}: not a regular file")
        with open(path, "rb") as f:
            for lineno, line in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
                if len(line) > MAX_LINE:
                    raise MetricsError(f"{path}, line {lineno}: longer than {MAX_LINE:,} bytes; "
                                       f"not a metrics file written by gpucnn train")
                row = _parse_line(line, path, lineno)
                if row is not None:
                    rows.append(row)
    except OSError as e:
        raise MetricsError(f"cannot read metrics file {path}: {e.strerror}") from None
    if not rows and not allow_empty:
        raise MetricsError(f"{path} holds no epochs")
    return rows


def _parse_line(line, path, lineno):
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MetricsError(f"{path}, line {lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at column "
                           f"{e.start + 1}); not a metrics file written by gpucnn train") from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise MetricsError(f"{path}, line {lineno}: not a JSON object "
                           f"({getattr(e, 'msg', 'nested too deeply')})") from None
    return _check_row(row, path, lineno)


def _check_row(row, path, lineno):
    if not isinstance(row, dict):
        raise MetricsError(f"{path}, line {lineno}: not a JSON object (a {_json_kind(row)})")
    missing = [k for k in KEYS if k not in row]
    if missing:
        raise MetricsError(f"{path}, line {lineno}: missing {', '.join(missing)}")
    for k in KEYS:
        v = row[k]
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not (number or (v is None and k != "epoch")) or (k == "epoch" and not math.isfinite(v)):
            raise MetricsError(f"{path}, line {lineno}: {k} is {json.dumps(v)[:40]}, not a number")
    return row


def _json_kind(v):
    return {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
            list: "list"}.get(type(v), type(v).__name__)


def is_metrics_file(path):
    """Whether `path` is a metrics file gpucnn may append to (empty, or every line ours)."""
    try:
        read(path, allow_empty=True)
    except MetricsError:
        return False
    return True
