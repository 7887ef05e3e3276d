"""Checkpoints: one NumPy .npz file, written atomically, read without pickle.

Every array is an .npz entry under a prefixed key ("model/0.weight",
"optim/state/0.weight/exp_avg", "meta/..."). Everything else (epoch, step, RNG states,
the run's configuration, optimiser scalars, the format version) goes into one JSON
string entry, "__checkpoint__", which also records the nesting: an array appears there
as {"__array__": "<entry name>"} and a tuple as {"__tuple__": [...]}, so nested
optimiser state and RNG states (tuples, big ints) come back as they were saved.
"""
import json
import os

import numpy

from gpucnn import backend
from gpucnn.data.npzfile import read_npz
from gpucnn.errors import GpucnnError, short
from gpucnn.finite import check_finite
from gpucnn.outputs import check_output, write_atomically
from gpucnn.pathkind import kind, link_problem

FORMAT = "gpucnn-checkpoint"
VERSION = 1
_JSON_ENTRY = "__checkpoint__"
_ARRAY, _TUPLE = "__array__", "__tuple__"
MAX_DEPTH = 64  # what gpucnn writes nests about 6 deep; deeper is damage, refused before recursing
MAX_JSON = 64 << 20


class CheckpointError(GpucnnError, ValueError):
    """A checkpoint cannot be read or does not fit; the message names the file and the problem."""


def save_checkpoint(path, *, model_state, optim_state=None, meta=None):
    """Write model_state (flat {key: array}), optim_state (nested, or None) and meta
    (JSON-like: dicts with str keys, lists, tuples, numbers, str, None, arrays) to `path`.

    Atomic (gpucnn.outputs.write_atomically): a crash or an error leaves the previous
    checkpoint. A symlinked `path` keeps its link; the target is replaced. What is at `path`
    is checked again at every save (gpucnn.outputs.check_output): only a checkpoint is replaced.
    """
    path = os.fspath(path)
    check_output(path, what="checkpoint", is_ours=is_checkpoint)
    if not isinstance(model_state, dict) or not all(_is_array(v) for v in model_state.values()):
        raise TypeError("save_checkpoint: model_state must be a dict of arrays (Sequential.state_dict())")
    arrays = {}
    tree = {
        "format": FORMAT,
        "version": VERSION,
        "model": _encode(model_state, ("model",), arrays),
        "optim": _encode(optim_state, ("optim",), arrays),
        "meta": _encode(meta or {}, ("meta",), arrays),
    }
    arrays[_JSON_ENTRY] = numpy.array(json.dumps(tree))
    write_atomically(path, lambda f: numpy.savez(f, **arrays), what="checkpoint")


