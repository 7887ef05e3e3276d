"""Every CUDA kernel in kernels/*.cu run on the CPU, where no GPU is (needs g++).

tests/host_cupy.py plays CuPy: its arrays are NumPy arrays, and kernels/*.cu are compiled with
g++ from the text and options the loader gives NVRTC. Most tests run a layer's or optimiser's
CuPy path (the kernels AND the Python that launches them) and its NumPy path on the same
numbers; the max-pooling kernels are also launched directly on a small grid (3 blocks of 4
threads, so every thread strides several times) against the loop reference and torch's indices.
"""
import shutil

import numpy
import pytest

import host_cupy
from gpucnn import kernels
from gpucnn.data import augment
from gpucnn.ema import EMA
from gpucnn.layers import BatchNorm2d, Conv2d, MaxPool2d
from gpucnn.layers import batchnorm as batchnorm_module
from gpucnn.layers import im2col as im2col_module
from gpucnn.optim import make_optimizer

from helpers import close
from test_maxpool import CASES, reference, with_nans
from test_optim import CONFIGS, FakeParam

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")


@pytest.fixture
def cupy_on_host(monkeypatch):
    fake = host_cupy.install(monkeypatch)
    yield fake
    host_cupy.clear_caches()


def run_maxpool_kernels(fake, x, dy, k, s):
    """maxpool2d_forward, then maxpool2d_backward, on 3 blocks of 4 threads: (y, argmax, dx)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    s = k if s is None else s
    sh, sw = (s, s) if isinstance(s, int) else s
    (n, c, h, w), (ho, wo) = x.shape, dy.shape[2:]
    geometry = tuple(numpy.int32(v) for v in (h, w, ho, wo, kh, kw, sh, sw))
    x, dy = fake.asarray(x), fake.asarray(dy)
    y, argmax, dx = fake.empty(dy.shape), fake.empty(dy.shape, dtype=numpy.int32), fake.empty(x.shape)
    kernels.get("maxpool.cu", "maxpool2d_forward", numpy.float64)((3,), (4,), (x, y, argmax, numpy.int64(y.size)) + geometry)
    kernels.get("maxpool.cu", "maxpool2d_backward", numpy.float64)((3,), (4,), (dy, argmax, dx, numpy.int64(dx.size)) + geometry)
    return numpy.array(y), numpy.array(argmax), numpy.array(dx)


@pytest.mark.parametrize("nans", [False, True], ids=["ties", "nans"])
@pytest.mark.parametrize("k,s,shape", CASES)
def test_kernel_follows_the_numpy_layer_and_the_reference(cupy_on_host, k, s, shape, nans, rng):
    x = with_nans(rng, shape) if nans else rng.integers(0, 3, size=shape).astype(numpy.float64)
    layer = MaxPool2d(k, s, dtype=numpy.float64)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    y_k, _, dx_k = run_maxpool_kernels(cupy_on_host, x, dy, k, s)
    y_ref, route = reference(x, k, s)
    numpy.testing.assert_array_equal(y_k, y_ref)
    numpy.testing.assert_array_equal(y_k, y)
    close(dx_k, route(dy), rtol=1e-12)
    close(dx_k, layer.backward(dy), rtol=1e-12)


def test_kernel_argmax_is_torchs_index(cupy_on_host, rng):
    """The flat h*W + w index, as PyTorch's return_indices gives it, NaNs included."""
    torch = pytest.importorskip("torch")
    x = with_nans(rng, (2, 3, 9, 11))
    y_k, argmax, _ = run_maxpool_kernels(cupy_on_host, x, numpy.zeros((2, 3, 4, 5)), 3, 2)
    yt, idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, return_indices=True)
    numpy.testing.assert_array_equal(y_k, yt.numpy())
    numpy.testing.assert_array_equal(argmax, idx.numpy())


# Both index widths of every kernel that has two: GPUCNN_INDEX64 sends small arrays down the
# path that only arrays past 2^32 elements take on a GPU.
WIDTHS = {"index32": (), "index64": ("-DGPUCNN_INDEX64",)}


@pytest.fixture(params=list(WIDTHS))
def widths(request, monkeypatch):
    monkeypatch.setattr(host_cupy.RawModule, "extra_options", WIDTHS[request.param])
    return request.param


