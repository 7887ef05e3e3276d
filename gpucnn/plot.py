"""`gpucnn plot`: loss and accuracy curves from a --metrics-out JSONL file.

The image format comes from the output's suffix (no suffix: .png is added, and the line
printed says so). An existing output is replaced only when it is a figure gpucnn wrote (its
magic bytes, and the mark every gpucnn figure carries in its metadata), the same rule as every
gpucnn output (gpucnn.outputs): a picture of the user's with the same suffix never is.
"""
import os

from gpucnn.errors import GpucnnError
from gpucnn.install_hint import require
from gpucnn.metrics import read as read_metrics
from gpucnn.outputs import check_distinct, check_output, write_atomically

# suffix -> matplotlib format
FORMATS = {"png": "png", "pdf": "pdf", "svg": "svg", "eps": "eps", "ps": "ps", "jpg": "jpeg", "jpeg": "jpeg",
           "tif": "tiff", "tiff": "tiff", "webp": "webp"}
# matplotlib format -> test of a file's first bytes
LOOKS_LIKE = {
    "png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "pdf": lambda b: b.startswith(b"%PDF-"),
    "svg": lambda b: b.lstrip().startswith((b"<?xml", b"<svg")) and b"<svg" in b,
    "eps": lambda b: b.startswith(b"%!PS"),
    "ps": lambda b: b.startswith(b"%!PS"),
    "jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
    "tiff": lambda b: b.startswith((b"II*\x00", b"MM\x00*")),
    "webp": lambda b: b.startswith(b"RIFF") and b[8:12] == b"WEBP",
}


def output_path(out_path):
    """(path to write, matplotlib format): .png added when there is no suffix; an unknown
    suffix is an error listing the known ones."""
    out_path = os.fspath(out_path)
    suffix = os.path.splitext(out_path)[1]
    if not suffix and os.path.lexists(out_path):  # -o /dev/full, -o a_dir: refused as what they are
        check_output(out_path, what="image", is_ours=lambda p: False)
    if not suffix and not out_path.endswith(os.sep):
        out_path, suffix = out_path + ".png", ".png"
    key = suffix[1:].lower()
    if key not in FORMATS:
        raise GpucnnError(f"{out_path}: unknown image suffix {suffix or '(none)'!r}; use one of "
                          f"{', '.join('.' + k for k in FORMATS)}")
    return out_path, FORMATS[key]


def check_plot_output(metrics_path, out_path):
    """Start-up check of -o: a new file, or an image of the same format; returns (path, format)."""
    return check_image_output(out_path, "-o", METRICS=metrics_path)


def check_image_output(out_path, flag, **inputs):
    """Start-up check of an image a command will write (`flag` names it in errors): a new
    file, or an image of the same format, and none of `inputs` (flag -> path); returns
    (path, format)."""
    out_path, fmt = output_path(out_path)
    check_distinct(**inputs, **{flag: out_path})
    check_output(out_path, what=f"{fmt} image", is_ours=lambda p: is_our_figure(p, fmt))
    return out_path, fmt


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or the error saying how to install it."""
    require("matplotlib", "plot", "plotting needs matplotlib").use("Agg")
    return require("matplotlib.pyplot", "plot", "plotting needs matplotlib")


# Every figure gpucnn writes carries this in its metadata, and only a file of the right format
# that carries it is ever replaced: an image of the user's with the same suffix never is.
MARK = "gpucnn figure"
# Where each format keeps the mark: matplotlib's metadata, or Pillow's own field for the rest.
_MARKED = {
    "png": {"metadata": {"Software": MARK}},
    "pdf": {"metadata": {"Creator": MARK}}, "svg": {"metadata": {"Creator": MARK}},
    "eps": {"metadata": {"Creator": MARK}}, "ps": {"metadata": {"Creator": MARK}},
    "jpeg": {"pil_kwargs": {"comment": MARK.encode()}},
    "tiff": {"pil_kwargs": {"description": MARK}},
    "webp": {"pil_kwargs": {"exif": b"Exif\x00\x00" + MARK.encode()}},
}


def save_figure(fig, out_path, fmt):
    """Write `fig` to a path check_image_output returned (atomically, marked as gpucnn's), and close it."""
    import matplotlib.pyplot as plt

    try:
        write_atomically(out_path, lambda f: fig.savefig(f, format=fmt, dpi=120, **_MARKED[fmt]), what=f"{fmt} image")
    except (ValueError, ImportError, RuntimeError, TypeError) as e:  # a format this matplotlib cannot write
        raise GpucnnError(f"{out_path}: matplotlib cannot write {fmt}: {e}") from None
    finally:
        plt.close(fig)


def is_our_figure(path, fmt, n=65536):
    """An image of format `fmt` that gpucnn wrote: its magic bytes, and the mark in its first or
    last 64 KB (a PDF's or WebP's metadata sits at the end), so the check reads at most 128 KB."""
    try:
        with open(path, "rb") as f:
            head = f.read(n)
            f.seek(max(0, os.fstat(f.fileno()).st_size - n))
            tail = f.read(n)
    except OSError:
        return False
    mark = MARK.encode()
    return LOOKS_LIKE[fmt](head) and (mark in head or mark in tail)


def plot(metrics_path, out_path):
    """Draw the curves of `metrics_path` into `out_path`; returns the path written."""
    out_path, fmt = check_plot_output(metrics_path, out_path)
    rows = read_metrics(metrics_path)
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, marker in (("train", "o-"), ("val", "^-"), ("test", "s-")):
            if split == "val" and not any("val_loss" in r for r in rows):  # a run without --val-split
                continue
            # null (a non-finite value, or a test split scored only at the end) is a gap in the curve
            ax.plot(epochs, [float("nan") if r.get(f"{split}_{key}") is None else r[f"{split}_{key}"] for r in rows],
                    marker, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(str(metrics_path)))
    fig.tight_layout()
    save_figure(fig, out_path, fmt)
    return out_path
