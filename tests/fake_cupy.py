"""A stand-in for the few CuPy and cuBLAS calls graph.py and gemm.py make, recording them,
so that the order of capture, release and frees, and the handles' lifetime, are checked
where no GPU is. Layers stay on NumPy; a graph's launch computes nothing. Its cuBLAS GEMM
checks its arguments as cuBLAS does and computes on `DeviceArray`s (NumPy memory)."""
import contextlib
import ctypes
import itertools
import sys
import types
import weakref

import numpy

CUBLAS_STATUS_INVALID_VALUE = 7


def colmajor_view(buf, rows, cols, ld):
    """A rows x cols column-major matrix with leading dimension ld over a flat buffer."""
    return numpy.lib.stride_tricks.as_strided(buf, (rows, cols), (buf.itemsize, ld * buf.itemsize))


def colmajor_gemm(op_a, op_b, m, n, k, a_buf, lda, b_buf, ldb, ldc):
    """What cublas<t>gemm computes, on flat buffers read column-major with leading dims."""
    a = colmajor_view(a_buf, k, m, lda).T if op_a == 1 else colmajor_view(a_buf, m, k, lda)
    b = colmajor_view(b_buf, n, k, ldb).T if op_b == 1 else colmajor_view(b_buf, k, n, ldb)
    c = numpy.zeros(ldc * n)
    colmajor_view(c, m, n, ldc)[...] = a @ b
    return c


class DeviceArray(numpy.ndarray):
    """What the fake's cupy.ndarray is: NumPy memory, with CuPy's `.data.ptr`."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


def _host(ptr, count, dtype):
    """The `count` elements of `dtype` at device address `ptr` (NumPy memory in this fake)."""
    if count == 0:
        return numpy.empty(0, dtype)
    return numpy.ctypeslib.as_array(ctypes.cast(ptr.value, ctypes.POINTER(numpy.ctypeslib.as_ctypes_type(dtype))),
                                    shape=(count,))


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
        self.capturing, self.retained = True, []
        self.log("begin_capture")

    def retain(self, release):
        """What a library does with cudaUserObjectCreate + cudaGraphRetainUserObject while
        capturing (NCCL, for its communicator): `release` runs when the graph is destroyed."""
        assert self.capturing, "retain outside a capture"
        self.retained.append(release)

    def end_capture(self):
        self.capturing = False
        self.log("end_capture")
        return Graph(self.log, self.retained)


class Graph:
    def __init__(self, log, retained):
        self.log = log
        weakref.finalize(self, _release_all, list(retained), log)

    def launch(self, stream):
        self.log("launch")


def _release_all(retained, log):
    log("graph destroyed")
    for release in retained:
        release()


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

    def cublasSgemm_v2(self, *args):
        return self._gemm(numpy.float32, *args)

    def cublasDgemm_v2(self, *args):
        return self._gemm(numpy.float64, *args)

    def _gemm(self, dtype, handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        """cuBLAS's argument checks (cublas_api docs: sizes >= 0, each leading dimension at
        least max(1, rows stored)), then C = alpha op(A) op(B) (beta is 0 here: C unread)."""
        self.log("gemm", m, n, k)
        rows_a, rows_b = (m if op_a == 0 else k), (k if op_b == 0 else n)
        if min(m, n, k) < 0 or lda < max(1, rows_a) or ldb < max(1, rows_b) or ldc < max(1, m):
            return CUBLAS_STATUS_INVALID_VALUE
        if m == 0 or n == 0:
            return 0  # cuBLAS returns at once
        cols_a, cols_b = m + k - rows_a, k + n - rows_b

        def stored(ptr, rows, cols, ld):
            return _host(ptr, ld * (cols - 1) + rows if cols else 0, dtype)

        result = colmajor_gemm(op_a, op_b, m, n, k, stored(a, rows_a, cols_a, lda), lda,
                               stored(b, rows_b, cols_b, ldb), ldb, ldc)
        out = stored(c, m, n, ldc)
        colmajor_view(out, m, n, ldc)[...] = alpha._obj.value * colmajor_view(result, m, n, ldc)
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
    fake.ndarray = DeviceArray  # the layers' arrays are plain NumPy ones: they stay on NumPy
    fake.cuda = cuda
    fake.is_stand_in = True
    fake.uint8, fake.float32, fake.float64 = numpy.uint8, numpy.float32, numpy.float64
    # a cuBLAS workspace is a Block; anything else, a DeviceArray
    fake.empty = lambda shape, dtype=None: Block(shape) if dtype is numpy.uint8 else \
        numpy.full(shape, numpy.nan, dtype).view(DeviceArray)  # cupy.empty's garbage, visibly
    fake.zeros = lambda shape, dtype=None: numpy.zeros(shape, dtype).view(DeviceArray)
    fake.empty_like = numpy.zeros_like  # what a capture computes on is never read: valid labels
    fake.get_default_memory_pool = lambda: default_pool
    monkeypatch.setitem(sys.modules, "cupy", fake)
    lib = CublasLib(log)
    monkeypatch.setattr(gemm._Handle, "_lib", lib)
    log.lib = lib
    log.default_pool = default_pool
    return log