@pytest.fixture(params=["one_pass", "strided"])
def blocks(request, monkeypatch):
    """As launched (a thread per element), or 2 blocks so every thread loops many times."""
    if request.param == "strided":
        monkeypatch.setattr(kernels, "MAX_BLOCKS", 2)
    return request.param


def on_device(fake, a):
    return fake.asarray(a)


# (kh, kw, sh, sw, ph, pw, (N, C, H, W)): square and not, strides 1..3 each way, padding on
# one side only, windows that skip pixels and windows that overlap.
IM2COL_CASES = [
    (3, 3, 1, 1, 1, 1, (2, 3, 6, 5)),
    (2, 3, 2, 1, 0, 2, (3, 2, 7, 6)),
    (3, 2, 1, 3, 2, 0, (2, 2, 8, 9)),
    (1, 1, 2, 2, 0, 0, (2, 3, 5, 5)),
    (3, 3, 3, 2, 1, 1, (1, 4, 9, 7)),
]


@pytest.mark.parametrize("case", IM2COL_CASES, ids=lambda c: "k{}x{}-s{}x{}-p{}x{}-{}".format(*c[:6], "x".join(map(str, c[6]))))
def test_im2col_and_col2im_kernels_follow_numpy(cupy_on_host, widths, blocks, case, rng):
    kh, kw, sh, sw, ph, pw, shape = case
    geometry = (kh, kw, sh, sw, ph, pw)
    x = rng.standard_normal(shape)
    cols = im2col_module.im2col(on_device(cupy_on_host, x), *geometry)
    assert isinstance(cols, cupy_on_host.ndarray)
    ho, wo = cols.shape[2:]
    numpy.testing.assert_array_equal(cols, im2col_module.im2col(x, *geometry)[..., :wo])

    dcols = rng.standard_normal(cols.shape)
    dx = im2col_module.col2im(on_device(cupy_on_host, dcols), shape, *geometry)
    # NumPy's row-flat layout (stride 1) has junk columns, which must hold zeros.
    wc = im2col_module.cols_width(x, kw, sw, pw)
    padded = numpy.zeros(dcols.shape[:3] + (wc,))
    padded[..., :wo] = dcols
    close(dx, im2col_module.col2im(padded, shape, *geometry), rtol=1e-13)


def test_conv2d_on_the_cupy_path_matches_numpy(cupy_on_host, rng):
    """The whole im2col conv (kernels, the products around them, bias) on both paths."""
    layer = numpy_layer(lambda: Conv2d(3, 4, (3, 2), (2, 1), (1, 0), dtype=numpy.float64))
    layer.lowering = "im2col"
    twin = Conv2d(3, 4, (3, 2), (2, 1), (1, 0), dtype=numpy.float64)
    twin.lowering = "im2col"
    for name, value in layer.params.items():
        twin.params[name][...] = value
    x = rng.standard_normal((2, 3, 7, 6))
    y = layer.forward(x)
    close(twin.forward(on_device(cupy_on_host, x)), y, rtol=1e-13)
    dy = rng.standard_normal(y.shape)
    close(twin.backward(on_device(cupy_on_host, dy)), layer.backward(dy), rtol=1e-12)
    for name in layer.grads:
        close(twin.grads[name], layer.grads[name], rtol=1e-12)


@pytest.mark.parametrize("nans", [False, True], ids=["ties", "nans"])
def test_maxpool_on_the_cupy_path_matches_numpy(cupy_on_host, widths, blocks, nans, rng):
    shape = (3, 2, 7, 9)
    x = with_nans(rng, shape) if nans else rng.integers(0, 3, size=shape).astype(numpy.float64)
    layer, twin = MaxPool2d(3, 2, dtype=numpy.float64), MaxPool2d(3, 2, dtype=numpy.float64)
    y = layer.forward(x)
    numpy.testing.assert_array_equal(twin.forward(on_device(cupy_on_host, x)), y)
    dy = rng.standard_normal(y.shape)
    close(twin.backward(on_device(cupy_on_host, dy)), layer.backward(dy), rtol=1e-12)


def numpy_layer(make):
    """Build a layer with NumPy arrays although the stand-in is the live backend."""
    from gpucnn import backend

    live = backend.xp
    backend.xp = numpy
    try:
        return make()
    finally:
        backend.xp = live


