"""The array backend, chosen once at start-up from GPUCNN_BACKEND=auto|numpy|cupy.

Layers never import numpy or cupy for array math: they ask `get_array_module(x)`
for the module that owns their input (Chainer's rule), and new arrays are made
on the live backend, `backend.xp`.
"""
import os
import sys

import numpy

from gpucnn.errors import BackendError, short
from gpucnn.install_hint import install_hint

ALLOWED = ("auto", "numpy", "cupy")


def _probe_cupy():
    """(cupy, None, None) when CuPy imports and a CUDA device answers, else (None, why, notice):
    why in full, for an error; notice, one short line for the fallback, or None when CuPy is
    simply not installed (a CPU-only machine needs no word about it)."""
    try:
        import cupy
    except ModuleNotFoundError as e:
        if e.name == "cupy":
            return None, f"CuPy is not installed; install it with: {install_hint('gpu')}", None
        return None, f"CuPy failed to import: {short(e)}", f"CuPy is installed but does not import ({short(e)})"
    except Exception as e:  # a broken CUDA install fails inside CuPy's own import
        return None, f"CuPy failed to import: {short(e)}", f"CuPy is installed but does not import ({short(e)})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, driver too old, no device node
        return None, f"no usable CUDA device: {short(e)}", f"CuPy is installed but finds no usable GPU ({_gist(e)})"
    if n < 1:
        return None, "no CUDA device found", "CuPy is installed but finds no GPU"
    try:
        cupy.zeros(1).sum().item()
    except Exception as e:
        return None, f"CUDA device found but unusable: {short(e)}", f"the GPU does not run CuPy ({_gist(e)})"
    return cupy, None, None


def _gist(e):
    """A CUDA error's name alone (cudaErrorInsufficientDriver), else the one-line message."""
    head = str(e).split(":", 1)[0].strip()
    return head if head.startswith(("cuda", "CUDA_ERROR")) else short(e)


def _notice(text):
    """The fallback said once, on a line of its own: by rank 0 alone under an MPI launcher, so
    that N ranks' lines do not interleave."""
    from gpucnn.distributed import LAUNCHER_VARS

    rank = next((os.environ[r] for _, r in LAUNCHER_VARS if r in os.environ), "0")
    if rank.strip() in ("", "0"):
        print(f"gpucnn: {text}; using NumPy", file=sys.stderr, flush=True)



def _resolve(name):
    name = (name or "auto").strip().lower()
    if name not in ALLOWED:
        raise BackendError(f"GPUCNN_BACKEND={name!r} is not a backend; allowed: {', '.join(ALLOWED)}")
    if name == "numpy":
        return numpy, "numpy"
    cupy, why, notice = _probe_cupy()
    if cupy is not None:
        return cupy, "cupy"
    if name == "cupy":
        raise BackendError(f"GPUCNN_BACKEND=cupy was asked for but CuPy cannot be used: {why}")
    if notice:
        _notice(notice)
    return numpy, "numpy"


def select(name):
    """Make `name` the live backend (the CLI's --backend calls this before building a model)."""
    global xp, name_
    xp, name_ = _resolve(name)
    return xp


def name():
    """'numpy' or 'cupy'."""
    return name_


def cupy_module():
    """The cupy module if it has been imported successfully, else None (never imports it)."""
    mod = sys.modules.get("cupy")
    return mod if mod is not None and hasattr(mod, "ndarray") else None


def is_cupy_array(a):
    cp = cupy_module()
    return cp is not None and isinstance(a, cp.ndarray)


def get_array_module(*arrays):
    """numpy or cupy, whichever owns the arrays (numpy for plain Python values)."""
    for a in arrays:
        if is_cupy_array(a):
            return cupy_module()
    return numpy


def to_device(a, dtype=None):
    """Copy a host (or device) array onto the live backend."""
    if xp is numpy:
        return numpy.asarray(to_numpy(a), dtype=dtype)
    return xp.asarray(a, dtype=dtype)


def to_numpy(a):
    """A NumPy copy of any backend's array (no copy for NumPy input)."""
    if is_cupy_array(a):
        return a.get()
    return numpy.asarray(a)


def synchronize():
    """Wait for the device; a no-op on NumPy. Timing code needs it around a timed region."""
    if name_ == "cupy":
        xp.cuda.get_current_stream().synchronize()


xp = numpy
name_ = "numpy"
select(os.environ.get("GPUCNN_BACKEND", "auto"))
