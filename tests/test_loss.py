"""SoftmaxCrossEntropy: gradient check, PyTorch parity, stability, ties, errors, CuPy."""
import numpy
import pytest

from gpucnn.gradcheck import check_loss
from gpucnn.layers import SoftmaxCrossEntropy

from helpers import close

F32, F64 = numpy.float32, numpy.float64



def soft_targets(rng, n, c, dtype=F64):
    t = rng.random((n, c))
    return (t / t.sum(axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("n,c", [(1, 3), (4, 5), (3, 2), (7, 10)])
def test_gradient_check_class_indices(n, c, rng):
    logits = rng.standard_normal((n, c)) * 3
    target = rng.integers(0, c, size=n)
    assert check_loss(SoftmaxCrossEntropy(dtype=F64), logits, target)["logits"] < 1e-6


@pytest.mark.parametrize("n,c", [(1, 3), (4, 5), (3, 2)])
def test_gradient_check_probabilities(n, c, rng):
    logits = rng.standard_normal((n, c)) * 3
    assert check_loss(SoftmaxCrossEntropy(dtype=F64), logits, soft_targets(rng, n, c))["logits"] < 1e-6
    # Targets that do not sum to 1 (label weights): the gradient keeps the sum(p) factor.
    weights = rng.random((n, c)) * 2
    assert check_loss(SoftmaxCrossEntropy(dtype=F64), logits, weights)["logits"] < 1e-6


def test_returns_a_0d_array_and_keeps_probs(rng):
    loss_fn = SoftmaxCrossEntropy()
    logits = rng.standard_normal((4, 3)).astype(F32)
    loss = loss_fn.forward(logits, numpy.array([0, 1, 2, 1]))
    assert isinstance(loss, numpy.ndarray) and loss.shape == () and loss.dtype == F32
    assert loss_fn.probs.shape == (4, 3)
    close(loss_fn.probs.sum(axis=1), numpy.ones(4))


def test_backward_scales_by_grad_out(rng):
    loss_fn = SoftmaxCrossEntropy(dtype=F64)
    logits, target = rng.standard_normal((3, 4)), numpy.array([3, 0, 1])
    loss_fn.forward(logits, target)
    g = loss_fn.backward()
    numpy.testing.assert_allclose(loss_fn.backward(2.5), 2.5 * g)
    numpy.testing.assert_allclose(loss_fn.backward(numpy.array(0.5)), 0.5 * g)
    onehot = numpy.eye(4)[target]
    numpy.testing.assert_allclose(g, (loss_fn.probs - onehot) / 3)


# --- PyTorch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("n,c,scale", [(1, 3, 1.0), (16, 10, 3.0), (5, 7, 30.0)])
def test_matches_torch_float32(n, c, scale, soft, rng):
    torch = pytest.importorskip("torch")
    logits = (rng.standard_normal((n, c)) * scale).astype(F32)
    target = soft_targets(rng, n, c, F32) if soft else rng.integers(0, c, size=n)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, target)
    grad = loss_fn.backward()

    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(target))
    ref.backward()
    close(loss, ref.item())
    close(grad, lt.grad.numpy())


@pytest.mark.parametrize("dtype", [F32, F64])
def test_large_logits_are_stable(dtype, rng):
    torch = pytest.importorskip("torch")
    logits = numpy.array([[1e4, -1e4, 0.0], [5e3, 5e3 + 2.0, -3e3], [-1e4, -1e4, -1e4 + 1.0]], dtype)
    target = numpy.array([1, 0, 2])
    loss_fn = SoftmaxCrossEntropy(dtype=dtype)
    loss = loss_fn.forward(logits, target)
    grad = loss_fn.backward()
    assert numpy.isfinite(loss) and numpy.isfinite(grad).all()
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(target))
    ref.backward()
    # Row 0 alone contributes 2e4 (the target's logit is 2e4 below the max).
    close(loss, ref.item())
    close(grad, lt.grad.numpy())
    log2e = numpy.log1p(numpy.exp(-2.0))
    close(loss, (2e4 + (2.0 + log2e) + numpy.log(1 + 2 * numpy.exp(-1.0))) / 3)


