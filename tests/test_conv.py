"""Conv2d: gradient check, PyTorch parity, errors, im2col/col2im, CuPy vs NumPy."""
import numpy
import pytest

from gpucnn.gradcheck import check_layer
from gpucnn.layers import Conv2d, conv
from gpucnn.layers.im2col import col2im, im2col

from helpers import close, cupy_matches_numpy, in_memory_order, matches_torch, memory_order, passes_gradient_check

F32, F64 = numpy.float32, numpy.float64

# (C_in, C_out, kernel, stride, padding, (N, H, W), bias): batch 1 and 3, non-square inputs,
# kernels 1, 2, 3, 5 and rectangular, strides 1-3 (also different per axis: stride 1 across
# takes NumPy's row-flat path, more takes the general one), paddings 0-2, strides that leave
# rows/columns no window reaches, and a kernel as tall as the padded input (one output row).
CASES = [
    (3, 5, 3, 1, 1, (1, 7, 5), True),
    (2, 7, 2, 2, 0, (3, 7, 5), False),
    (3, 5, 5, 3, 2, (3, 7, 5), True),
    (2, 3, 1, 1, 0, (3, 5, 4), True),
    (1, 2, 3, 2, 1, (1, 6, 7), False),
    (2, 2, (3, 2), (2, 1), (1, 0), (3, 7, 5), True),
    (2, 3, (2, 3), (1, 3), (0, 2), (1, 5, 7), True),
    (3, 2, 5, 1, 2, (1, 5, 5), False),
    (2, 3, 3, 3, 0, (3, 8, 7), True),
    (1, 2, 5, 1, 0, (3, 5, 6), True),
]


def ids(case):
    c_in, c_out, k, s, p, (n, h, w), bias = case
    return f"{c_in}to{c_out}-k{k}-s{s}-p{p}-{n}x{h}x{w}-{'bias' if bias else 'nobias'}".replace(" ", "")



LOWERINGS = ["im2col", "banded"]


def make(case, rng, dtype, lowering="auto"):
    c_in, c_out, k, s, p, (n, h, w), bias = case
    layer = Conv2d(c_in, c_out, k, s, p, bias=bias, dtype=dtype)
    layer.lowering = lowering
    return layer, rng.standard_normal((n, c_in, h, w)).astype(dtype)


def geometry(layer):
    return (*layer.kernel_size, *layer.stride, *layer.padding)


# --- gradient check: the judge ------------------------------------------------------------


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_gradient_check_float64(case, lowering, rng):
    layer, x = make(case, rng, F64, lowering)
    assert ("bias" in layer.params) == case[-1]
    passes_gradient_check(layer, x)


# --- PyTorch parity -------------------------------------------------------------------------

LENET = [
    # LeNet's two convolutions: big enough that NumPy batches the products in sample groups.
    (1, 6, 5, 1, 0, (16, 28, 28), True),
    (6, 16, 5, 1, 0, (16, 12, 12), True),
]


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case", CASES + LENET, ids=ids)
def test_matches_torch_float32(case, lowering, rng):
    torch = pytest.importorskip("torch")
    layer, x = make(case, rng, F32, lowering)
    c_in, c_out, k, s, p, _, bias = case
    ref = torch.nn.Conv2d(c_in, c_out, k, s, p, bias=bias)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.params.items()})
    dy = rng.standard_normal(tuple(layer.forward(x).shape)).astype(F32)
    matches_torch(layer, ref, x, dy)


@pytest.mark.parametrize(
    "args,kwargs",
    [((1, 6, 5), {}), ((3, 5, 3, 2, 1), dict(bias=False)), ((2, 4, (3, 1)), dict(stride=(1, 2), padding=(0, 2)))],
)
def test_repr_matches_torch(args, kwargs):
    torch = pytest.importorskip("torch")
    assert repr(Conv2d(*args, **kwargs)) == repr(torch.nn.Conv2d(*args, **kwargs))


