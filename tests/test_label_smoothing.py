"""SoftmaxCrossEntropy(label_smoothing=eps): PyTorch's definition, its gradient, its errors."""
import numpy
import pytest

from gpucnn.gradcheck import check_loss
from gpucnn.layers import SoftmaxCrossEntropy

from helpers import close

F32, F64 = numpy.float32, numpy.float64


@pytest.mark.parametrize("eps", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_gradient_check(eps, soft, rng):
    logits = rng.standard_normal((5, 4)) * 3
    target = rng.dirichlet(numpy.ones(4), 5) if soft else rng.integers(0, 4, 5)
    assert check_loss(SoftmaxCrossEntropy(eps, dtype=F64), logits, target)["logits"] < 1e-6


@pytest.mark.parametrize("dtype,rtol", [(F32, 1e-5), (F64, 1e-12)])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_matches_torch(eps, soft, dtype, rtol, rng):
    torch = pytest.importorskip("torch")
    logits = (rng.standard_normal((16, 10)) * 4).astype(dtype)
    target = rng.dirichlet(numpy.ones(10), 16).astype(dtype) if soft else rng.integers(0, 10, 16)
    loss_fn = SoftmaxCrossEntropy(eps, dtype=dtype)
    loss = loss_fn.forward(logits, target)
    lt = torch.from_numpy(logits).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(lt, torch.from_numpy(target), label_smoothing=eps)
    ref.backward()
    assert loss.dtype == dtype
    close(loss, ref.detach().numpy(), rtol)
    close(loss_fn.backward(), lt.grad.numpy(), rtol)


def test_smoothing_one_is_the_uniform_target(rng):
    logits = rng.standard_normal((3, 5))
    loss = SoftmaxCrossEntropy(1.0, dtype=F64).forward(logits, numpy.array([0, 1, 2]))
    log_p = logits - numpy.log(numpy.exp(logits).sum(axis=1, keepdims=True))
    assert float(loss) == pytest.approx(-log_p.mean())


def test_bad_smoothing():
    for eps in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            SoftmaxCrossEntropy(eps)
