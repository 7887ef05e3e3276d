"""GPU: what a graphed step leaves in CuPy's default pool, and that dropping it gives its
memory and cuBLAS handle back (the CPU side of both: tests/test_graph_release.py)."""
import gc

import numpy
import pytest

from gpucnn import gemm, init, models
from gpucnn.optim import SGD
from gpucnn.train import make_step

pytestmark = pytest.mark.gpu


@pytest.fixture
def cupy(on_cupy):
    return on_cupy


def _graphed(cupy, batch=64, shape=(3, 16, 16)):
    rng = numpy.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((batch, *shape)).astype(numpy.float32))
    y = cupy.asarray(rng.integers(0, 10, batch))
    init.seed(0)
    model = models.vgg_bn(shape)
    step = make_step(model, SGD(model.parameters(), lr=0.01, momentum=0.9), use_graph=True)
    cupy.cuda.get_current_stream().synchronize()
    return step, x, y


def test_default_pool_keeps_no_step_of_activations_after_capture(cupy):
    pool = cupy.get_default_memory_pool()
    step, x, y = _graphed(cupy)
    pool.free_all_blocks()
    before = pool.total_bytes()  # parameters, optimiser state, the batch, the cuBLAS workspace
    with step.stream:
        for _ in range(3):  # eager, capture + replay, replay
            loss, _ = step(x, y)
        step.stream.synchronize()
    assert numpy.isfinite(float(loss))
    graph = step.pool_bytes()
    extra = pool.total_bytes() - before  # the static input copies, the eager step's outputs
    assert graph > 0
    assert extra <= 0.1 * graph, f"default pool grew by {extra} bytes, the graph's pool holds {graph}"


def _train_and_drop(cupy):
    """Three graphed steps; returns the graph's pool, the step itself being dropped."""
    step, x, y = _graphed(cupy)
    with step.stream:
        for _ in range(3):
            step(x, y)
        step.stream.synchronize()
    assert gemm.live_handles() >= 1
    graph_pool = step.pools[0]
    assert graph_pool.used_bytes() > 0
    return graph_pool


def test_dropping_a_graphed_step_gives_back_its_memory_and_handle(cupy):
    pool = cupy.get_default_memory_pool()
    _train_and_drop(cupy)  # once first: CuPy's own one-time set-up stays out of the count
    gc.collect()
    handles, used = gemm.live_handles(), pool.used_bytes()
    graph_pool = _train_and_drop(cupy)
    gc.collect()
    assert gemm.live_handles() == handles
    assert graph_pool.used_bytes() == 0  # no array of the graph's outlived it
    assert pool.used_bytes() == used  # model, optimiser state, the cuBLAS workspace: all gone