def test_parameters_follow_pytorch_init():
    layer = Conv2d(3, 8, (3, 2), bias=True)
    bound = 1 / numpy.sqrt(3 * 3 * 2)
    assert layer.params["weight"].shape == (8, 3, 3, 2) and layer.params["bias"].shape == (8,)
    for p in layer.params.values():
        assert p.dtype == F32 and numpy.abs(p).max() <= bound
    assert numpy.abs(layer.params["weight"]).max() > 0.9 * bound  # 432 draws fill the range
    assert set(Conv2d(3, 8, 3, bias=False, dtype=F64).params) == {"weight"}


def test_auto_lowering_is_banded_for_lenet_and_im2col_for_vgg(rng):
    picks = {}
    for name, (c_in, c_out, k, p, hw) in {
        "lenet conv1": (1, 6, 5, 0, 28), "lenet conv2": (6, 16, 5, 0, 12),
        "vgg conv1": (3, 64, 3, 1, 32), "vgg conv3": (64, 128, 3, 1, 16),
    }.items():
        layer = Conv2d(c_in, c_out, k, padding=p)
        layer.forward(numpy.zeros((2, c_in, hw, hw), F32))
        picks[name] = layer.saved()[0]
    assert picks == {"lenet conv1": "banded", "lenet conv2": "banded", "vgg conv1": "im2col", "vgg conv3": "im2col"}


def test_auto_takes_im2col_when_banded_rows_exceed_the_budget(rng, monkeypatch):
    layer = Conv2d(1, 6, 5)
    x = numpy.zeros((4, 1, 28, 28), F32)
    monkeypatch.setattr(conv, "COLS_BUDGET_BYTES", 4 * 24 * (5 * 28 + 1) * 4 - 1)  # banded rows: 1 byte over
    layer.forward(x)
    assert layer.saved()[0] == "im2col"


def test_banded_on_a_cupy_array_is_refused_by_name(monkeypatch):
    """The check runs before anything touches the device, so a stand-in for is_cupy_array
    shows the message on any machine (the GPU test below does it with real CuPy)."""
    layer = Conv2d(1, 2, 3)
    layer.lowering = "banded"
    monkeypatch.setattr(conv.backend, "is_cupy_array", lambda a: True)
    with pytest.raises(ValueError, match="banded lowering is NumPy-only"):
        layer.forward(numpy.zeros((1, 1, 5, 5), F32))


def test_unknown_lowering():
    layer = Conv2d(1, 2, 3)
    layer.lowering = "winograd"
    with pytest.raises(ValueError, match="Conv2d: lowering must be"):
        layer.forward(numpy.zeros((1, 1, 5, 5), F32))


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_outputs_are_fresh_and_grads_overwritten(lowering, rng):
    layer, x = make(CASES[0], rng, F64, lowering)
    y1 = layer.forward(x)
    keep = y1.copy()
    y2 = layer.forward(x * 2)
    numpy.testing.assert_array_equal(y1, keep)  # a second forward must not reuse y1's memory
    dy = rng.standard_normal(y2.shape)
    dx1, g1 = layer.backward(dy), layer.grads["weight"].copy()
    dx2, g2 = layer.backward(dy), layer.grads["weight"]
    numpy.testing.assert_array_equal(dx1, dx2)
    numpy.testing.assert_array_equal(g1, g2)  # overwritten, not accumulated


ROWS_ORDER = (0, 2, 1, 3)  # NCHW values in (N, H, C, W) memory: what banded hands out


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[6], CASES[9]], ids=ids)
def test_any_memory_order_in_gives_the_same_numbers(case, lowering, rng):
    """x and dy as C-order arrays, as (N, H, C, W)-ordered views, and as strided slices."""
    layer, x = make(case, rng, F64, lowering)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def strided(a):  # every other column of an array twice as wide
        wide = numpy.zeros(a.shape[:3] + (2 * a.shape[3],))
        wide[..., ::2] = a
        return wide[..., ::2]

    for x_in, dy_in in [(in_memory_order(x, ROWS_ORDER), in_memory_order(dy, ROWS_ORDER)), (strided(x), strided(dy))]:
        close(layer.forward(x_in), y, rtol=1e-12)
        close(layer.backward(dy_in), dx, rtol=1e-12)
        for name, g in grads.items():
            close(layer.grads[name], g, rtol=1e-12)