def test_tied_maxima_share_the_probability():
    # Two logits tie for the max (even at 1e4): each gets half the mass; no argmax is taken,
    # so the result does not depend on which of the tied classes comes first.
    loss_fn = SoftmaxCrossEntropy(dtype=F64)
    loss = loss_fn.forward(numpy.array([[1e4, 1e4, -1e4], [1e4, -1e4, 1e4]]), numpy.array([0, 2]))
    numpy.testing.assert_allclose(loss, numpy.log(2.0))
    numpy.testing.assert_allclose(loss_fn.probs, [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])
    numpy.testing.assert_allclose(loss_fn.backward(), [[-0.25, 0.25, 0.0], [0.25, 0.0, -0.25]])


# --- errors -------------------------------------------------------------------------------------------


def test_errors_name_the_layer(rng):
    loss_fn = SoftmaxCrossEntropy()
    logits = rng.standard_normal((3, 4)).astype(F32)
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: backward called before forward"):
        loss_fn.backward()
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: target class 4 is out of range 0..3"):
        loss_fn.forward(logits, numpy.array([0, 4, 1]))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: target class -1 is out of range"):
        loss_fn.forward(logits, numpy.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: class-index target must have shape \(3,\)"):
        loss_fn.forward(logits, numpy.array([0, 1]))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: class-index target must have shape"):
        loss_fn.forward(logits, numpy.array([[0], [1], [2]]))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: probability target must have the logits' shape"):
        loss_fn.forward(logits, numpy.zeros((3, 5), F32))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: target must be integer class indices or probabilities"):
        loss_fn.forward(logits, numpy.zeros((3, 4), F64))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: expected a 2-d logits"):
        loss_fn.forward(logits[None], numpy.array([0, 1, 2]))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: expected logits of dtype float32"):
        loss_fn.forward(logits.astype(F64), numpy.array([0, 1, 2]))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: expected an array as target"):
        loss_fn.forward(logits, [0, 1, 2])
    loss_fn.forward(logits, numpy.array([0, 1, 2]))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: grad_out must be a scalar"):
        loss_fn.backward(numpy.ones(3))


def test_check_false_skips_the_range_check(rng):
    # For CUDA-graph capture, where reading the labels back would synchronise; in range it
    # gives the same loss as the checked call.
    loss_fn = SoftmaxCrossEntropy()
    logits = rng.standard_normal((3, 4)).astype(F32)
    target = numpy.array([3, 0, 2])
    assert loss_fn.forward(logits, target, check=False) == loss_fn.forward(logits, target)


# --- CuPy vs NumPy ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_cupy_matches_numpy(soft, rng):
    cupy = pytest.importorskip("cupy")
    logits = (rng.standard_normal((32, 10)) * 4).astype(F32)
    target = soft_targets(rng, 32, 10, F32) if soft else rng.integers(0, 10, size=32)
    cpu, gpu = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    loss = gpu.forward(cupy.asarray(logits), cupy.asarray(target))
    assert isinstance(loss, cupy.ndarray) and loss.shape == ()
    close(loss, cpu.forward(logits, target))
    grad = gpu.backward(cupy.asarray(2.0, dtype=F32))
    assert isinstance(grad, cupy.ndarray)
    close(grad, cpu.backward(2.0))


@pytest.mark.gpu
def test_cupy_range_check_and_gradient_check(rng):
    cupy = pytest.importorskip("cupy")
    logits = cupy.asarray(rng.standard_normal((4, 5)) * 3)
    with pytest.raises(ValueError, match="target class 5 is out of range"):
        SoftmaxCrossEntropy(dtype=F64).forward(logits, cupy.asarray([0, 5, 1, 1]))
    errors = check_loss(SoftmaxCrossEntropy(dtype=F64), logits, cupy.asarray([0, 4, 2, 2]))
    assert errors["logits"] < 1e-6
