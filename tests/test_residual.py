"""Residual: gradient checks and PyTorch parity with identity and projection shortcuts,
nested state_dict keys, branch shape errors, modes, both float types."""
import numpy
import pytest

from gpucnn.gradcheck import check_layer
from gpucnn.layers import BatchNorm2d, Conv2d, Linear, ReLU, Residual, Scale
from gpucnn.sequential import Sequential

from helpers import close, module_to_cupy

F32, F64 = numpy.float32, numpy.float64


def identity_block(c, dtype):
    return Residual(Sequential(Conv2d(c, c, 3, padding=1, bias=False, dtype=dtype), BatchNorm2d(c, dtype=dtype), ReLU(dtype=dtype),
                               Conv2d(c, c, 3, padding=1, dtype=dtype)))


def projection_block(c_in, c_out, dtype):
    return Residual(
        Sequential(Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False, dtype=dtype), BatchNorm2d(c_out, dtype=dtype)),
        Sequential(Conv2d(c_in, c_out, 1, stride=2, bias=False, dtype=dtype), BatchNorm2d(c_out, dtype=dtype)),
    )


@pytest.mark.parametrize("make,shape", [
    (lambda: identity_block(2, F64), (2, 2, 5, 4)),
    (lambda: projection_block(2, 3, F64), (3, 2, 5, 6)),
    (lambda: Residual(Scale(-0.5, dtype=F64)), (2, 3, 2, 2)),  # a single layer as the body
    (lambda: Residual(Linear(4, 4, dtype=F64), Linear(4, 4, bias=False, dtype=F64)), (3, 4)),
])
def test_gradient_check_float64(make, shape, rng):
    block = make()
    errors = check_layer(block, rng.standard_normal(shape))
    params = {p.key for p in Sequential(block).parameters()}
    assert set(errors) == {"x"} | {k.removeprefix("0.") for k in params}
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("dtype,rtol", [(F32, 1e-4), (F64, 1e-9)])
@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
def test_matches_torch(projection, dtype, rtol, rng):
    torch = pytest.importorskip("torch")
    from gpucnn.torch_twin import to_torch

    block = projection_block(3, 4, dtype) if projection else identity_block(3, dtype)
    ref = to_torch(block)
    x = rng.standard_normal((4, 3, 6, 6)).astype(dtype)
    dy = rng.standard_normal((4, 4, 3, 3) if projection else x.shape).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    y = block.forward(x)
    assert y.dtype == dtype
    close(y, yt.detach().numpy(), rtol)
    close(block.backward(dy), xt.grad.numpy(), rtol)
    net = Sequential(block)
    grads = {p.key.removeprefix("0."): p.grad for p in net.parameters()}
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        close(grads[k], ref_grads[k], rtol)
    state = net.state_dict()
    for k, v in ref.state_dict().items():  # running statistics after the step
        close(state["0." + k], v.numpy(), rtol)


def test_state_dict_keys_nest_like_pytorch():
    torch = pytest.importorskip("torch")
    from torch import nn

    class Block(nn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

    ref = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
                        Block(nn.Sequential(nn.Conv2d(2, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4)),
                              nn.Sequential(nn.Conv2d(2, 4, 1, 2, bias=False), nn.BatchNorm2d(4))))
    ours = Sequential(Conv2d(1, 2, 3), BatchNorm2d(2), ReLU(), projection_block(2, 4, F32))
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert "3.body.0.weight" in ours.state_dict() and "3.shortcut.1.running_mean" in ours.state_dict()
    assert [p.key for p in ours.parameters()] == [k for k, _ in ref.named_parameters()]
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    close(ours.layers[3].shortcut.layers[0].params["weight"], ref[3].shortcut[0].weight.detach().numpy(), 0)


def test_branch_shape_mismatch_names_both_shapes(rng):
    block = Residual(Conv2d(2, 3, 3, padding=1))
    with pytest.raises(ValueError, match=r"body output has shape \(1, 3, 4, 4\) but the input \(identity shortcut\) "
                                         r"has shape \(1, 2, 4, 4\)"):
        block.forward(rng.standard_normal((1, 2, 4, 4)).astype(F32))
    block = Residual(Conv2d(2, 3, 3, stride=2, padding=1), Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match=r"\(1, 3, 2, 2\) but the shortcut output has shape \(1, 3, 4, 4\)"):
        block.forward(rng.standard_normal((1, 2, 4, 4)).astype(F32))
    with pytest.raises(ValueError, match="Residual: body .* is not a layer"):
        Residual(object())
    with pytest.raises(ValueError, match="Residual: expected input of dtype float32, got float64"):
        identity_block(2, F32).forward(rng.standard_normal((1, 2, 4, 4)))


def test_modes_reach_both_branches_and_repr():
    block = projection_block(2, 3, F32)
    net = Sequential(block).eval()
    assert not block.training and not any(layer.training for layer in net.leaves())
    net.train()
    assert all(layer.training for layer in net.leaves())
    assert block.dtype == F32 and identity_block(2, F64).dtype == F64
    text = repr(net)
    assert "(body): Sequential(" in text and "(shortcut): Sequential(" in text


def test_identity_backward_leaves_dy_untouched(rng):
    """dy goes to both branches; neither may change it (an empty body hands dy itself back)."""
    block = Residual(Sequential())
    x = rng.standard_normal((2, 3)).astype(F32)
    close(block.forward(x), 2 * x, 0)
    dy = rng.standard_normal((2, 3)).astype(F32)
    kept = dy.copy()
    close(block.backward(dy), 2 * kept, 0)
    numpy.testing.assert_array_equal(dy, kept)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F64])
def test_cupy_matches_numpy(dtype, rng):
    import cupy

    from gpucnn import init

    init.seed(5)
    block = projection_block(3, 4, dtype)
    init.seed(5)
    twin = module_to_cupy(projection_block(3, 4, dtype), cupy)
    x = rng.standard_normal((4, 3, 6, 6)).astype(dtype)
    y = block.forward(x)
    close(twin.forward(cupy.asarray(x)), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    close(twin.backward(cupy.asarray(dy)), block.backward(dy))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_scale_layer(dtype, rng):
    from gpucnn.layers import Scale

    layer = Scale(0.125, dtype=dtype)
    x = rng.standard_normal((3, 4)).astype(dtype)
    y = layer.forward(x)
    assert y.dtype == dtype
    close(y, x * 0.125, 0)
    close(layer.backward(x), x * 0.125, 0)
    assert check_layer(Scale(-3.0, dtype=F64), rng.standard_normal((2, 5)))["x"] < 1e-6
    with pytest.raises(ValueError, match="Scale: scale must be a number"):
        Scale("big")
