"""`gpucnn check`: the float64 gradient check of every layer on the live backend.

Prints one row per layer and array with the max relative error; exit status 1 on a failure.
The first thing to run on a new GPU: it exercises every CUDA kernel in both directions.
"""
import numpy

from gpucnn import backend
from gpucnn.gradcheck import check_layer, check_loss
from gpucnn.layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, MaxPool2d, ReLU,
                           Residual, Scale, Softmax, SoftmaxCrossEntropy)
from gpucnn.sequential import Sequential

F64 = numpy.float64
TOLERANCE = 1e-6


def _distinct(rng, shape):
    """Well-separated values, so a max-pool's argmax never flips under a finite difference."""
    n = int(numpy.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) / n * 4.0


def _away_from_zero(rng, shape):
    x = rng.standard_normal(shape)
    return numpy.where(numpy.abs(x) < 0.05, 0.05 * numpy.sign(x) + 0.05 * (x == 0), x)


def _bn_eval(rng):
    bn = BatchNorm2d(3, dtype=F64)
    bn.buffers["running_mean"][...] = backend.to_device(rng.standard_normal(3))
    bn.buffers["running_var"][...] = backend.to_device(rng.uniform(0.5, 2.0, 3))
    return bn.eval()


class HeldDropout(Dropout):
    """Dropout held at one draw: a gradient check runs forward many times and needs one mask."""

    def forward(self, x):
        self.draws[...] = 0
        return super().forward(x)


def _block(projection):
    """A basic residual block (conv-BN-ReLU-conv-BN), identity or projection (conv1x1-BN) shortcut."""
    c_out, stride = (3, 2) if projection else (2, 1)
    body = Sequential(Conv2d(2, c_out, 3, stride=stride, padding=1, bias=False, dtype=F64), BatchNorm2d(c_out, dtype=F64),
                      ReLU(dtype=F64), Conv2d(c_out, c_out, 3, padding=1, bias=False, dtype=F64),
                      BatchNorm2d(c_out, dtype=F64))
    shortcut = Sequential(Conv2d(2, c_out, 1, stride=2, bias=False, dtype=F64), BatchNorm2d(c_out, dtype=F64))
    return Residual(body, shortcut if projection else None)


def _convs(rng):
    """Each Conv2d case under every lowering the live backend has (banded is NumPy-only)."""
    lowerings = ["im2col"] + (["banded"] if backend.name() == "numpy" else [])
    specs = [
        ("Conv2d k3 s2 p1", dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), (2, 3, 7, 6)),
        ("Conv2d k5 s1 p2", dict(in_channels=2, out_channels=3, kernel_size=5, padding=2), (1, 2, 6, 5)),
        ("Conv2d k1 no bias", dict(in_channels=3, out_channels=2, kernel_size=1, bias=False), (2, 3, 4, 3)),
    ]
    out = []
    for label, kwargs, shape in specs:
        x = rng.standard_normal(shape)
        for lowering in lowerings:
            layer = Conv2d(dtype=F64, **kwargs)
            layer.lowering = lowering
            out.append((f"{label} {lowering}", layer, x))
    return out


def cases(rng):
    """(label, layer, input) triples covering strides, padding, overlap and both BN modes."""
    return _convs(rng) + [
        ("Linear", Linear(7, 5, dtype=F64), rng.standard_normal((3, 7))),
        ("MaxPool2d k2", MaxPool2d(2, dtype=F64), _distinct(rng, (2, 3, 6, 5))),
        ("MaxPool2d k3 s2 overlap", MaxPool2d(3, stride=2, dtype=F64), _distinct(rng, (2, 2, 7, 9))),
        ("BatchNorm2d train", BatchNorm2d(3, dtype=F64), rng.standard_normal((4, 3, 3, 2))),
        ("BatchNorm2d eval", _bn_eval(rng), rng.standard_normal((2, 3, 3, 2))),
        ("ReLU", ReLU(dtype=F64), _away_from_zero(rng, (3, 4, 2, 2))),
        ("Flatten", Flatten(dtype=F64), rng.standard_normal((2, 3, 2, 2))),
        ("Softmax", Softmax(dtype=F64), rng.standard_normal((3, 6))),
        ("AvgPool2d k3 s2 p1", AvgPool2d(3, 2, 1, dtype=F64), rng.standard_normal((2, 2, 7, 6))),
        ("GlobalAvgPool2d", GlobalAvgPool2d(dtype=F64), rng.standard_normal((2, 3, 3, 4))),
        ("Dropout p=0.4 (one mask)", HeldDropout(0.4, dtype=F64), rng.standard_normal((3, 4, 2, 2))),
        ("Scale", Scale(0.125, dtype=F64), rng.standard_normal((3, 5))),
        ("BatchNorm2d affine=False", BatchNorm2d(3, affine=False, dtype=F64), rng.standard_normal((4, 3, 3, 2))),
        ("Residual identity", _block(False), rng.standard_normal((2, 2, 4, 4))),
        ("Residual projection", _block(True), rng.standard_normal((2, 2, 5, 4))),
    ]


def run(print_fn=print):
    """Check every layer; print the table; return True when all pass."""
    rng = numpy.random.default_rng(0)
    rows = []
    for label, layer, x in cases(rng):
        for name, err in check_layer(layer, backend.to_device(x, F64)).items():
            rows.append((label, name, err))
    logits = backend.to_device(rng.standard_normal((4, 5)) * 3, F64)
    labels = backend.to_device(numpy.array([0, 4, 2, 2]))
    for name, err in check_loss(SoftmaxCrossEntropy(dtype=F64), logits, labels).items():
        rows.append(("SoftmaxCrossEntropy", name, err))
    for name, err in check_loss(SoftmaxCrossEntropy(0.1, dtype=F64), logits, labels).items():
        rows.append(("SoftmaxCE smoothing 0.1", name, err))

    print_fn(f"gradient check on the {backend.name()} backend (float64 central differences, pass < {TOLERANCE:g})")
    print_fn(f"{'layer':<26} {'array':<22} {'max rel error':>14}  result")
    ok = True
    for label, name, err in rows:
        passed = err < TOLERANCE
        ok &= passed
        print_fn(f"{label:<26} {name:<22} {err:>14.3e}  {'pass' if passed else 'FAIL'}")
    print_fn("all passed" if ok else "FAILED")
    return ok
