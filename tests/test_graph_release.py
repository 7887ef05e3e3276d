"""Without a GPU: a captured step starts from a released eager step (graph.py), and a
GraphedStep's cuBLAS handle, workspace and stream go when it goes (gemm.py). The real
layers release on NumPy; the CuPy/cuBLAS calls are a recording fake (fake_cupy.py).
The same on a device: tests/test_gpu_memory.py."""
import gc
import weakref

import numpy
import pytest

import fake_cupy
from gpucnn import gemm, init, models
from gpucnn.optim import SGD
from gpucnn.train import TrainStep


def _arrays(obj):
    """Every NumPy array inside nested tuples/lists/dicts."""
    if isinstance(obj, numpy.ndarray):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _arrays(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _arrays(item)


def _left_behind(step):
    model_layers = list(step.model.layers) + [step.loss]
    return [a for layer in model_layers for a in _arrays((layer._saved, layer.grads, getattr(layer, "probs", None)))]


def _vgg_bn():  # narrow: every kind of layer, little arithmetic
    return models.vgg_bn((3, 8, 8), widths=(4, 8, 8))


@pytest.mark.parametrize("build,shape", [(models.lenet, (1, 28, 28)), (_vgg_bn, (3, 8, 8))], ids=["lenet", "vgg_bn"])
def test_release_lets_go_of_every_array_the_step_made(build, shape):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((8, *shape)).astype(numpy.float32)
    y = rng.integers(0, 10, 8)
    init.seed(0)
    model = build()
    step = TrainStep(model, SGD(model.parameters(), lr=0.1, momentum=0.9))
    step(x, y)
    made = [a for a in _left_behind(step) if not (numpy.shares_memory(a, x) or numpy.shares_memory(a, y))]
    assert len(made) > 10  # the batch (x, y) is the caller's, not the step's
    refs = [weakref.ref(a) for a in made]
    del made
    step.release()
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert _left_behind(step) == []
    assert all(p.grad is None for p in model.parameters())


def test_a_released_step_trains_on_bit_for_bit():
    rng = numpy.random.default_rng(1)
    batches = [(rng.standard_normal((8, 3, 8, 8)).astype(numpy.float32), rng.integers(0, 10, 8)) for _ in range(3)]
    results = []
    for release in (False, True):
        init.seed(0)
        model = _vgg_bn()
        step = TrainStep(model, SGD(model.parameters(), lr=0.1, momentum=0.9))
        losses = []
        for x, y in batches:
            losses.append(float(step(x, y)[0]))
            if release:
                step.release()
        results.append((losses, model.state_dict()))
    assert results[0][0] == results[1][0]
    for k, v in results[0][1].items():
        numpy.testing.assert_array_equal(v, results[1][1][k], err_msg=k)


class LoggingStep:
    def __init__(self, log):
        self.log = log

    def __call__(self, x, y):
        self.log("step")
        return "loss", "correct"

    def release(self):
        self.log("release")


def test_capture_starts_after_the_eager_step_is_released_and_freed(fake):
    from gpucnn.graph import GraphedStep

    graphed = GraphedStep(LoggingStep(fake))
    x, y = numpy.zeros((4, 1, 2, 2), numpy.float32), numpy.zeros(4, numpy.int64)
    for _ in range(3):  # eager, capture (and its first replay), replay
        assert graphed(x, y) == ("loss", "correct")
    assert fake == ["step",
                    "release", ("free_all_blocks", "default"),  # the eager step's memory goes first
                    "begin_capture", "step", "end_capture",
                    ("free_all_blocks", "default"),  # and whatever the capture let go of
                    "launch", "launch"]


def test_peak_memory_counts_the_eager_warm_up_the_capture_freed(fake):
    from gpucnn.graph import GraphedStep

    class Growing(LoggingStep):
        def __call__(self, x, y):
            fake.default_pool.held += 1000  # the eager step's activations, or the capture's
            return super().__call__(x, y)

    graphed = GraphedStep(Growing(fake))
    x, y = numpy.zeros((4, 1, 2, 2), numpy.float32), numpy.zeros(4, numpy.int64)
    graphed(x, y)
    assert graphed.peak_bytes() == 1000
    graphed(x, y)  # capture: the default pool (1000 held) is emptied first
    fake.default_pool.held, graphed.pools[0].held = 100, 700  # static inputs; the graph's pool
    assert graphed.peak_bytes() == 1000  # the warm-up, not the 800 held now
    fake.default_pool.held = 500
    assert graphed.peak_bytes() == 1200  # now more than then


def test_dropping_a_graphed_step_destroys_its_handle_and_workspace(fake):
    from gpucnn.graph import GraphedStep

    first, second = GraphedStep(LoggingStep(fake)), GraphedStep(LoggingStep(fake))
    assert fake.lib.created == [1, 2] and first.cublas is not second.cublas
    assert gemm.live_handles() == 2
    workspace, stream = weakref.ref(first.cublas.workspace), weakref.ref(first.stream)
    with second.stream:
        second.stream.begin_capture()
        assert gemm._capture_handle() is second.cublas  # each stream finds its own handle
        second.stream.end_capture()
    fake.clear()
    del first
    gc.collect()
    assert fake.lib.destroyed == [1] and gemm.live_handles() == 1
    assert fake == ["release", ("cublasDestroy", 1)]  # the layers let go of the graph's arrays first
    assert workspace() is None and stream() is None
    with second.stream:
        second.stream.begin_capture()
        assert gemm._capture_handle() is second.cublas  # the other one is untouched
        second.stream.end_capture()
    del second
    gc.collect()
    assert fake.lib.destroyed == [1, 2] and gemm.live_handles() == 0


def test_a_stream_without_a_live_handle_is_refused_at_capture(fake):
    cupy = __import__("cupy")
    stream = cupy.cuda.Stream(non_blocking=True)
    handle = gemm.prepare_capture(stream)
    assert gemm.prepare_capture(stream) is handle  # one handle a stream while it lives
    handle.close()
    assert fake.lib.destroyed == [1] and gemm.live_handles() == 0
    with pytest.raises(gemm.CublasError, match="closed"):
        handle.gemm(None, None, False, False)
    with stream:
        stream.begin_capture()
        with pytest.raises(gemm.CublasError, match="prepare_capture"):
            gemm._capture_handle()
    handle.close()  # a second close does nothing
    assert fake.lib.destroyed == [1]
