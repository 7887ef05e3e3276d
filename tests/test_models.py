"""Whole nets: shapes, PyTorch-compatible state_dicts, and a full training step against PyTorch."""
import numpy
import pytest

from gpucnn import init, models
from gpucnn.layers import SoftmaxCrossEntropy

from helpers import close

F32, F64 = numpy.float32, numpy.float64


def torch_lenet(nn):
    """PyTorch's classic LeNet-5 for 28x28, written independently of gpucnn."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def torch_vgg_bn(nn, c=3, widths=(64, 128, 256), flat=4096):
    layers = []
    for w in widths:
        for _ in range(2):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, 10))


def test_model_shapes():
    assert models.lenet().layers[7].params["weight"].shape == (120, 256)  # 28x28 -> 256-wide flatten
    assert models.vgg_bn().layers[-1].params["weight"].shape == (10, 4096)  # 32x32 -> 4096
    assert models.vgg_bn((1, 28, 28)).layers[-1].params["weight"].shape == (10, 256 * 3 * 3)
    assert models.small().layers[-1].params["weight"].shape == (10, 128)
    x = numpy.zeros((2, 1, 28, 28), F32)
    assert models.lenet().forward(x).shape == (2, 10)


def test_unknown_model_and_too_small_images():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="lenet: images of 8x8 are too small"):
        models.lenet((1, 8, 8))


@pytest.mark.parametrize("build,twin,shape", [
    (lambda: models.lenet(), torch_lenet, (1, 28, 28)),
    (lambda: models.vgg_bn(), torch_vgg_bn, (3, 32, 32)),
])
def test_pytorch_state_dict_loads_as_is(build, twin, shape):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = twin(torch.nn).eval()
    ours = build().eval()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert list(ours.state_dict()) == list(state)  # same keys, same order
    ours.load_state_dict(state)
    x = numpy.random.default_rng(0).standard_normal((2, *shape)).astype(F32)
    with torch.no_grad():
        close(ours.forward(x), ref(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("name,shape", [("lenet", (1, 28, 28)), ("vgg_bn", (3, 16, 16)), ("small", (1, 8, 8))])
def test_training_step_matches_pytorch(name, shape, dtype):
    """Loss, logits, every parameter gradient and the BN statistics of a whole net equal
    PyTorch's: in float64 to rounding. In float32 the gradients are not compared: each net
    max-pools, and a window whose two largest inputs differ by a rounding error routes its
    gradient to either, by the CPU's summation order (tests/test_resnets.py saw 23%)."""
    torch = pytest.importorskip("torch")
    from gpucnn.torch_twin import to_torch

    init.seed(3)
    model = models.build(name, shape, 10, dtype=dtype)
    ref = to_torch(model)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((8, *shape)).astype(dtype)
    y = rng.integers(0, 10, 8)
    loss_fn = SoftmaxCrossEntropy(dtype=dtype)
    logits = model.forward(x)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward())

    out = ref(torch.from_numpy(x))
    ref_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    ref_loss.backward()
    rtol = 1e-10 if dtype == F64 else 1e-4
    close(logits, out.detach().numpy(), rtol)
    assert float(loss) == pytest.approx(ref_loss.item(), rel=rtol / 10)
    grads = {f"{i}.{n}": g for i, layer in enumerate(model.layers) for n, g in layer.grads.items()}
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    for k in grads if dtype == F64 else ():
        close(grads[k], ref_grads[k], rtol)
    state = model.state_dict()
    for k, v in ref.state_dict().items():  # BatchNorm running statistics after one step
        close(state[k], v.numpy(), rtol)