def is_checkpoint(path):
    """Whether `path` is a file gpucnn wrote as a checkpoint: its own marker entry says so.

    Reads only the zip directory and the JSON entry (its header checked first), not the
    arrays, so it is cheap, and a forged file cannot make it allocate."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        text = read_npz(path, error=CheckpointError, keys=(_JSON_ENTRY,), max_bytes=4 * MAX_JSON).get(_JSON_ENTRY)
        tree = json.loads(str(text[()])) if text is not None and text.dtype.kind == "U" and text.shape == () else None
    except (GpucnnError, OSError, ValueError, RecursionError):
        return False
    return isinstance(tree, dict) and tree.get("format") == FORMAT


def load_checkpoint(path):
    """Read a checkpoint: {"model_state": {key: array}, "optim_state": ..., "meta": {...}}.

    Raises CheckpointError (naming the file) if it is missing, unreadable, truncated,
    corrupt, not a gpucnn checkpoint, written by a newer format version, or holds a NaN or
    infinite number in any array (named by its entry, e.g. model/3.weight).
    """
    path = os.fspath(path)
    link = link_problem(path)
    if link:
        raise CheckpointError(f"{path}: is {link}, not a checkpoint file")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not os.path.isfile(path):  # a FIFO or device would block or never end
        raise CheckpointError(f"{path}: is not a regular file ({kind(os.stat(path).st_mode)}), not a checkpoint file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {short(e)}") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        what = "an empty file" if not magic else "not an .npz (zip) archive"
        raise CheckpointError(f"{path}: not a gpucnn checkpoint ({what})")
    # Read every entry now, each header checked against the file first (read_npz): a truncated,
    # corrupt or size-lying member fails here, not later.
    entries = read_npz(path, error=CheckpointError)
    if _JSON_ENTRY not in entries:
        raise CheckpointError(f"{path}: not a gpucnn checkpoint (an .npz archive without a {_JSON_ENTRY!r} entry)")
    text = entries.pop(_JSON_ENTRY)
    if text.dtype.kind != "U" or text.shape != () or text.nbytes > 4 * MAX_JSON:
        raise CheckpointError(f"{path}: its {_JSON_ENTRY!r} entry is not one JSON string "
                              f"({text.dtype} {text.shape}; corrupt checkpoint)")
    try:
        tree = json.loads(str(text[()]))
    except ValueError as e:
        raise CheckpointError(f"{path}: its {_JSON_ENTRY!r} entry is not valid JSON: {short(e)}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: its {_JSON_ENTRY!r} entry is nested too deeply (corrupt checkpoint)") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gpucnn checkpoint (format {tree.get('format') if isinstance(tree, dict) else None!r})")
    version = tree.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this gpucnn reads up to {VERSION} (upgrade gpucnn)")
    check_finite(entries, path, CheckpointError)  # weights, optimiser state, EMA: before any work
    model = _decode(tree.get("model"), entries, path)
    if not isinstance(model, dict) or not all(isinstance(v, numpy.ndarray) for v in model.values()):
        raise CheckpointError(f"{path}: its model state is not a dict of arrays")
    return {"model_state": model, "optim_state": _decode(tree.get("optim"), entries, path),
            "meta": _decode(tree.get("meta"), entries, path)}


def check_model_state(checkpoint_state, model_state, path=None):
    """Raise CheckpointError unless `checkpoint_state` has exactly `model_state`'s keys with
    the same shapes (i.e. comes from the same architecture); the message lists what differs."""
    missing = sorted(set(model_state) - set(checkpoint_state))
    unexpected = sorted(set(checkpoint_state) - set(model_state))
    shapes = [f"{k} is {tuple(numpy.shape(checkpoint_state[k]))} in the checkpoint, {tuple(model_state[k].shape)} in the model"
              for k in model_state if k in checkpoint_state
              and tuple(numpy.shape(checkpoint_state[k])) != tuple(model_state[k].shape)]
    kinds = [f"{k} holds {checkpoint_state[k].dtype} values, not numbers" for k in sorted(checkpoint_state)
             if isinstance(checkpoint_state[k], numpy.ndarray) and checkpoint_state[k].dtype.kind not in "fiub"]
    problems = []
    if kinds:
        problems.append(f"bad arrays: {_clip(kinds)}")
    if missing:
        problems.append(f"missing keys {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_clip(unexpected)}")
    if shapes:
        problems.append(f"shapes differ: {_clip(shapes)}")
    if problems:
        raise CheckpointError(f"{path or 'checkpoint'}: is from a different model ({'; '.join(problems)})")


# --- the JSON structure ------------------------------------------------------------
def _is_array(v):
    return isinstance(v, numpy.ndarray) or backend.is_cupy_array(v)


def _encode(obj, where, arrays):
    """JSON-ready copy of obj; arrays go into `arrays` under the '/'-joined path."""
    if _is_array(obj):
        a = backend.to_numpy(obj)
        if a.dtype.hasobject:
            raise TypeError(f"save_checkpoint: {'/'.join(where)} is an object array (cannot be saved without pickle)")
        name, n = "/".join(where), 1
        while name in arrays:  # keys containing '/' could collide; keep both
            n += 1
            name = f"{'/'.join(where)}#{n}"
        arrays[name] = a
        return {_ARRAY: name}
    if isinstance(obj, numpy.generic):  # numpy scalars: float32, int64, bool_
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"save_checkpoint: key {k!r} under {'/'.join(where)} is not a str")
            if k in (_ARRAY, _TUPLE):
                raise TypeError(f"save_checkpoint: key {k!r} under {'/'.join(where)} is reserved")
        return {k: _encode(v, (*where, k), arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, (*where, str(i)), arrays) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    raise TypeError(f"save_checkpoint: {'/'.join(where)} is a {type(obj).__name__}, which a checkpoint cannot hold")


def _decode(obj, arrays, path, depth=0):
    if depth > MAX_DEPTH and isinstance(obj, (dict, list)):
        raise CheckpointError(f"{path}: its structure nests more than {MAX_DEPTH} levels deep (corrupt checkpoint)")
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            try:
                return arrays[obj[_ARRAY]]
            except (KeyError, TypeError):
                raise CheckpointError(f"{path}: array entry {obj[_ARRAY]!r} is missing (corrupt checkpoint)") from None
        if set(obj) == {_TUPLE}:
            if not isinstance(obj[_TUPLE], list):
                raise CheckpointError(f"{path}: a {_TUPLE!r} entry holds {type(obj[_TUPLE]).__name__}, "
                                      f"not a list (corrupt checkpoint)")
            return tuple(_decode(v, arrays, path, depth + 1) for v in obj[_TUPLE])
        return {k: _decode(v, arrays, path, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays, path, depth + 1) for v in obj]
    return obj



def _clip(items, n=8):
    shown = ", ".join(items[:n])
    return f"[{shown}{f', ... ({len(items) - n} more)' if len(items) > n else ''}]"