def test_banded_hands_out_row_order_and_takes_its_gradient_back_in_it(rng):
    layer, x = make(LENET[1], rng, F32, "banded")
    y = layer.forward(x)
    assert memory_order(y) == ROWS_ORDER and not numpy.shares_memory(y, x)
    dx = layer.backward(in_memory_order(rng.standard_normal(y.shape).astype(F32), ROWS_ORDER))
    assert memory_order(dx) == ROWS_ORDER


# --- over COLS_BUDGET_BYTES: chunks of whole samples, cols rebuilt in backward --------------

# (case, samples whose cols fit the budget, the chunk sizes that gives). Batch 5: chunks of
# 2, 2, 1. Batch 23: 12 and 11 (near-equal), the first cut into NumPy sample groups (LeNet's
# first conv: 9 samples' columns at most per group).
CHUNKED = [
    ((3, 5, 3, 1, 1, (5, 7, 5), True), 2, [2, 2, 1]),
    ((2, 7, 2, 2, 0, (5, 7, 5), False), 2, [2, 2, 1]),
    ((2, 2, (3, 2), (2, 1), (1, 0), (5, 7, 5), True), 2, [2, 2, 1]),
    ((1, 6, 5, 1, 0, (23, 28, 28), True), 12, [12, 11]),
]


def chunk_ids(param):
    case, fit, _ = param
    return f"{ids(case)}-fit{fit}"


def budget_for(layer, x, samples):
    """A COLS_BUDGET_BYTES that fits exactly `samples` samples' cols of x."""
    return samples * im2col(x[:1], *geometry(layer)).nbytes


def ran_in_chunks(layer):
    """The last forward kept no cols (Conv2d saves ("im2col", x_shape, x, cols, y, chunk))."""
    return layer.saved()[3] is None


@pytest.mark.parametrize("param", CHUNKED[:3], ids=chunk_ids)
def test_chunked_gradient_check_float64(param, rng, monkeypatch):
    case, fit, _ = param
    layer, x = make(case, rng, F64, "im2col")
    monkeypatch.setattr(conv, "COLS_BUDGET_BYTES", budget_for(layer, x, fit))
    passes_gradient_check(layer, x)
    assert ran_in_chunks(layer)


