"""Matrix products for the layers: `a @ b`, except while a CUDA graph is being captured.

CuPy refuses every cuBLAS call during stream capture (its wrapper checks in setStream),
although cuBLAS itself captures fine. So for capture we keep a cuBLAS handle of our own,
loaded with ctypes from the very libcublas CuPy already mapped, bound to the capture
stream *before* capture begins, with a fixed workspace. Eager calls stay on `a @ b`.

The handle belongs to whoever asked for it (a GraphedStep): while it is referenced, GEMMs
captured on its stream use it; when the last reference goes, the handle is destroyed and
its workspace and stream are let go, so dropping a GraphedStep gives all three back.
"""
import ctypes
import os
import weakref

from gpucnn import backend

# cublasOperation_t and cublasMath_t values from cublas_api.h
_OP_N, _OP_T = 0, 1
_DEFAULT_MATH, _TF32_MATH = 0, 3
_WORKSPACE_BYTES = 32 << 20


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for 2-D arrays, op = transpose where asked."""
    if backend.is_cupy_array(a):
        handle = _capture_handle()
        if handle is not None:
            return handle.gemm(a, b, trans_a, trans_b)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def tf32_enabled():
    return os.environ.get("CUPY_TF32", "0") == "1"


class CublasError(RuntimeError):
    pass


# stream pointer -> the live _Handle bound to that stream. Weak: the owner's reference is
# what keeps a handle alive, and the handle holds its stream, so a pointer here always
# names the very stream it was bound to (a dead stream's pointer could be reused).
_handles = weakref.WeakValueDictionary()


def _capture_handle():
    cupy = backend.cupy_module()
    stream = cupy.cuda.get_current_stream()
    if not stream.is_capturing():
        return None
    handle = _handles.get(stream.ptr)
    if handle is None:
        raise CublasError(
            "a GEMM was captured on a stream with no cuBLAS handle bound; call "
            "gpucnn.gemm.prepare_capture(stream) before stream.begin_capture() and keep what it returns"
        )
    return handle


def prepare_capture(stream):
    """A cuBLAS handle bound to `stream` ahead of capture (must run before begin_capture).

    Keep the result for as long as graphs captured on `stream` may be replayed: the handle,
    its 32 MiB workspace and the stream are given back once nothing references it.
    """
    handle = _handles.get(stream.ptr)
    if handle is None:
        handle = _handles[stream.ptr] = _Handle(stream)
    return handle


def live_handles():
    """How many capture handles exist now (for tests and leak checks)."""
    return len(_handles)


def pick_libcublas(mapped_paths, cuda_major):
    """Of the files mapped into this process, the libcublas of CuPy's CUDA major version.

    Another library (a PyTorch built for another CUDA) may have mapped a libcublas of its
    own; handing CuPy's arrays to that one would be wrong. None when there is no match.
    """
    wanted = f"libcublas.so.{cuda_major}"
    for path in mapped_paths:
        name = os.path.basename(path)
        if name == wanted or name.startswith(wanted + "."):
            return path
    return None


def _find_libcublas():
    """The path of the libcublas CuPy has loaded (CUDA 12 and 13 name it differently)."""
    import cupy
    from cupy_backends.cuda.libs import cublas  # noqa: F401  (makes CuPy map libcublas)

    cupy.cuda.device.get_cublas_handle()
    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    with open("/proc/self/maps") as maps:
        path = pick_libcublas((line.split()[-1] for line in maps if "/" in line), major)
    if path is not None:
        return path
    try:
        ctypes.CDLL(f"libcublas.so.{major}")
        return f"libcublas.so.{major}"
    except OSError:
        raise CublasError(f"libcublas.so.{major} could not be found; run without CUDA graphs (--no-graph)") from None


class _Handle:
    _lib = None

    def __init__(self, stream):
        cupy = backend.cupy_module()
        if _Handle._lib is None:
            _Handle._lib = ctypes.CDLL(_find_libcublas())
        lib = _Handle._lib
        self.stream = stream
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        # From here on the handle exists: destroy it however this object ends (also if a
        # call below fails). The finaliser holds the stream and the workspace, so neither
        # goes before cublasDestroy, which waits for the device's pending work.
        keep = [stream]
        self._finalizer = weakref.finalize(self, _destroy, lib, self.handle, keep)
        self._finalizer.atexit = False  # at exit the driver frees it all; CUDA may be gone by then
        self._check(lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
        self.workspace = cupy.empty(_WORKSPACE_BYTES, dtype=cupy.uint8)
        keep.append(self.workspace)
        self._check(
            lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(_WORKSPACE_BYTES)),
            "cublasSetWorkspace",
        )
        math = _TF32_MATH if tf32_enabled() else _DEFAULT_MATH
        self._check(lib.cublasSetMathMode(self.handle, math), "cublasSetMathMode")

    def close(self):
        """Destroy the handle now (dropping the last reference does the same)."""
        if _handles.get(self.stream.ptr) is self:
            del _handles[self.stream.ptr]
        self._finalizer()

    @property
    def alive(self):
        return self._finalizer.alive

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise CublasError(f"{what} failed with cuBLAS status {status}")

    def gemm(self, a, b, trans_a, trans_b):
        """Row-major C = op(a) @ op(b) through cublas<S|D>gemm."""
        cupy = backend.cupy_module()
        if not self.alive:
            raise CublasError("gemm on a cuBLAS handle that was closed")
        if a.dtype != b.dtype:
            raise ValueError(f"gemm: dtypes differ ({a.dtype} and {b.dtype})")
        if a.dtype not in (cupy.float32, cupy.float64):
            raise ValueError(f"gemm: only float32 and float64 are supported, got {a.dtype}")
        a, trans_a = _row_major(a, trans_a)
        b, trans_b = _row_major(b, trans_b)
        args = gemm_arguments(a.shape, b.shape, trans_a, trans_b)
        if 0 in (args["m"], args["n"], args["k"]):
            # An empty share of a batch (data-parallel): nothing for cuBLAS to do. A sum over
            # nothing (k = 0) is zero; cupy.zeros is a memset, which a graph captures.
            return (cupy.zeros if args["k"] == 0 else cupy.empty)(args["c_shape"], dtype=a.dtype)
        c = cupy.empty(args["c_shape"], dtype=a.dtype)
        ctype, fn = (ctypes.c_float, self._lib.cublasSgemm_v2) if a.dtype == cupy.float32 else (ctypes.c_double, self._lib.cublasDgemm_v2)
        one, zero = ctype(1.0), ctype(0.0)
        self._check(
            fn(
                self.handle, args["op_first"], args["op_second"], args["m"], args["n"], args["k"],
                ctypes.byref(one), ctypes.c_void_p(b.data.ptr), args["ld_first"],
                ctypes.c_void_p(a.data.ptr), args["ld_second"],
                ctypes.byref(zero), ctypes.c_void_p(c.data.ptr), args["ldc"],
            ),
            "cublasGemm",
        )
        return c


def _destroy(lib, handle, keep):
    """cublasDestroy, then let go of what the handle used (`keep`: its stream, workspace)."""
    lib.cublasDestroy_v2(handle)  # nothing to report to from a finaliser; the status is dropped
    keep.clear()


def gemm_arguments(a_shape, b_shape, trans_a, trans_b):
    """cuBLAS (column-major) arguments for row-major C = op(A) @ op(B), A and B C-contiguous.

    A row-major matrix read column-major is its transpose, so cuBLAS computes
    C^T = op(B)^T op(A)^T: B goes first, A second, and the sizes swap. cuBLAS refuses a
    leading dimension below 1 even for an empty matrix, so none is.
    """
    m, k = (a_shape[1], a_shape[0]) if trans_a else a_shape
    k2, n = (b_shape[1], b_shape[0]) if trans_b else b_shape
    if k != k2:
        raise ValueError(f"gemm: inner dimensions differ ({m}x{k} @ {k2}x{n})")
    return {
        "op_first": _OP_T if trans_b else _OP_N, "op_second": _OP_T if trans_a else _OP_N,
        "m": n, "n": m, "k": k, "ld_first": max(1, b_shape[1]), "ld_second": max(1, a_shape[1]), "ldc": max(1, n),
        "c_shape": (m, n),
    }


def _row_major(x, trans):
    """A C-contiguous array and whether it is to be read transposed.

    A transposed view of a C-contiguous matrix is F-contiguous; reading its base
    transposed avoids a copy.
    """
    if x.flags.c_contiguous:
        return x, trans
    if x.flags.f_contiguous:
        return x.T, not trans
    return x.copy(), trans