@pytest.mark.parametrize("width, dtype, rtol", [("index32", numpy.float64, 1e-11), ("index64", numpy.float64, 1e-11),
                                                ("index32", numpy.float32, 2e-4)])
def test_batchnorm_kernels_follow_numpy_training_then_eval(cupy_on_host, monkeypatch, width, dtype, rtol, rng):
    # Each channel's 800 values are shared by 3 blocks of 256 threads (as on a large GPU; one
    # block per channel would hide a wrong split index), and some threads take two turns.
    c, shape = 2, (2, 2, 20, 20)
    monkeypatch.setattr(batchnorm_module, "_MIN_VALUES_PER_THREAD", 1)
    monkeypatch.setattr(host_cupy.RawModule, "extra_options", WIDTHS[width])
    layer = numpy_layer(lambda: BatchNorm2d(c, dtype=dtype))
    twin = BatchNorm2d(c, dtype=dtype)
    assert isinstance(twin.params["weight"], cupy_on_host.ndarray)
    layer.params["weight"][...] = rng.uniform(0.5, 2.0, c)
    layer.params["bias"][...] = rng.standard_normal(c)
    for store in ("params", "buffers"):
        for name, value in getattr(layer, store).items():
            getattr(twin, store)[name][...] = value
    assert batchnorm_module._splits(shape[0] * shape[2] * shape[3], c) == 3

    for training in (True, False):
        layer.training = twin.training = training
        # channels at different offsets and scales, so a channel mix-up shows in every sum
        scale, offset = numpy.array([3.0, 0.5]), numpy.array([-1.0, 2.0])
        x = (rng.standard_normal(shape) * scale[:, None, None] + offset[:, None, None]).astype(dtype)
        y = layer.forward(x)
        close(twin.forward(on_device(cupy_on_host, x)), y, rtol=rtol)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            close(twin.buffers[name], layer.buffers[name], rtol=rtol)
        dy = rng.standard_normal(shape).astype(dtype)
        close(twin.backward(on_device(cupy_on_host, dy)), layer.backward(dy), rtol=rtol)
        for name in ("weight", "bias"):
            close(twin.grads[name], layer.grads[name], rtol=rtol)


@pytest.mark.parametrize("width", list(WIDTHS))
def test_synchronised_batchnorm_statistics_on_the_cupy_path(cupy_on_host, monkeypatch, width, rng):
    """--sync-bn's forward on the CuPy path (bn_partial_sum_sumsq, one pass, float64) at
    |mean| / std = 3000: mean and var right to float32 rounding against a float64 two-pass
    reference; the layer (one rank: the sum over ranks is itself) then as NumPy's."""
    from gpucnn.layers.batchnorm import _global_stats

    monkeypatch.setattr(batchnorm_module, "_MIN_VALUES_PER_THREAD", 1)
    monkeypatch.setattr(host_cupy.RawModule, "extra_options", WIDTHS[width])
    shape = (2, 2, 20, 20)  # 3 blocks share each channel, as in the test above
    x = (numpy.array([3000.0, -1500.0])[:, None, None] + rng.standard_normal(shape)).astype(numpy.float32)
    ref = x.astype(numpy.float64)
    mean, var, m = _global_stats(on_device(cupy_on_host, x), reduce=lambda sums: None)
    assert isinstance(var, cupy_on_host.ndarray) and var.dtype == numpy.float32 and float(m) == 800
    numpy.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1.2e-7)
    numpy.testing.assert_allclose(var, ref.var(axis=(0, 2, 3)), rtol=2.4e-7)

    layer = numpy_layer(lambda: BatchNorm2d(2, dtype=numpy.float64))
    twin = BatchNorm2d(2, dtype=numpy.float64)
    layer.reduce = twin.reduce = lambda sums: None
    x = rng.standard_normal(shape) * 2 + 1  # float64, near zero: the paths' adding orders barely matter
    y = layer.forward(x)
    close(twin.forward(on_device(cupy_on_host, x)), y, rtol=1e-12)
    close(twin.buffers["running_var"], layer.buffers["running_var"], rtol=1e-12)
    dy = rng.standard_normal(shape)
    close(twin.backward(on_device(cupy_on_host, dy)), layer.backward(dy), rtol=1e-11)


