"""BatchNorm2d's recipe options: affine=False (no weight/bias, PyTorch parity) and zero_init."""
import numpy
import pytest

from gpucnn.gradcheck import check_layer
from gpucnn.layers import BatchNorm2d
from gpucnn.sequential import Sequential

from helpers import close, matches_torch

F32, F64 = numpy.float32, numpy.float64


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_affine_false_gradient_check(training, rng):
    bn = BatchNorm2d(3, affine=False, dtype=F64)
    bn.running_mean, bn.running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    bn.train(training)
    errors = check_layer(bn, rng.standard_normal((4, 3, 2, 3)))
    assert set(errors) == {"x"} and errors["x"] < 1e-6


@pytest.mark.parametrize("dtype,rtol", [(F32, 1e-4), (F64, 1e-10)])
def test_affine_false_matches_torch(dtype, rtol, rng):
    torch = pytest.importorskip("torch")
    bn = BatchNorm2d(4, affine=False, dtype=dtype)
    ref = torch.nn.BatchNorm2d(4, affine=False).to(getattr(torch, str(numpy.dtype(dtype))))
    x = (rng.standard_normal((3, 4, 5, 2)) * 2 + 1).astype(dtype)
    matches_torch(bn, ref, x, rng.standard_normal(x.shape).astype(dtype), rtol)
    state = Sequential(bn).state_dict()
    assert list(state) == ["0." + k for k in ref.state_dict()]  # no weight, no bias
    for k, v in ref.state_dict().items():
        close(state["0." + k], v.numpy(), rtol)
    assert bn.grads == {} and "affine=False" in repr(bn)


def test_zero_init_starts_gamma_at_zero():
    bn = BatchNorm2d(3, zero_init=True)
    numpy.testing.assert_array_equal(bn.params["weight"], 0)
    numpy.testing.assert_array_equal(bn.params["bias"], 0)
    y = bn.forward(numpy.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(F32))
    numpy.testing.assert_array_equal(y, 0)  # the block starts as its shortcut
    with pytest.raises(ValueError, match="zero_init needs affine=True"):
        BatchNorm2d(3, affine=False, zero_init=True)
