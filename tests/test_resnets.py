"""resnet20 / resnet56 / resnet9: parameter counts, PyTorch state_dicts loading as they are,
a whole training step against PyTorch, Nesterov SGD with weight decay, any input shape,
and a short CPU run that learns."""
import numpy
import pytest

from gpucnn import init, models
from gpucnn.layers import SoftmaxCrossEntropy

from helpers import close

F32, F64 = numpy.float32, numpy.float64


# --- the same nets written in PyTorch, independently of gpucnn ----------------------------------
def torch_nets(nn):
    class Residual(nn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class Mul(nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def forward(self, x):
            return x * self.weight

    def conv_bn(c_in, c_out, stride=1, k=3):
        return [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]

    def resnet(depth, c=3, classes=10):
        n = (depth - 2) // 6
        layers, width = [*conv_bn(c, 16), nn.ReLU()], 16
        for stage, w in enumerate((16, 32, 64)):
            for i in range(n):
                s = 2 if stage and not i else 1
                short = nn.Sequential(*conv_bn(width, w, s, 1)) if s != 1 or width != w else None
                layers += [Residual(nn.Sequential(*conv_bn(width, w, s), nn.ReLU(), *conv_bn(w, w)), short), nn.ReLU()]
                width = w
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))

    def resnet9(c=3, classes=10):
        def block(a, b):
            return [*conv_bn(a, b), nn.ReLU()]

        return nn.Sequential(
            *block(c, 64), *block(64, 128), nn.MaxPool2d(2), Residual(nn.Sequential(*block(128, 128), *block(128, 128))),
            *block(128, 256), nn.MaxPool2d(2), *block(256, 512), nn.MaxPool2d(2),
            Residual(nn.Sequential(*block(512, 512), *block(512, 512))),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, classes, bias=False), Mul(0.125))

    return {"resnet20": lambda c: resnet(20, c), "resnet56": lambda c: resnet(56, c), "resnet9": resnet9}


def test_parameter_counts_are_pytorchs():
    torch = pytest.importorskip("torch")
    nets = torch_nets(torch.nn)
    expected = {"resnet20": 272_474, "resnet56": 855_770, "resnet9": 6_573_120}  # as printed by the twins
    for name, count in expected.items():
        ours = models.build(name, (3, 32, 32), 10)
        theirs = sum(p.numel() for p in nets[name](3).parameters())
        assert ours.num_parameters() == theirs == count
    assert round(models.build("resnet20", (3, 32, 32), 10).num_parameters() / 1e6, 2) == 0.27  # He et al.'s 0.27M


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("resnet9", (3, 32, 32)),
                                        ("resnet20", (1, 28, 28)), ("resnet9", (1, 28, 28))])
def test_pytorch_state_dict_loads_as_is(name, shape):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch_nets(torch.nn)[name](shape[0])
    with torch.no_grad():  # non-trivial statistics and BN weights, so eval really uses them
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.uniform_(0.5, 1.5)
    ref.eval()
    ours = models.build(name, shape, 10).eval()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert list(ours.state_dict()) == list(state)
    ours.load_state_dict(state)
    x = numpy.random.default_rng(0).standard_normal((2, *shape)).astype(F32)
    with torch.no_grad():
        close(ours.forward(x), ref(torch.from_numpy(x)).numpy(), 2e-4)


def _one_step(torch, name, shape, batch, dtype):
    """(our model, loss, logits), (PyTorch's net, loss, logits) after one forward and backward
    of the same batch from the same weights, in `dtype`."""
    init.seed(1)
    model = models.build(name, shape, 10, dtype=dtype)
    ref = torch_nets(torch.nn)[name](shape[0]).to(getattr(torch, numpy.dtype(dtype).name))
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    y = rng.integers(0, 10, batch)
    loss_fn = SoftmaxCrossEntropy(0.1, dtype=dtype)
    logits = model.forward(x)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward())
    out = ref(torch.from_numpy(x))
    ref_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), label_smoothing=0.1)
    ref_loss.backward()
    return (model, float(loss), logits), (ref, ref_loss.item(), out.detach().numpy())


def _same_step(ours, theirs, rtol, grad_rtol=None):
    """The same logits, loss and BN statistics within rtol; gradients within grad_rtol
    (None: not compared)."""
    (model, loss, logits), (ref, ref_loss, ref_logits) = ours, theirs
    close(logits, ref_logits, rtol)
    assert loss == pytest.approx(ref_loss, rel=rtol / 10)
    grads = {p.key: p.grad for p in model.parameters()}
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    for k in grads if grad_rtol is not None else ():
        close(grads[k], ref_grads[k], rtol=grad_rtol)
    state = model.state_dict()
    for k, v in ref.state_dict().items():
        close(state[k], v.numpy(), rtol)