@pytest.mark.parametrize("dtype, rtol", [(numpy.float64, 1e-12), (numpy.float32, 2e-6)])
@pytest.mark.parametrize("name, kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_fused_optimiser_kernels_follow_the_numpy_update(cupy_on_host, blocks, name, kw, dtype, rtol, rng):
    """Four steps with an lr change between them: the fused kernel on the stand-in device
    against the optimiser's NumPy update (itself checked against torch.optim)."""
    init = [rng.standard_normal(s).astype(dtype) for s in [(5, 4), (300,)]]
    grads = [[rng.standard_normal(a.shape).astype(dtype) for a in init] for _ in range(4)]
    results = []
    for fused, wrap in ((False, numpy.array), (True, lambda a: on_device(cupy_on_host, a))):
        params = [FakeParam(f"{i}.weight", wrap(a)) for i, a in enumerate(init)]
        opt = make_optimizer(name, params, fused=fused, **kw)
        assert opt.fused is fused
        for step, gs in enumerate(grads):
            if step == 2:
                opt.lr = kw["lr"] / 2
            for p, g in zip(params, gs):
                p.grad = wrap(g)
            opt.step()
        results.append([numpy.array(p.value) for p in params] +
                       [numpy.array(b) for s in opt.state.values() for b in s.values()])
    for fused, ref in zip(results[1], results[0]):
        assert fused.dtype == dtype
        close(fused, ref, rtol=rtol)


@pytest.mark.parametrize("dtype, rtol", [(numpy.float64, 1e-13), (numpy.float32, 1e-6)])
def test_ema_kernel_follows_the_numpy_update(cupy_on_host, blocks, dtype, rtol, rng):
    def net():
        return BatchNorm2d(300, dtype=dtype)

    ref, dev = numpy_layer(net), net()
    start = rng.standard_normal(300).astype(dtype)
    for layer in (ref, dev):
        layer.params["weight"][...] = start
    emas = EMA(ref, 0.9), EMA(dev, 0.9)
    for _ in range(3):
        step = rng.standard_normal(300).astype(dtype)
        for layer, ema in zip((ref, dev), emas):
            layer.params["weight"][...] += step
            ema.update()
    assert isinstance(emas[1].averaged[0][2], cupy_on_host.ndarray)
    for (_, _, a), (_, _, b) in zip(emas[0].averaged, emas[1].averaged):
        close(b, a, rtol=rtol)



@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_random_resized_crop_kernel_follows_numpy(cupy_on_host, blocks, dtype, rng):
    """augment.random_resized_crop on the CuPy path (kernels/rrc.cu, launched by rrc_cupy)
    against rrc_numpy: boxes of every kind, flipped and not, images not square."""
    x = rng.random((9, 2, 11, 14)).astype(dtype)
    boxes = augment.rrc_boxes(rng, 9, 11, 14)
    boxes[:3] = [[0, 0, 11, 14], [2, 3, 1, 1], [0, 5, 11, 2]]  # whole, one pixel, a strip
    flips = rng.random(9) < 0.5
    flips[:2] = [True, False]
    got = augment.random_resized_crop(on_device(cupy_on_host, x), boxes, flips)
    assert isinstance(got, cupy_on_host.ndarray) and got.dtype == dtype
    # the same float32 formula; only contraction into fused multiply-adds may differ
    numpy.testing.assert_allclose(numpy.asarray(got), augment.rrc_numpy(x, boxes, flips), rtol=0, atol=1e-6)

def test_stand_in_refuses_arguments_of_the_wrong_c_type(cupy_on_host):
    """The check that makes a wrong argument order or dtype in the calling code fail here."""
    sgd_step = kernels.get("sgd.cu", "sgd_step", numpy.float32)
    g, p = (on_device(cupy_on_host, numpy.zeros(4, numpy.float32)) for _ in range(2))
    lr = on_device(cupy_on_host, numpy.ones((), numpy.float64))
    sgd_step((1,), (4,), (g, lr, numpy.float64(0), p, numpy.int64(4)))
    with pytest.raises(TypeError, match="sgd_step"):
        sgd_step((1,), (4,), (g, lr, numpy.float32(0), p, numpy.int64(4)))
    with pytest.raises(TypeError, match="sgd_step"):
        sgd_step((1,), (4,), (g, numpy.float64(0), lr, p, numpy.int64(4)))