@pytest.mark.parametrize("param", CHUNKED, ids=chunk_ids)
def test_chunked_equals_unchunked(param, rng, monkeypatch):
    case, fit, chunk_sizes = param
    layer, x = make(case, rng, F64, "im2col")
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx, grads = layer.backward(dy), {k: v.copy() for k, v in layer.grads.items()}

    sizes = []  # the batch size of every im2col call
    monkeypatch.setattr(conv, "im2col", lambda x, *g: sizes.append(len(x)) or im2col(x, *g))
    monkeypatch.setattr(conv, "COLS_BUDGET_BYTES", budget_for(layer, x, fit))
    tight = dict(rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(layer.forward(x), y, **tight)
    numpy.testing.assert_allclose(layer.backward(dy), dx, **tight)
    assert sizes == chunk_sizes * 2  # forward, then backward rebuilding each chunk's cols
    assert set(layer.grads) == set(grads)
    for name in grads:
        numpy.testing.assert_allclose(layer.grads[name], grads[name], **tight)
    for name in grads:
        layer.grads[name] = None
    assert layer.backward(dy, input_grad=False) is None
    for name in grads:
        numpy.testing.assert_allclose(layer.grads[name], grads[name], **tight)


def test_chunked_keeps_only_the_input(rng, monkeypatch):
    layer, x = make(CHUNKED[0][0], rng, F64, "im2col")
    cols_bytes = im2col(x, *geometry(layer)).nbytes
    y = layer.forward(x)
    kept = [a for a in layer.saved() if isinstance(a, numpy.ndarray)]
    assert sum(a.nbytes for a in kept) == cols_bytes + y.nbytes  # within budget: cols kept, as before

    monkeypatch.setattr(conv, "COLS_BUDGET_BYTES", budget_for(layer, x, 2))
    y = layer.forward(x)
    kept = [a for a in layer.saved() if isinstance(a, numpy.ndarray)]
    assert any(a is x for a in kept)  # x itself, not a copy
    assert sum(a.nbytes for a in kept) == x.nbytes + y.nbytes  # and the output it returned


# --- errors name the layer ------------------------------------------------------------------


def test_wrong_rank():
    with pytest.raises(ValueError, match="Conv2d.*4-d"):
        Conv2d(3, 4, 3).forward(numpy.zeros((3, 8, 8), F32))


def test_wrong_channel_count():
    with pytest.raises(ValueError, match="Conv2d.*3 channels"):
        Conv2d(3, 4, 3).forward(numpy.zeros((2, 2, 8, 8), F32))


def test_wrong_dtype():
    with pytest.raises(ValueError, match="Conv2d.*dtype"):
        Conv2d(3, 4, 3).forward(numpy.zeros((2, 3, 8, 8), F64))


def test_backward_before_forward():
    with pytest.raises(ValueError, match="Conv2d.*before forward"):
        Conv2d(3, 4, 3).backward(numpy.zeros((2, 4, 6, 6), F32))


def test_wrong_grad_shape():
    layer = Conv2d(3, 4, 3)
    layer.forward(numpy.zeros((2, 3, 8, 8), F32))
    with pytest.raises(ValueError, match="Conv2d.*grad_out"):
        layer.backward(numpy.zeros((2, 4, 8, 8), F32))


@pytest.mark.parametrize("shape,padding", [((1, 3, 2, 8), 0), ((1, 3, 8, 1), 0), ((1, 3, 1, 1), 0)])
def test_input_smaller_than_kernel(shape, padding):
    with pytest.raises(ValueError, match="Conv2d.*smaller than the kernel"):
        Conv2d(3, 4, 3, padding=padding).forward(numpy.zeros(shape, F32))


def test_padding_makes_small_input_fit():
    assert Conv2d(3, 4, 3, padding=1).forward(numpy.zeros((1, 3, 1, 1), F32)).shape == (1, 4, 1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=0),
        dict(kernel_size=(3, 0)),
        dict(kernel_size=(3, 3, 3)),
        dict(kernel_size=3, stride=0),
        dict(kernel_size=3, padding=-1),
        dict(kernel_size=2.5),
        dict(kernel_size=3, in_channels=0),
        dict(kernel_size=3, out_channels=True),
    ],
)
def test_bad_arguments(kwargs):
    args = dict(in_channels=3, out_channels=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d(**args)


# --- im2col / col2im ------------------------------------------------------------------------


def reference_cols(x, kh, kw, sh, sw, ph, pw):
    """Loop-by-loop im2col, (C*kh*kw, N, Ho, Wo)."""
    n, c, h, w = x.shape
    xp_ = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    cols = numpy.empty((c, kh, kw, n, ho, wo), x.dtype)
    for ci, p, q, i, j in numpy.ndindex(c, kh, kw, ho, wo):
        cols[ci, p, q, :, i, j] = xp_[:, ci, i * sh + p, j * sw + q]
    return cols.reshape(c * kh * kw, n, ho, wo)


def reference_col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    n, c, h, w = x_shape
    dxp = numpy.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    _, _, ho, wo = cols.shape
    taps = cols.reshape(c, kh, kw, n, ho, wo)
    for ci, p, q, i, j in numpy.ndindex(c, kh, kw, ho, wo):
        dxp[:, ci, i * sh + p, j * sw + q] += taps[ci, p, q, :, i, j]
    return dxp[:, :, ph : ph + h, pw : pw + w]


def numpy_layout(cols, x_shape, geom):
    """cols (K, N, Ho, Wo) in NumPy's im2col layout: zero junk columns up to its width Wc."""
    wc = im2col(numpy.zeros(x_shape, cols.dtype), *geom).shape[3]
    out = numpy.zeros(cols.shape[:3] + (wc,), cols.dtype)
    out[..., : cols.shape[3]] = cols
    return out


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_im2col_col2im_numpy_match_loops(case, rng):
    layer, x = make(case, rng, F64)
    geom = geometry(layer)
    ref = reference_cols(x, *geom)
    cols = im2col(x, *geom)
    assert cols.shape[:3] == ref.shape[:3] and cols.shape[3] >= ref.shape[3]
    numpy.testing.assert_array_equal(cols[..., : ref.shape[3]], ref)
    g = rng.standard_normal(ref.shape)
    dx = col2im(numpy_layout(g, x.shape, geom), x.shape, *geom)
    numpy.testing.assert_allclose(dx, reference_col2im(g, x.shape, *geom), rtol=1e-12, atol=1e-12)


# --- CuPy against NumPy ---------------------------------------------------------------------

GPU_CASES = CASES + [
    (6, 16, 5, 1, 0, (8, 12, 12), True),
    (4, 8, 3, 2, 1, (2, 33, 17), True),
]


def to_cupy(layer, cupy):
    twin = Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  bias="bias" in layer.params, dtype=layer.dtype)
    twin.params = {k: cupy.asarray(v) for k, v in layer.params.items()}
    return twin


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=ids)
def test_cupy_matches_numpy(case, rng):
    cupy = pytest.importorskip("cupy")
    layer, x = make(case, rng, F32)
    cupy_matches_numpy(layer, to_cupy(layer, cupy), x, rng, cupy)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES[:3] + CASES[5:7], ids=ids)
