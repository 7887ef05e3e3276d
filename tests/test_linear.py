"""Linear: gradient check, PyTorch parity, errors, CuPy vs NumPy."""
import numpy
import pytest

from gpucnn.gradcheck import check_layer
from gpucnn.layers import Linear

from helpers import cupy_matches_numpy, matches_torch, passes_gradient_check

F32, F64 = numpy.float32, numpy.float64

# (N, in_features, out_features, bias)
CASES = [(1, 3, 5, True), (3, 7, 2, False), (4, 1, 1, True), (3, 10, 4, True), (2, 5, 9, False)]


def ids(case):
    n, i, o, bias = case
    return f"{n}x{i}to{o}-{'bias' if bias else 'nobias'}"



def make(case, rng, dtype):
    n, i, o, bias = case
    return Linear(i, o, bias=bias, dtype=dtype), rng.standard_normal((n, i)).astype(dtype)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_gradient_check_float64(case, rng):
    layer, x = make(case, rng, F64)
    assert ("bias" in layer.params) == case[-1]
    passes_gradient_check(layer, x)


@pytest.mark.parametrize("case", CASES + [(128, 256, 120, True), (128, 84, 10, True)], ids=ids)
def test_matches_torch_float32(case, rng):
    torch = pytest.importorskip("torch")
    layer, x = make(case, rng, F32)
    _, i, o, bias = case
    ref = torch.nn.Linear(i, o, bias=bias)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.params.items()})
    dy = rng.standard_normal((x.shape[0], o)).astype(F32)
    matches_torch(layer, ref, x, dy)


@pytest.mark.parametrize("bias", [True, False])
def test_repr_matches_torch(bias):
    torch = pytest.importorskip("torch")
    assert repr(Linear(256, 120, bias=bias)) == repr(torch.nn.Linear(256, 120, bias=bias))


def test_parameters_follow_pytorch_init():
    layer = Linear(50, 20)
    bound = 1 / numpy.sqrt(50)
    assert layer.params["weight"].shape == (20, 50) and layer.params["bias"].shape == (20,)
    for p in layer.params.values():
        assert p.dtype == F32 and numpy.abs(p).max() <= bound
    assert numpy.abs(layer.params["weight"]).max() > 0.9 * bound
    assert set(Linear(3, 2, bias=False).params) == {"weight"}


def test_forward_does_not_touch_input_and_output_is_fresh(rng):
    layer, x = make(CASES[0], rng, F64)
    keep = x.copy()
    y1 = layer.forward(x)
    y1_keep = y1.copy()
    layer.forward(x + 1)
    numpy.testing.assert_array_equal(x, keep)
    numpy.testing.assert_array_equal(y1, y1_keep)


# --- errors name the layer ------------------------------------------------------------------


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"Linear.*2-d"):
        Linear(4, 3).forward(numpy.zeros((2, 4, 1, 1), F32))


def test_wrong_feature_count():
    with pytest.raises(ValueError, match="Linear.*4 channels/features"):
        Linear(4, 3).forward(numpy.zeros((2, 5), F32))


def test_wrong_dtype():
    with pytest.raises(ValueError, match="Linear.*dtype"):
        Linear(4, 3).forward(numpy.zeros((2, 4), F64))


def test_backward_before_forward():
    with pytest.raises(ValueError, match="Linear.*before forward"):
        Linear(4, 3).backward(numpy.zeros((2, 3), F32))


def test_wrong_grad_shape():
    layer = Linear(4, 3)
    layer.forward(numpy.zeros((2, 4), F32))
    with pytest.raises(ValueError, match="Linear.*grad_out"):
        layer.backward(numpy.zeros((2, 4), F32))


@pytest.mark.parametrize("args", [(0, 3), (4, -1), (4.0, 3), (True, 3)])
def test_bad_arguments(args):
    with pytest.raises(ValueError, match="Linear"):
        Linear(*args)


# --- CuPy against NumPy ---------------------------------------------------------------------


def to_cupy(layer, cupy):
    twin = Linear(layer.in_features, layer.out_features, bias="bias" in layer.params, dtype=layer.dtype)
    twin.params = {k: cupy.asarray(v) for k, v in layer.params.items()}
    return twin


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES + [(128, 256, 120, True)], ids=ids)
def test_cupy_matches_numpy(case, rng):
    cupy = pytest.importorskip("cupy")
    layer, x = make(case, rng, F32)
    cupy_matches_numpy(layer, to_cupy(layer, cupy), x, rng, cupy)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES[:2], ids=ids)
def test_gradient_check_float64_cupy(case, rng):
    cupy = pytest.importorskip("cupy")
    layer, x = make(case, rng, F64)
    errors = check_layer(to_cupy(layer, cupy), cupy.asarray(x))
    assert max(errors.values()) < 1e-6, errors
