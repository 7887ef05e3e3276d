"""GPU: a whole training step on CuPy equals NumPy's, and a CUDA-graph replayed run
follows the eager run's loss curve. Skipped without CuPy and a CUDA device."""
import contextlib
import subprocess
import sys

import numpy
import pytest

from gpucnn import backend, init, models
from gpucnn.optim import SGD
from gpucnn.train import make_step

pytestmark = pytest.mark.gpu


def _batches(shape, batch, steps, seed=0, dtype=numpy.float32):
    rng = numpy.random.default_rng(seed)
    return [(rng.standard_normal((batch, *shape)).astype(dtype), rng.integers(0, 10, batch)) for _ in range(steps)]


def _run(name, shape, batches, use_graph):
    init.seed(0)
    model = models.build(name, shape, 10, dtype=batches[0][0].dtype)
    step = make_step(model, SGD(model.parameters(), lr=0.05, momentum=0.9), use_graph)
    losses = []
    stream = getattr(step, "stream", None)
    # The model was built (async copies) on the current stream; a graphed step runs on its
    # own non-blocking stream, which does not wait for it, and neither does it for inputs
    # copied elsewhere: so wait once, and copy each batch on the stream that reads it.
    backend.synchronize()
    for x, y in batches:
        with stream if stream is not None else contextlib.nullcontext():
            loss, _ = step(backend.to_device(x), backend.to_device(y))
            losses.append(float(loss))
    return numpy.array(losses), model.state_dict()


@pytest.mark.parametrize("name,shape", [("lenet", (1, 28, 28)), ("vgg_bn", (3, 16, 16))])
def test_cupy_training_matches_numpy(on_cupy, name, shape):
    """In float64: the GPU and the CPU sum in different orders, and over four steps float32
    grows that by an amount that depends on the CPU; float64 keeps it near rounding."""
    batches = _batches(shape, 16, 4, dtype=numpy.float64)
    gpu_losses, gpu_state = _run(name, shape, batches, use_graph=False)
    backend.select("numpy")
    cpu_losses, cpu_state = _run(name, shape, batches, use_graph=False)
    numpy.testing.assert_allclose(gpu_losses, cpu_losses, rtol=2e-8)
    for k in cpu_state:
        numpy.testing.assert_allclose(gpu_state[k], cpu_state[k], rtol=1e-7, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("name,shape", [("lenet", (1, 28, 28)), ("vgg_bn", (3, 16, 16))])
def test_graph_replay_follows_the_eager_loss_curve(on_cupy, name, shape):
    batches = _batches(shape, 32, 8)
    eager, eager_state = _run(name, shape, batches, use_graph=False)
    graphed, graph_state = _run(name, shape, batches, use_graph=True)
    numpy.testing.assert_allclose(graphed, eager, rtol=1e-4)
    for k in eager_state:
        numpy.testing.assert_allclose(graph_state[k], eager_state[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_graph_outputs_are_not_clobbered_by_later_allocations(on_cupy):
    """Arrays made after capture must not share memory with the graph's temporaries."""
    xp = on_cupy
    batches = _batches((1, 28, 28), 32, 4)
    init.seed(0)
    model = models.lenet()
    step = make_step(model, SGD(model.parameters(), lr=0.01), use_graph=True)
    backend.synchronize()  # setup ran on the current stream, the step runs on step.stream
    with step.stream:
        for x, y in batches[:2]:  # eager warm-up, then capture + first replay
            step(backend.to_device(x), backend.to_device(y))
        keep = xp.full(4096, 7.0, dtype=xp.float32)
        for x, y in batches[2:]:
            step(backend.to_device(x), backend.to_device(y))
        assert float(keep.min()) == 7.0 and float(keep.max()) == 7.0


def test_each_captured_shape_gets_its_own_pool(on_cupy):
    """A full batch and a short last batch: two graphs, two private pools, both replayed."""
    init.seed(0)
    model = models.lenet()
    step = make_step(model, SGD(model.parameters(), lr=0.01), use_graph=True)
    with step.stream:
        for batch in (32, 32, 20, 20, 32, 20):  # each shape: eager, capture, replay
            x, y = _batches((1, 28, 28), batch, 1)[0]
            step(backend.to_device(x), backend.to_device(y))
    assert len(step.pools) == 2 and step.pool_bytes() > 0


def test_check_command_passes_on_cupy():
    pytest.importorskip("cupy")
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "check", "--backend", "cupy"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on the cupy backend" in proc.stdout and "all passed" in proc.stdout