STEP_CASES = [("resnet20", (3, 16, 16), 8), ("resnet9", (3, 16, 16), 4), ("resnet20", (1, 12, 10), 6)]


@pytest.mark.parametrize("name,shape,batch", STEP_CASES)
def test_training_step_matches_pytorch(name, shape, batch):
    """Logits, loss (with label smoothing), every gradient and the BN statistics after a step,
    in float64: the same math to rounding (seen: 1e-14 of each array's largest entry)."""
    torch = pytest.importorskip("torch")
    ours, theirs = _one_step(torch, name, shape, batch, F64)
    _same_step(ours, theirs, rtol=1e-10, grad_rtol=1e-10)


@pytest.mark.parametrize("name,shape,batch", STEP_CASES)
def test_training_step_matches_pytorch_in_float32(name, shape, batch):
    """The float32 step on the cases that are well-conditioned in float32. resnet9's gradients
    are not: BatchNorm over a 2x2 map of 4 images, then a global max pool whose winner a
    rounding difference can flip (seen: 23% of a gradient's largest entry on an AVX2 CPU, with
    1e-14 in float64). Its forward is continuous in the rounding, so logits, loss and the BN
    statistics are compared; resnet20 (average pooling) is compared whole."""
    torch = pytest.importorskip("torch")
    ours, theirs = _one_step(torch, name, shape, batch, F32)
    _same_step(ours, theirs, rtol=1e-4, grad_rtol=None if name == "resnet9" else 1e-3)


def test_nesterov_sgd_with_weight_decay_matches_pytorch():
    """Three steps, in float64: each step's rounding feeds the next, and in float32 how much
    it grows depends on the CPU."""
    torch = pytest.importorskip("torch")
    from gpucnn.optim import SGD
    from gpucnn.train import TrainStep

    init.seed(2)
    shape = (3, 12, 12)
    model = models.build("resnet20", shape, 10, dtype=F64)
    ref = torch_nets(torch.nn)["resnet20"](3).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    step = TrainStep(model, SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4))
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rng = numpy.random.default_rng(1)
    for _ in range(3):
        x, y = rng.standard_normal((8, *shape)), rng.integers(0, 10, 8)
        step(x, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    state = model.state_dict()
    for k, v in ref.state_dict().items():
        close(state[k], v.numpy(), rtol=1e-10)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet9"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (2, 9, 13)])
def test_any_input_shape(name, shape):
    model = models.build(name, shape, 7)
    assert model.forward(numpy.zeros((2, *shape), F32)).shape == (2, 7)


def test_errors_and_options():
    with pytest.raises(ValueError, match="resnet9: images of 4x4 are too small"):
        models.resnet9((3, 4, 4))
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        models.cifar_resnet(21)
    net = models.resnet20(zero_init_residual=True)
    last_bns = [block.body.layers[-1] for block in net.layers if hasattr(block, "body")]
    assert len(last_bns) == 9 and all(float(abs(bn.params["weight"]).max()) == 0 for bn in last_bns)
    shortcuts = [block.shortcut for block in net.layers if hasattr(block, "body")]
    assert sum(s is not None for s in shortcuts) == 2  # option B where the shape changes, identity elsewhere


@pytest.mark.parametrize("name,lr,epochs", [("resnet20", 0.05, 3), ("resnet9", 0.05, 3)])
def test_short_cpu_run_learns_digits(name, lr, epochs):
    """A few hundred 8x8 digits, a few epochs: loss falls, test accuracy far above chance (10%)."""
    pytest.importorskip("sklearn")  # the built-in digits
    from gpucnn.data import load
    from gpucnn.data.datasets import Dataset
    from gpucnn.optim import SGD, make_schedule
    from gpucnn.train import fit

    full = load("digits")
    data = Dataset("digits-subset", full.x_train[:192], full.y_train[:192], full.x_test[:200], full.y_test[:200],
                   full.classes)
    init.seed(0)
    model = models.build(name, data.input_shape, 10)
    steps = epochs * 6
    opt = SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    config = {"epochs": epochs, "batch_size": 32, "seed": 0, "graph": False, "label_smoothing": 0.1}
    history = fit(model, opt, make_schedule("onecycle", lr, total_steps=steps, peak_fraction=0.25), data, config,
                  log=lambda *_: None, progress=False)
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.6, history
