"""The capture-safe GEMM: the NumPy path, and the cuBLAS argument mapping checked against
an emulation of column-major GEMM semantics (the GPU itself is exercised by gpu tests)."""
import ctypes

import numpy
import pytest

from fake_cupy import colmajor_gemm
from gpucnn import gemm


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


@pytest.mark.parametrize("build,shape", [("lenet", (1, 28, 28)), ("vgg_bn", (3, 8, 8))])
def test_an_empty_share_is_captured_through_cublas(monkeypatch, fake, build, shape):
    """A rank whose share of the last batch is empty: every GEMM its layers make, captured
    through our cuBLAS handle on the stand-in (which checks arguments as cuBLAS does),
    gives the NumPy results: empty outputs, and zero weight gradients (a sum over nothing)."""
    import fake_cupy
    from gpucnn import init, models
    from gpucnn.graph import GraphedStep

    calls = []
    plain = gemm.matmul

    def spy(a, b, trans_a=False, trans_b=False):
        calls.append((a.copy(), b.copy(), trans_a, trans_b))
        return plain(a, b, trans_a, trans_b)

    init.seed(0)
    model = models.build(build, shape, 10)
    for layer in model.leaves():
        if hasattr(layer, "lowering"):
            layer.lowering = "im2col"  # what CuPy runs (the banded lowering is NumPy's alone)
    monkeypatch.setattr(gemm, "matmul", spy)
    model.forward(numpy.zeros((0, *shape), numpy.float32))
    model.backward(numpy.zeros((0, 10), numpy.float32), input_grad=False)
    monkeypatch.setattr(gemm, "matmul", plain)
    assert calls and any(0 in a.shape + b.shape for a, b, _, _ in calls)
    expected = [(a.T if ta else a) @ (b.T if tb else b) for a, b, ta, tb in calls]

    on_device = [(a.view(fake_cupy.DeviceArray), b.view(fake_cupy.DeviceArray), ta, tb) for a, b, ta, tb in calls]
    graphed = GraphedStep(lambda x, y: [gemm.matmul(*call) for call in on_device])
    x, y = numpy.zeros((0, *shape), numpy.float32), numpy.zeros(0, numpy.int64)
    graphed(x, y)  # eager: a @ b
    captured = graphed(x, y)  # captured: our cuBLAS handle
    assert "begin_capture" in fake
    assert len(captured) == len(expected)
    for got, want in zip(captured, expected):
        assert got.shape == want.shape
        numpy.testing.assert_array_equal(got, want)


def test_the_stand_in_refuses_what_cublas_refuses(monkeypatch):
    """The fake's argument check is what makes the test above mean anything."""
    import fake_cupy

    lib = fake_cupy.CublasLib(fake_cupy.Recorder())
    one = ctypes.c_float(1.0)
    ptr = ctypes.c_void_p(numpy.zeros(4, numpy.float32).ctypes.data)
    ok = (None, 0, 0, 2, 2, 0, ctypes.byref(one), ptr, 2, ptr, 1, ctypes.byref(one), ptr, 2)
    assert lib.cublasSgemm_v2(*ok) == 0
    bad_ld = ok[:8] + (0,) + ok[9:]
    assert lib.cublasSgemm_v2(*bad_ld) == fake_cupy.CUBLAS_STATUS_INVALID_VALUE
    assert lib.cublasSgemm_v2(*ok[:3], -1, *ok[4:]) == fake_cupy.CUBLAS_STATUS_INVALID_VALUE


@pytest.mark.parametrize("a_shape,b_shape,trans_a,trans_b", [
    ((0, 5), (3, 5), False, True), ((4, 6), (6, 0), False, False), ((0, 3), (0, 5), True, False),
    ((2, 0), (0, 3), False, False)])
def test_leading_dimensions_of_empty_matrices_are_at_least_one(a_shape, b_shape, trans_a, trans_b):
    args = gemm.gemm_arguments(a_shape, b_shape, trans_a, trans_b)
    assert min(args["ld_first"], args["ld_second"], args["ldc"]) >= 1
