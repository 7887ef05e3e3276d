"""`gpucnn train --init-from FILE`: start training from weights made elsewhere.

FILE is a .safetensors file (gpucnn export writes them, as do most PyTorch tools) or a
PyTorch state_dict saved with torch.save (.pt / .pth / .bin), read with
torch.load(weights_only=True), which unpickles tensors and plain containers only.
Keys and shapes must match the model exactly, the rule of PyTorch's strict
load_state_dict; the error lists every missing and unexpected key and every shape that differs.
"""
import json
import os
import pickle
import re
import struct
import warnings

import numpy

from gpucnn.checkpoint import CheckpointError, check_model_state
from gpucnn.errors import GpucnnError, short
from gpucnn.install_hint import require
from gpucnn.finite import check_finite
from gpucnn.pathkind import kind, link_problem

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit on its JSON header


class InitFromError(GpucnnError, ValueError):
    """--init-from names a file whose weights cannot be read or do not fit the model."""


def check_source(path):
    """InitFromError unless `path` is a regular file of a known weights format (at start-up,
    before the data loads); returns the path as a string."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        link = link_problem(path)
        what = (f"is {link}" if link else f"not a regular file ({kind(os.stat(path).st_mode)})"
                if os.path.exists(path) else "no such file")
        raise InitFromError(f"--init-from {path}: {what}")
    if not path.lower().endswith((".safetensors", *TORCH_SUFFIXES)):
        raise InitFromError(f"--init-from {path}: unknown weights format; expected .safetensors or a PyTorch "
                            f"state_dict ({', '.join(TORCH_SUFFIXES)})")
    return path


def read_weights(path):
    """{key: NumPy array} from a .safetensors or PyTorch state_dict file; every value finite."""
    path = check_source(path)
    state = _read_safetensors(path) if path.lower().endswith(".safetensors") else _read_torch(path)
    check_finite(state, f"--init-from {path}", InitFromError)
    return state


def _read_safetensors(path):
    load_file = require("safetensors.numpy", "safetensors",
                        f"--init-from {path}: reading .safetensors needs the safetensors package", InitFromError).load_file
    from safetensors import SafetensorError

    try:
        return {k: _widened(v) for k, v in load_file(path).items()}
    except TypeError as e:
        if "bfloat16" not in str(e):
            raise InitFromError(f"--init-from {path}: not a readable .safetensors file ({short(e)})") from None
        return _read_safetensors_bf16(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise InitFromError(f"--init-from {path}: not a readable .safetensors file ({short(e)})") from None


def _widened(a):
    """A bfloat16 or 8-bit float array as float32 (exact). With ml_dtypes installed (onnx
    brings it), safetensors hands those back in ml_dtypes' types, which are no NumPy
    number kind: the strict load would refuse them as non-numeric."""
    if a.dtype.kind == "V" and a.dtype.name.startswith(("bfloat16", "float8")):
        return a.astype(numpy.float32)
    return a


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?"}


def safetensors_header(f):
    """The parsed JSON header of the .safetensors file open as `f` (at its start), leaving f at
    the first data byte; ValueError when it does not start with one."""
    raw = f.read(8)
    if len(raw) < 8:
        raise ValueError("too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_SAFETENSORS_HEADER:
        raise ValueError(f"declares a {n:,}-byte header, more than safetensors allows")
    return json.loads(f.read(n))


def _read_safetensors_bf16(path):
    """bfloat16 has no NumPy dtype, so safetensors' NumPy API refuses files holding it. The
    format is a JSON header of byte ranges, so read it directly: a bfloat16 is the top half
    of a float32, widened by a shift."""
    try:
        with open(path, "rb") as f:
            header = safetensors_header(f)
            body = f.read()
        header.pop("__metadata__", None)
        out = {}
        for key, info in header.items():
            start, end = info["data_offsets"]
            if info["dtype"] == "BF16":
                raw = numpy.frombuffer(body[start:end], dtype="<u2").astype(numpy.uint32) << 16
                out[key] = raw.view(numpy.float32).reshape(info["shape"])
            else:
                out[key] = numpy.frombuffer(body[start:end], dtype=_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InitFromError(f"--init-from {path}: not a readable .safetensors file ({short(e)})") from None
    return out


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise InitFromError(f"--init-from {path}: a PyTorch state_dict is read with torch, which is not "
                            f"installed; install torch, or convert the file to .safetensors") from None
    # torch warns about its own internals here (TypedStorage, quantized dtypes), as raw Python
    # warnings with source lines; they say nothing about the file, which is checked below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's message advises weights_only=False, which runs any code
            raise InitFromError(f"--init-from {path}: not a loadable PyTorch state_dict (it holds Python objects "
                                f"other than tensors and plain containers, which are not unpickled)") from None
        except Exception as e:  # RuntimeError (not a torch file), EOFError (truncated), ...
            raise InitFromError(f"--init-from {path}: not a loadable PyTorch state_dict ({_plain(short(e))})") from None
        if not isinstance(state, dict):
            raise InitFromError(f"--init-from {path}: holds a {type(state).__name__}, not a state_dict "
                                f"(a dict of tensors, as model.state_dict() gives)")
        bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            hint = next((f"; the weights may be under {k!r}: save that entry alone" for k in bad
                         if k in ("state_dict", "model_state_dict", "model")), "")
            raise InitFromError(f"--init-from {path}: is not a state_dict: entries {bad[:8]} are not tensors{hint}")
        odd = [f"{k} is {why}" for k, v in state.items() if (why := _not_plain(v))]
        if odd:
            raise InitFromError(f"--init-from {path}: {'; '.join(odd[:4])}{' ...' if len(odd) > 4 else ''}; "
                                f"only dense tensors holding values can be loaded")
        # bfloat16 / float16 have no exact NumPy twin in every version: widen to float32, as the
        # model would on loading anyway.
        return {k: (v.float() if v.is_floating_point() and v.dtype not in (torch.float32, torch.float64) else v)
                .detach().cpu().numpy() for k, v in state.items()}


def _not_plain(t):
    """Why tensor `t` has no plain array of values to load, or None when it has one."""
    import torch

    if t.is_meta:
        return "a meta tensor (a shape without values: saved from a model never materialised)"
    if t.is_nested:
        return "a nested tensor"
    if t.is_quantized:
        return "a quantized tensor (save tensor.dequantize())"
    if t.layout != torch.strided:
        return f"a {str(t.layout).replace('torch.', '')} tensor (save tensor.to_dense())"
    return None


def _plain(text):
    """`text` without the terminal colour codes torch puts in some messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def init_from(model, path, state=None):
    """Load the weights in `path` (or `state`, read_weights(path) already read) into `model`,
    strictly; returns how many arrays were loaded."""
    state = read_weights(path) if state is None else state
    try:
        check_model_state(state, model.state_dict(), f"--init-from {path}")
    except CheckpointError as e:
        hint = ""
        if state and all(k.startswith("module.") for k in state):
            hint = " (every key starts with 'module.': saved from a DataParallel wrapper; save model.module.state_dict())"
        raise InitFromError(str(e).replace("is from a different model", "does not fit this model") + hint) from None
    model.load_state_dict({k: numpy.asarray(v) for k, v in state.items()})
    return len(state)

