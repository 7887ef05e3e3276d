"""A stand-in for the few CuPy and cuBLAS calls graph.py and gemm.py make, recording them,
so that the order of capture, release and frees, and the handles' lifetime, are checked
where no GPU is. It computes nothing: arrays are NumPy arrays or tiny placeholders."""
import contextlib
import itertools
import sys
import types

import numpy


class Recorder(list):
    def __call__(self, *event):
        self.append(event if len(event) > 1 else event[0])


class Block:
    """What cupy.empty returns for the workspace: something with .data.ptr, weakly referable."""

    _ptrs = itertools.count(0x1000, 0x100)

    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.data = types.SimpleNamespace(ptr=next(self._ptrs))


class Stream:
    _ptrs = itertools.count(1)

    def __init__(self, log, non_blocking=False):
        self.log, self.ptr, self.capturing = log, next(self._ptrs), False

    def __enter__(self):
        self.log.current.append(self)
        return self

    def __exit__(self, *exc):
        self.log.current.pop()

    def record(self):
        return ("event", self.ptr)

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def is_capturing(self):
        return self.capturing

    def begin_capture(self):
        self.capturing = True
        self.log("begin_capture")

    def end_capture(self):
        self.capturing = False
        self.log("end_capture")
        return types.SimpleNamespace(launch=lambda stream: self.log("launch"))


class Pool:
    def __init__(self, log, name):
        self.log, self.name = log, name
        self.held = 0  # what total_bytes reports; tests set it

    def free_all_blocks(self):
        self.log("free_all_blocks", self.name)
        self.held = 0

    def malloc(self, n):
        raise AssertionError("the fake allocates nothing")

    def total_bytes(self):
        return self.held


class CublasLib:
    """libcublas: handles are counted up from 1; created/destroyed list their values."""

    def __init__(self, log):
        self.log, self.created, self.destroyed, self._ids = log, [], [], itertools.count(1)

    def cublasCreate_v2(self, ref):
        ref._obj.value = next(self._ids)
        self.created.append(ref._obj.value)
        return 0

    def cublasDestroy_v2(self, handle):
        self.destroyed.append(handle.value)
        self.log("cublasDestroy", handle.value)
        return 0

    def cublasSetStream_v2(self, handle, stream):
        return 0

    def cublasSetWorkspace_v2(self, handle, ptr, size):
        return 0

    def cublasSetMathMode(self, handle, mode):
        return 0


def install(monkeypatch):
    """Put the fake in sys.modules['cupy'] and under gemm's _Handle; returns its log."""
    from gpucnn import gemm

    log = Recorder()
    log.current = []
    default_stream = Stream(log)
    default_pool = Pool(log, "default")
    cuda = types.SimpleNamespace(
        Stream=lambda non_blocking=False: Stream(log, non_blocking),
        get_current_stream=lambda: log.current[-1] if log.current else default_stream,
        MemoryPool=lambda: Pool(log, "graph"),
        using_allocator=lambda malloc: contextlib.nullcontext(),
    )
    fake = types.ModuleType("cupy")
    fake.ndarray = type("ndarray", (), {})  # no array is ever one: layers stay on NumPy
    fake.cuda = cuda
    fake.uint8 = numpy.uint8
    fake.empty = lambda n, dtype=None: Block(n)
    fake.empty_like = numpy.empty_like
    fake.get_default_memory_pool = lambda: default_pool
    monkeypatch.setitem(sys.modules, "cupy", fake)
    lib = CublasLib(log)
    monkeypatch.setattr(gemm._Handle, "_lib", lib)
    log.lib = lib
    log.default_pool = default_pool
    return log

