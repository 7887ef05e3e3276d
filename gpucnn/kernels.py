"""Loads the CUDA sources in kernels/*.cu and caches one compiled module per (file, dtype).

Every kernel is written once over `scalar_t`; it is compiled with -Dscalar_t=float or
-Dscalar_t=double, so float64 gradient checks run on the GPU too.
"""
import functools
import pathlib
import re
import shutil
import subprocess

import numpy

_HERE = pathlib.Path(__file__).resolve().parent
# Installed wheel: gpucnn/_kernels; source checkout or editable install: <repo>/kernels.
_CANDIDATES = (_HERE / "_kernels", _HERE.parent / "kernels")

SCALAR_T = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}


class KernelError(RuntimeError):
    """A kernel source is missing or failed to compile; the message names the .cu file."""


def kernel_dir():
    for d in _CANDIDATES:
        if d.is_dir() and any(d.glob("*.cu")):
            return d
    raise KernelError(f"no kernels/*.cu found (looked in {', '.join(map(str, _CANDIDATES))})")


def source_files():
    return sorted(kernel_dir().glob("*.cu"))


def _scalar_t(dtype):
    try:
        return SCALAR_T[numpy.dtype(dtype)]
    except KeyError:
        raise KernelError(f"CUDA kernels are built for float32 and float64, not {numpy.dtype(dtype)}") from None


_LOCAL_INCLUDE = re.compile(r'^#include "([^"/]+\.cuh)".*$', re.M)


def source_text(filename):
    """The source of kernels/`filename` with its local #include "x.cuh" lines inlined.

    Inlined here rather than found through an include path, so CuPy's compile cache
    (keyed on the source text) sees a change to a shared header too.
    """
    path = kernel_dir() / filename
    if not path.is_file():
        raise KernelError(f"kernel source {path} does not exist")

    def inline(match):
        header = path.parent / match.group(1)
        if not header.is_file():
            raise KernelError(f"{filename} includes {match.group(1)}, which does not exist")
        return header.read_text()

    return _LOCAL_INCLUDE.sub(inline, path.read_text())


def nvrtc_options(scalar_t):
    """The options every kernel source is compiled with by NVRTC (through CuPy)."""
    return ("-std=c++17", f"-Dscalar_t={scalar_t}")


@functools.lru_cache(maxsize=None)
def _module(filename, scalar_t):
    import cupy

    path = kernel_dir() / filename
    module = cupy.RawModule(code=source_text(filename), options=nvrtc_options(scalar_t))
    try:
        module.compile()
    except Exception as e:  # CuPy raises CompileException with NVRTC's log
        raise KernelError(f"{path.name} failed to compile for scalar_t={scalar_t}:\n{e}") from e
    return module


def get(filename, name, dtype):
    """The RawKernel `name` from kernels/`filename`, compiled for `dtype` (cached)."""
    return _function(filename, name, _scalar_t(dtype))


@functools.lru_cache(maxsize=None)
def _function(filename, name, scalar_t):
    module = _module(filename, scalar_t)
    try:
        return module.get_function(name)
    except Exception as e:
        raise KernelError(f"{filename} has no kernel named {name!r}: {e}") from e


# Elementwise kernels (a grid-stride loop over `total` elements) run this many threads a block
# and at most MAX_BLOCKS blocks; each thread loops over the rest (tests lower MAX_BLOCKS to
# make every thread take several turns).
THREADS = 256
MAX_BLOCKS = 1 << 20


def launch(filename, name, dtype, total, args):
    """Run the grid-stride kernel `name` of kernels/`filename` over `total` elements (none: no launch)."""
    if total == 0:
        return
    blocks = min((total + THREADS - 1) // THREADS, MAX_BLOCKS)
    get(filename, name, dtype)((blocks,), (THREADS,), args)


def nvcc_check(path, scalar_t="float", arch="sm_90"):
    """Compile one .cu with nvcc to a cubin (no GPU needed); return (ok, log). None if no nvcc."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    path = pathlib.Path(path)
    cmd = [nvcc, "-std=c++17", f"-arch={arch}", "-cubin", f"-Dscalar_t={scalar_t}", f"-I{path.parent}",
           "-o", "/dev/null", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr
