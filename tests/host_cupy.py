"""A stand-in for CuPy that runs gpucnn's CuPy code path on the CPU: its arrays are NumPy
arrays (a subclass, so `backend.is_cupy_array` is true for them), its functions are NumPy's,
and its RawModule compiles the CUDA source gpucnn/kernels.py hands it, with the very options,
as plain C++ with g++ (tests/host/cuda_on_host.h) and runs each launch's whole grid on the CPU.

So the kernels in kernels/*.cu AND the Python that launches them (argument order and types,
grid, the arrays it allocates) are checked against the NumPy layers and optimisers where no
GPU is. Each launch checks the C types of the kernel's parameters against what the caller
passes (an array: its dtype as a pointer; a NumPy scalar: its dtype), as CuPy does not.

Use: `install(monkeypatch)` (the `host_cupy` fixture in test_kernels_on_host.py).
"""
import ctypes
import hashlib
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import types

import numpy

SHIM = pathlib.Path(__file__).resolve().parent / "host" / "cuda_on_host.h"
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_CODES = {("f", 4): "f", ("f", 8): "d", ("i", 4): "i", ("u", 4): "I", ("i", 8): "q", ("u", 8): "Q"}
_BUILD_DIR = pathlib.Path(tempfile.gettempdir()) / f"gpucnn-host-kernels-{os.getuid()}"


class ndarray(numpy.ndarray):
    """A 'device' array: a NumPy array that gpucnn takes for a CuPy one."""

    def get(self):
        return numpy.array(self)


def _device(value):
    if isinstance(value, numpy.ndarray) and not isinstance(value, ndarray):
        return value.view(ndarray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    return value


def _code(value):
    """The C type code of one kernel argument (see code_of in cuda_on_host.h)."""
    if isinstance(value, numpy.ndarray):
        return _CODES[value.dtype.kind, value.dtype.itemsize] + "*"
    if isinstance(value, numpy.generic):
        return _CODES[value.dtype.kind, value.dtype.itemsize]
    raise TypeError(f"kernel argument {value!r} ({type(value).__name__}): pass an array or a NumPy scalar, "
                    "so its C type is explicit")


class Function:
    """One kernel of a host-compiled module: call it as CuPy's RawKernel, (grid, block, args)."""

    def __init__(self, lib, name, module):
        self.name, self.module = name, module
        self._launch = getattr(lib, f"host_launch_{name}")
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint, ctypes.c_uint, ctypes.c_uint]
        signature = getattr(lib, f"host_signature_{name}")
        signature.restype = ctypes.c_char_p
        self.signature = signature().decode()

    def __call__(self, grid, block, args):
        assert isinstance(grid, tuple) and isinstance(block, tuple) and isinstance(args, tuple), (grid, block, args)
        assert len(block) == 1 and 1 <= len(grid) <= 2, (grid, block)
        given = "".join(_code(a) + "," for a in args)
        if given != self.signature:
            raise TypeError(f"{self.name}{self.module.options}: the kernel takes ({self.signature}), "
                            f"the caller passed ({given})")
        for a in args:
            if isinstance(a, numpy.ndarray) and not a.flags.c_contiguous:
                raise ValueError(f"{self.name}: an argument of shape {a.shape} is not C-contiguous")
        keep = [a if isinstance(a, numpy.ndarray) else numpy.array(a) for a in args]
        pointers = [ctypes.c_void_p(a.ctypes.data) for a in keep]  # arrays: their data pointer
        slots = (ctypes.c_void_p * len(args))(*[
            ctypes.addressof(p) if isinstance(a, numpy.ndarray) else k.ctypes.data
            for a, k, p in zip(args, keep, pointers)])
        gx, gy = (*grid, 1)[:2]
        self.module.launches.append((self.name, tuple(grid), tuple(block)))
        self._launch(slots, gx, gy, block[0])


class RawModule:
    """cupy.RawModule(code=..., options=...): compiled with g++ on compile() or first use."""

    extra_options = ()  # tests add -D flags (e.g. to force the 64-bit index paths)

    def __init__(self, code, options=()):
        self.code, self.options, self.launches, self._lib = code, tuple(options), [], None

    def compile(self):
        if self._lib is None:
            self._lib = ctypes.CDLL(str(build(self.code, self.options + tuple(self.extra_options))))
        return self

    def get_function(self, name):
        self.compile()
        return Function(self._lib, name, self)


def build(code, options):
    """Compile `code` as a shared library for the host; cached by its text and options."""
    for o in options:
        if not (o.startswith("-D") or o == "-std=c++17"):
            raise ValueError(f"host build: option {o!r} has no g++ counterpart here")
    names = _KERNEL.findall(code)
    text = code + "\n" + "".join(f"HOST_KERNEL({n})\n" for n in names)
    defines = ["-DHOST_THREADS_PER_BLOCK"] if "__syncthreads" in code else []
    key = hashlib.sha256((text + repr(options) + SHIM.read_text()).encode()).hexdigest()[:20]
    lib = _BUILD_DIR / f"{key}.so"
    if not lib.exists():
        _BUILD_DIR.mkdir(exist_ok=True)
        src = _BUILD_DIR / f"{key}.cpp"
        src.write_text(text)
        tmp = _BUILD_DIR / f"{key}.{os.getpid()}.so"
        cmd = ["g++", "-O1", "-shared", "-fPIC", "-pthread", *options, *defines, "-include", str(SHIM),
               "-x", "c++", str(src), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"host build failed: {' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, lib)
    return lib


def _wrap(fn):
    def wrapped(*args, **kwargs):
        return _device(fn(*args, **kwargs))

    return wrapped


def make_module(sm_count=8):
    """The stand-in module: NumPy's functions returning 'device' arrays, RawModule, cuda."""
    fake = types.ModuleType("cupy")
    fake.ndarray = ndarray
    fake.RawModule = RawModule
    fake.asnumpy = lambda a: numpy.array(a)
    fake.cuda = types.SimpleNamespace(
        Device=lambda *a: types.SimpleNamespace(id=0),
        get_current_stream=lambda: types.SimpleNamespace(is_capturing=lambda: False),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"multiProcessorCount": sm_count}),
    )

    def getattr_(name):
        value = getattr(numpy, name)
        return _wrap(value) if callable(value) and not isinstance(value, type) else value

    fake.__getattr__ = getattr_
    return fake


def install(monkeypatch, sm_count=8):
    """Make the stand-in `cupy` for gpucnn (sys.modules, backend.xp) and drop any kernels
    or device properties gpucnn cached from another cupy; returns the module."""
    from gpucnn import backend

    fake = make_module(sm_count)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "xp", fake)
    monkeypatch.setattr(RawModule, "extra_options", ())
    clear_caches()
    return fake


def clear_caches():
    """Forget the kernels and device properties gpucnn cached (call again after the test)."""
    from gpucnn import kernels
    from gpucnn.layers import batchnorm

    for cached in (kernels._module, kernels._function, batchnorm._sm_count):
        cached.cache_clear()
