"""AvgPool2d and GlobalAvgPool2d: gradient checks, PyTorch parity (count_include_pad), errors, CuPy."""
import numpy
import pytest

from gpucnn.gradcheck import check_layer
from gpucnn.layers import AvgPool2d, GlobalAvgPool2d

from helpers import close, matches_torch, module_to_cupy

F32, F64 = numpy.float32, numpy.float64

CONFIGS = [  # (kernel_size, stride, padding, input shape)
    (2, None, 0, (2, 3, 6, 5)),  # a remainder column never pooled
    (3, 2, 1, (2, 2, 7, 6)),  # overlap and padding
    ((2, 3), (1, 2), (1, 1), (1, 2, 5, 7)),
    (3, 1, 0, (2, 1, 3, 4)),
    (1, 3, 0, (1, 2, 7, 7)),  # gaps between windows
]


@pytest.mark.parametrize("k,s,p,shape", CONFIGS)
def test_gradient_check_float64(k, s, p, shape, rng):
    errors = check_layer(AvgPool2d(k, s, p, dtype=F64), rng.standard_normal(shape))
    assert errors["x"] < 1e-6, errors


@pytest.mark.parametrize("dtype,rtol", [(F32, 1e-5), (F64, 1e-12)])
@pytest.mark.parametrize("k,s,p,shape", CONFIGS)
def test_matches_torch(k, s, p, shape, dtype, rtol, rng):
    torch = pytest.importorskip("torch")
    layer = AvgPool2d(k, s, p, dtype=dtype)
    ref = torch.nn.AvgPool2d(k, stride=s, padding=p)  # count_include_pad=True, ceil_mode=False by default
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(ref(torch.from_numpy(x)).shape).astype(dtype)
    matches_torch(layer, ref, x, dy, rtol)


def test_defaults_and_errors(rng):
    layer = AvgPool2d(3)
    assert layer.kernel_size == (3, 3) and layer.stride == (3, 3) and layer.padding == (0, 0)
    with pytest.raises(ValueError, match="padding .* at most half the kernel"):
        AvgPool2d(2, padding=2)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        AvgPool2d(3).forward(numpy.zeros((1, 1, 2, 5), F32))
    with pytest.raises(ValueError, match="expected a 4-d input"):
        AvgPool2d(2).forward(numpy.zeros((2, 4), F32))


@pytest.mark.parametrize("dtype,rtol", [(F32, 1e-5), (F64, 1e-12)])
def test_global_average_pool_is_adaptive_average_pool_1(dtype, rtol, rng):
    torch = pytest.importorskip("torch")
    layer = GlobalAvgPool2d(dtype=dtype)
    ref = torch.nn.AdaptiveAvgPool2d(1)  # no flatten: nets add Flatten, as PyTorch code does
    x = rng.standard_normal((3, 4, 5, 2)).astype(dtype)
    matches_torch(layer, ref, x, rng.standard_normal((3, 4, 1, 1)).astype(dtype), rtol)
    assert check_layer(GlobalAvgPool2d(dtype=F64), rng.standard_normal((2, 3, 3, 4)))["x"] < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("make", [lambda d: AvgPool2d(3, 2, 1, dtype=d), lambda d: GlobalAvgPool2d(dtype=d)])
def test_cupy_matches_numpy(make, dtype, rng):
    import cupy

    layer, twin = make(dtype), module_to_cupy(make(dtype), cupy)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    y = layer.forward(x)
    y_gpu = twin.forward(cupy.asarray(x))
    assert isinstance(y_gpu, cupy.ndarray)
    close(y_gpu, y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    close(twin.backward(cupy.asarray(dy)), layer.backward(dy))
