"""GPU: resnets, Dropout and the EMA inside a CUDA-graph replayed step follow the eager step
(and NumPy). Skipped without CuPy and a CUDA device."""
import contextlib

import numpy
import pytest

from gpucnn import backend, init, models
from gpucnn.ema import EMA
from gpucnn.layers import Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, ReLU
from gpucnn.optim import SGD
from gpucnn.sequential import Sequential
from gpucnn.train import make_step

pytestmark = pytest.mark.gpu


def _dropout_net(shape, classes, dtype=None):
    return Sequential(Conv2d(shape[0], 8, 3, padding=1, dtype=dtype), ReLU(dtype=dtype), Dropout(0.3, dtype=dtype),
                      GlobalAvgPool2d(dtype=dtype), Flatten(dtype=dtype), Dropout(0.5, dtype=dtype),
                      Linear(8, classes, dtype=dtype))


def _run(name, shape, steps, use_graph, dtype=numpy.float32):
    init.seed(0)
    model = _dropout_net(shape, 10, dtype) if name == "dropout" else models.build(name, shape, 10, dtype=dtype)
    ema = EMA(model, 0.9)
    step = make_step(model, SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
                     use_graph, label_smoothing=0.1, ema=ema)
    rng = numpy.random.default_rng(0)
    stream = getattr(step, "stream", None)
    backend.synchronize()
    losses = []
    for _ in range(steps):
        x, y = rng.standard_normal((8, *shape)).astype(dtype), rng.integers(0, 10, 8)
        with stream if stream is not None else contextlib.nullcontext():
            loss, _ = step(backend.to_device(x), backend.to_device(y))
            losses.append(float(loss))
    return numpy.array(losses), model.state_dict(), ema.state_dict()


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 16, 16)), ("resnet9", (3, 16, 16)), ("dropout", (3, 8, 8))])
def test_graph_replay_follows_eager_and_numpy(on_cupy, name, shape):
    """Graph replay against the eager step on the same GPU (the same kernels, summing in the
    same order) in float32; the GPU against NumPy, which sums in another order, in float64:
    in float32 five steps of resnet9 at this size grow that difference by an amount that
    depends on the CPU (tests/test_resnets.py)."""
    eager = _run(name, shape, 5, use_graph=False)
    graphed = _run(name, shape, 5, use_graph=True)  # steps 3.. are replays
    _follows(graphed, eager, rtol=1e-3, atol=1e-4)
    eager = _run(name, shape, 5, use_graph=False, dtype=numpy.float64)
    backend.select("numpy")
    cpu = _run(name, shape, 5, use_graph=False, dtype=numpy.float64)
    _follows(cpu, eager, rtol=1e-7, atol=1e-9)


def _follows(other, eager, rtol, atol):
    numpy.testing.assert_allclose(other[0], eager[0], rtol=rtol / 5)
    for k in eager[1]:
        numpy.testing.assert_allclose(other[1][k], eager[1][k], rtol=rtol, atol=atol, err_msg=k)
        numpy.testing.assert_allclose(other[2][k], eager[2][k], rtol=rtol, atol=atol, err_msg="ema " + k)
