"""Dropout: inverted scaling, eval identity, masks as a pure function of (seed, draw, element)
kept on the device (resume draws the same masks, each step a fresh one, a graph replay too)."""
import numpy
import pytest

from gpucnn import init
from gpucnn.gradcheck import check_layer
from gpucnn.layers import Dropout
from gpucnn.layers.dropout import keep_mask, set_draws

from helpers import close, module_to_cupy

F32, F64 = numpy.float32, numpy.float64


@pytest.mark.parametrize("dtype", [F32, F64])
def test_inverted_scaling_and_rate(dtype, rng):
    layer = Dropout(0.3, seed=11, dtype=dtype)
    x = rng.uniform(1, 2, (200, 500)).astype(dtype)
    y = layer.forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    dropped = y == 0
    n = x.size
    assert abs(dropped.mean() - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5  # within 4 sigma of p
    close(y[~dropped], x[~dropped] / 0.7, 1e-6)  # kept values scaled by 1/(1-p)
    dy = rng.standard_normal(x.shape).astype(dtype)
    close(layer.backward(dy), numpy.where(dropped, 0, dy / 0.7), 1e-6)


def test_eval_is_the_identity_and_matches_torch(rng):
    torch = pytest.importorskip("torch")
    layer = Dropout(0.5).eval()
    x = rng.standard_normal((3, 4)).astype(F32)
    assert layer.forward(x) is x
    dy = rng.standard_normal((3, 4)).astype(F32)
    assert layer.backward(dy) is dy
    numpy.testing.assert_array_equal(torch.nn.Dropout(0.5).eval()(torch.from_numpy(x)).numpy(), x)
    assert int(layer.draws) == 0  # eval draws no mask
    close(Dropout(0.0).forward(x), x, 0)


def test_mask_is_a_function_of_seed_and_draw_only(rng):
    x = numpy.ones((8, 64), F32)
    a, b = Dropout(0.5, seed=3), Dropout(0.5, seed=3)
    first = [a.forward(x) != 0 for _ in range(3)]
    assert int(a.draws) == 3  # one draw per training forward
    assert not numpy.array_equal(first[0], first[1]) and not numpy.array_equal(first[1], first[2])  # fresh each step
    set_draws([b], 2)  # a run resumed at global step 2 ...
    numpy.testing.assert_array_equal(b.forward(x) != 0, first[2])  # ... draws the straight run's mask
    numpy.testing.assert_array_equal(first[1], keep_mask(3, numpy.array(1), x.shape, 0.5, numpy))
    assert not numpy.array_equal(Dropout(0.5, seed=4).forward(x) != 0, first[0])  # the seed matters


def test_seed_comes_from_the_seeded_initialiser():
    init.seed(7)
    s1, s2 = Dropout(0.1).seed, Dropout(0.1).seed
    init.seed(7)
    assert s1 != s2 and Dropout(0.1).seed == s1


def test_hash_masks_look_independent():
    """Neighbouring elements and neighbouring draws are uncorrelated (a weak hash would not be)."""
    m = numpy.stack([keep_mask(0, numpy.array(t), (4096,), 0.5, numpy) for t in range(8)]).astype(F64)
    assert abs(numpy.corrcoef(m[:, :-1].ravel(), m[:, 1:].ravel())[0, 1]) < 0.03
    assert abs(numpy.corrcoef(m[:-1].ravel(), m[1:].ravel())[0, 1]) < 0.03


def test_gradient_check_with_the_mask_held(rng):
    from gpucnn.check import HeldDropout

    errors = check_layer(HeldDropout(0.4, dtype=F64), rng.standard_normal((3, 5, 2)))
    assert errors["x"] < 1e-6


def test_bad_p():
    for p in (-0.1, 1.0, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="Dropout: p must be a probability in"):
            Dropout(p)


@pytest.mark.gpu
def test_cuda_graph_replay_draws_a_fresh_mask_each_time():
    """The bug to guard against: a mask computed once at capture and replayed forever."""
    import cupy

    layer = module_to_cupy(Dropout(0.5, seed=9), cupy)
    x = cupy.ones((64, 128), cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    pool = cupy.cuda.MemoryPool()
    with stream:
        eager = layer.forward(x).get() != 0  # draw 0, and compiles the kernels
        with cupy.cuda.using_allocator(pool.malloc):
            stream.begin_capture()
            y = layer.forward(x)
            graph = stream.end_capture()
        masks = []
        for _ in range(3):
            graph.launch(stream=stream)
            masks.append(y.get() != 0)
    for t, mask in enumerate(masks, start=1):  # replays read the draw counter the device holds
        numpy.testing.assert_array_equal(mask, keep_mask(9, numpy.array(t), x.shape, 0.5, numpy))
    assert not numpy.array_equal(masks[0], masks[1]) and not numpy.array_equal(eager, masks[0])
    assert int(layer.draws) == 4
