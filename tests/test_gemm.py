"""The capture-safe GEMM: the NumPy path, and the cuBLAS argument mapping checked against
an emulation of column-major GEMM semantics (the GPU itself is exercised by gpu tests)."""
import numpy
import pytest

from gpucnn import gemm


def colmajor_gemm(op_a, op_b, m, n, k, a_buf, lda, b_buf, ldb, ldc):
    """What cublas<t>gemm computes, on flat buffers read column-major with leading dims."""
    def view(buf, rows, cols, ld):  # a rows x cols column-major matrix with leading dim ld
        return numpy.lib.stride_tricks.as_strided(buf, (rows, cols), (buf.itemsize, ld * buf.itemsize))

    a = view(a_buf, k, m, lda).T if op_a == gemm._OP_T else view(a_buf, m, k, lda)
    b = view(b_buf, n, k, ldb).T if op_b == gemm._OP_T else view(b_buf, k, n, ldb)
    c = numpy.zeros(ldc * n)
    view(c, m, n, ldc)[...] = a @ b
    return c


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_cublas_arguments_compute_row_major_product(trans_a, trans_b):
    rng = numpy.random.default_rng(0)
    m, k, n = 3, 5, 4
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    args = gemm.gemm_arguments(a.shape, b.shape, trans_a, trans_b)
    flat = colmajor_gemm(args["op_first"], args["op_second"], args["m"], args["n"], args["k"],
                         b.ravel(), args["ld_first"], a.ravel(), args["ld_second"], args["ldc"])
    c = flat.reshape(args["c_shape"])  # the column-major (n x m) result is row-major (m x n)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    numpy.testing.assert_allclose(c, expected, rtol=1e-12)


def test_inner_dimension_mismatch_is_reported():
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm.gemm_arguments((3, 4), (5, 2), False, False)


def test_transposed_views_are_read_without_copy():
    a = numpy.ones((4, 3)).T  # F-contiguous view
    base, trans = gemm._row_major(a, False)
    assert trans and base.flags.c_contiguous and numpy.shares_memory(base, a)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_numpy_path_matches_matmul(trans_a, trans_b):
    rng = numpy.random.default_rng(1)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    numpy.testing.assert_array_equal(gemm.matmul(a, b, trans_a, trans_b), expected)


MAPS = [
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/venv/site-packages/torch/lib/libcublas.so.12",  # another library's CUDA 12 copy
    "/venv/site-packages/nvidia/cu13/lib/libcublasLt.so.13",
    "/venv/site-packages/nvidia/cu13/lib/libcublas.so.13",
]


def test_pick_libcublas_takes_cupys_cuda_major():
    assert gemm.pick_libcublas(MAPS, 13) == "/venv/site-packages/nvidia/cu13/lib/libcublas.so.13"
    assert gemm.pick_libcublas(MAPS, 12) == "/venv/site-packages/torch/lib/libcublas.so.12"
    assert gemm.pick_libcublas(["/x/libcublas.so.12.8.4.1"], 12) == "/x/libcublas.so.12.8.4.1"
    assert gemm.pick_libcublas(["/x/libcublas.so.120"], 12) is None  # not a version 12 file
    assert gemm.pick_libcublas(MAPS, 11) is None


@pytest.mark.gpu
def test_capture_gemm_rejects_other_dtypes():
    cupy = pytest.importorskip("cupy")
    handle = gemm.prepare_capture(cupy.cuda.Stream(non_blocking=True))
    a = cupy.ones((2, 3), dtype=cupy.float16)
    with pytest.raises(ValueError, match="only float32 and float64.*float16"):
        handle.gemm(a, a, False, True)
