"""ReLU, Flatten and Softmax: gradient checks, PyTorch parity, errors, CuPy vs NumPy."""
import numpy
import pytest

from gpucnn.gradcheck import check_layer
from gpucnn.layers import Flatten, ReLU, Softmax

from helpers import close, in_memory_order, memory_order

F32, F64 = numpy.float32, numpy.float64



def away_from_zero(rng, shape):
    """Normal values pushed at least 1e-2 from 0, where ReLU's kink would spoil a finite difference."""
    x = rng.standard_normal(shape)
    return numpy.where(x >= 0, 1.0, -1.0) * (numpy.abs(x) + 1e-2)


# --- ReLU -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3, 2, 5), (3, 7), (2, 1, 1, 1), (5,)])
def test_relu_gradient_check(shape, rng):
    errors = check_layer(ReLU(dtype=F64), away_from_zero(rng, shape))
    assert errors["x"] < 1e-6, errors


def test_relu_values_and_gradient_at_zero():
    relu = ReLU(dtype=F64)
    x = numpy.array([[-2.0, 0.0, 3.0, -0.0]])
    numpy.testing.assert_array_equal(relu.forward(x), [[0.0, 0.0, 3.0, 0.0]])
    numpy.testing.assert_array_equal(relu.backward(numpy.full(x.shape, 5.0)), [[0.0, 0.0, 5.0, 0.0]])


def test_relu_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3, 5, 2)).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    relu = ReLU()
    y = relu.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(dy))
    numpy.testing.assert_array_equal(y, torch.relu(torch.tensor(x)).numpy())
    numpy.testing.assert_array_equal(relu.backward(dy), xt.grad.numpy())


def test_relu_errors():
    relu = ReLU()
    with pytest.raises(ValueError, match="ReLU: backward called before forward"):
        relu.backward(numpy.zeros(3, F32))
    with pytest.raises(ValueError, match="ReLU: expected input of dtype float32"):
        relu.forward(numpy.zeros(3, F64))
    with pytest.raises(ValueError, match="ReLU: expected an array"):
        relu.forward([1.0, 2.0])
    relu.forward(numpy.zeros((2, 3), F32))
    with pytest.raises(ValueError, match="ReLU: expected grad_out of shape"):
        relu.backward(numpy.zeros((3, 2), F32))


# --- Flatten ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3, 2, 5), (3, 4), (2, 1, 1, 1), (3, 2, 3)])
def test_flatten_gradient_check(shape, rng):
    errors = check_layer(Flatten(dtype=F64), rng.standard_normal(shape))
    assert errors["x"] < 1e-6, errors


def test_flatten_order_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 2, 5)).astype(F32)
    flat = Flatten()
    y = flat.forward(x)
    assert y.shape == (3, 40)
    numpy.testing.assert_array_equal(y, torch.nn.Flatten()(torch.tensor(x)).numpy())
    dy = rng.standard_normal(y.shape).astype(F32)
    numpy.testing.assert_array_equal(flat.backward(dy), dy.reshape(x.shape))


def test_flatten_backward_keeps_the_input_memory_order(rng):
    x = in_memory_order(rng.standard_normal((2, 3, 4, 5)).astype(numpy.float32), (0, 2, 1, 3))
    flat = Flatten()
    y = flat.forward(x)
    numpy.testing.assert_array_equal(y, numpy.ascontiguousarray(x).reshape(2, 60))  # C order of the values
    dy = rng.standard_normal(y.shape).astype(numpy.float32)
    dx = flat.backward(dy)
    numpy.testing.assert_array_equal(dx, dy.reshape(x.shape))
    assert memory_order(dx) == (0, 2, 1, 3)


def test_flatten_errors():
    flat = Flatten()
    with pytest.raises(ValueError, match="Flatten: backward called before forward"):
        flat.backward(numpy.zeros((2, 3), F32))
    with pytest.raises(ValueError, match="Flatten: expected an input .* at least 2 dimensions"):
        flat.forward(numpy.zeros(4, F32))
    with pytest.raises(ValueError, match="Flatten: expected input of dtype float32"):
        flat.forward(numpy.zeros((2, 2), F64))
    with pytest.raises(ValueError, match="Flatten: expected an array"):
        flat.forward("x")
    flat.forward(numpy.zeros((2, 3, 2), F32))
    with pytest.raises(ValueError, match="Flatten: expected grad_out of shape"):
        flat.backward(numpy.zeros((2, 3, 2), F32))


# --- Softmax ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 4), (3, 6), (5, 2), (2, 1)])
def test_softmax_gradient_check(shape, rng):
    errors = check_layer(Softmax(dtype=F64), rng.standard_normal(shape) * 3)
    assert errors["x"] < 1e-6, errors


def test_softmax_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((6, 10)) * 5).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    sm = Softmax()
    y = sm.forward(x)
    dx = sm.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.softmax(xt, dim=1)
    yt.backward(torch.tensor(dy))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())


def test_softmax_is_stable_for_large_inputs():
    sm = Softmax()
    y = sm.forward(numpy.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4, -1e4]], F32))
    assert numpy.isfinite(y).all()
    e = numpy.exp(-1.0)
    close(y[0], [1 / (1 + e), e / (1 + e), 0.0])
    close(y[1], [1 / 3] * 3)
    assert numpy.isfinite(sm.backward(numpy.ones(y.shape, F32))).all()


def test_softmax_errors():
    sm = Softmax()
    with pytest.raises(ValueError, match="Softmax: backward called before forward"):
        sm.backward(numpy.zeros((2, 3), F32))
    with pytest.raises(ValueError, match="Softmax: expected a 2-d input"):
        sm.forward(numpy.zeros((2, 3, 1, 1), F32))
    with pytest.raises(ValueError, match="Softmax: expected input of dtype float32"):
        sm.forward(numpy.zeros((2, 3), F64))
    sm.forward(numpy.zeros((2, 3), F32))
    with pytest.raises(ValueError, match="Softmax: expected grad_out of dtype"):
        sm.backward(numpy.zeros((2, 3), F64))


# --- CuPy vs NumPy ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("make,shape", [(ReLU, (4, 3, 5, 6)), (Flatten, (4, 3, 5, 6)), (Softmax, (8, 10))],
                         ids=["ReLU", "Flatten", "Softmax"])
def test_cupy_matches_numpy(make, shape, rng):
    cupy = pytest.importorskip("cupy")
    x = (rng.standard_normal(shape) * 3).astype(F32)
    cpu, gpu = make(), make()
    y = gpu.forward(cupy.asarray(x))
    assert isinstance(y, cupy.ndarray)
    close(y, cpu.forward(x))
    dy = rng.standard_normal(y.shape).astype(F32)
    dx = gpu.backward(cupy.asarray(dy))
    assert isinstance(dx, cupy.ndarray) and dx.shape == x.shape
    close(dx, cpu.backward(dy))