def test_gradient_check_float64_cupy(case, rng):
    cupy = pytest.importorskip("cupy")
    layer, x = make(case, rng, F64)
    errors = check_layer(to_cupy(layer, cupy), cupy.asarray(x))
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.gpu
def test_banded_lowering_is_refused_on_cupy(rng):
    cupy = pytest.importorskip("cupy")
    layer, x = make(CASES[0], rng, F32)
    twin = to_cupy(layer, cupy)
    twin.forward(cupy.asarray(x))
    assert twin.saved()[0] == "im2col"  # auto: the GPU path is im2col
    twin.lowering = "banded"
    with pytest.raises(ValueError, match="banded lowering is NumPy-only"):
        twin.forward(cupy.asarray(x))


@pytest.mark.gpu
@pytest.mark.parametrize("param", CHUNKED, ids=chunk_ids)
def test_chunked_cupy_matches_numpy(param, rng, monkeypatch):
    cupy = pytest.importorskip("cupy")
    case, fit, _ = param
    layer, x = make(case, rng, F32, "im2col")
    twin = to_cupy(layer, cupy)
    # Sized on CuPy's cols, which have no junk columns: NumPy's chunks are then as small or smaller.
    monkeypatch.setattr(conv, "COLS_BUDGET_BYTES", budget_for(layer, cupy.asarray(x), fit))
    cupy_matches_numpy(layer, twin, x, rng, cupy)
    assert ran_in_chunks(layer) and ran_in_chunks(twin)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("case", GPU_CASES, ids=ids)
def test_im2col_col2im_kernels_match_numpy(case, dtype, rng):
    cupy = pytest.importorskip("cupy")
    layer, x = make(case, rng, dtype)
    geom = geometry(layer)
    ref = reference_cols(x, *geom)
    cols = im2col(cupy.asarray(x), *geom)
    assert cols.shape == ref.shape and cols.dtype == dtype
    numpy.testing.assert_array_equal(cupy.asnumpy(cols), ref)  # a copy: exact
    g = rng.standard_normal(ref.shape).astype(dtype)
    dx = col2im(cupy.asarray(g), x.shape, *geom)
    assert dx.shape == x.shape and dx.dtype == dtype
    close(dx, col2im(numpy_layout(g, x.shape, geom), x.shape, *geom), rtol=1e-5)
