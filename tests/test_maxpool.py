"""MaxPool2d: gradient check, PyTorch parity (overlap and ties), errors, CuPy vs NumPy."""
import numpy
import pytest

from gpucnn.gradcheck import check_layer
from gpucnn.layers import MaxPool2d

from helpers import close, in_memory_order, memory_order

F32, F64 = numpy.float32, numpy.float64

# (kernel_size, stride, input shape): batch 1 and 3, non-square, overlapping windows
# (k3 s2, k2 s1, k3 s1), gaps between windows (k2 s3), kernels 1..3, rectangular kernels,
# and sizes that leave rows/columns outside every window.
CASES = [
    (2, None, (1, 2, 6, 5)),
    (2, 2, (3, 3, 7, 4)),
    (3, 2, (3, 2, 7, 9)),
    (2, 1, (1, 2, 5, 4)),
    (3, 1, (3, 1, 5, 6)),
    (1, 1, (1, 2, 3, 3)),
    (3, 3, (1, 2, 8, 7)),
    (2, 3, (3, 1, 8, 7)),
    ((2, 3), (1, 2), (1, 2, 6, 7)),
    ((3, 1), (2, 1), (3, 2, 5, 3)),
]


def distinct(rng, shape, dtype=F64):
    """Values at least 4/n apart, so a +-1e-6 nudge never changes which element is the max."""
    n = int(numpy.prod(shape))
    return ((rng.permutation(n).reshape(shape) - n / 2) / n * 4.0).astype(dtype)



def winner(win):
    """(row, col) of the element that wins a window, by PyTorch's rule: the last NaN in
    row-major order if there is one, else the first maximum."""
    flat = win.ravel()
    nans = numpy.flatnonzero(numpy.isnan(flat))
    at = nans[-1] if nans.size else numpy.argmax(flat)  # numpy's argmax: first max
    return numpy.unravel_index(at, win.shape)


def reference(x, k, s):
    """Loop-by-loop max pooling: (y, dx routing function), ties and NaNs as in `winner`."""
    s = k if s is None else s
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (s, s) if isinstance(s, int) else s
    n, c, h, w = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = numpy.empty((n, c, ho, wo), x.dtype)
    where = numpy.empty((n, c, ho, wo, 2), int)
    for idx in numpy.ndindex(n, c, ho, wo):
        b, ch, i, j = idx
        win = x[b, ch, i * sh:i * sh + kh, j * sw:j * sw + kw]
        p, q = winner(win)
        y[idx] = win[p, q]
        where[idx] = (i * sh + p, j * sw + q)

    def route(dy):
        dx = numpy.zeros_like(x)
        for idx in numpy.ndindex(n, c, ho, wo):
            dx[idx[0], idx[1], where[idx][0], where[idx][1]] += dy[idx]
        return dx

    return y, route


@pytest.mark.parametrize("k,s,shape", CASES)
def test_gradient_check_float64(k, s, shape, rng):
    errors = check_layer(MaxPool2d(k, s, dtype=F64), distinct(rng, shape))
    assert errors["x"] < 1e-6, errors


@pytest.mark.parametrize("k,s,shape", CASES)
def test_matches_loop_reference_with_ties(k, s, shape, rng):
    # Small integers: many ties inside windows, so tie breaking and accumulation show.
    x = rng.integers(0, 3, size=shape).astype(F64)
    layer = MaxPool2d(k, s, dtype=F64)
    y = layer.forward(x)
    y_ref, route = reference(x, k, s)
    numpy.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape)
    numpy.testing.assert_allclose(layer.backward(dy), route(dy), rtol=1e-12, atol=1e-12)


def test_ties_go_to_the_first_maximum_in_row_major_order():
    x = numpy.array([[[[1.0, 1.0], [1.0, 1.0]],    # all equal: top-left wins
                      [[0.0, 5.0], [5.0, 0.0]],    # (0, 1) comes before (1, 0)
                      [[2.0, 0.0], [7.0, 7.0]]]])  # (1, 0) before (1, 1)
    layer = MaxPool2d(2, dtype=F64)
    y = layer.forward(x)
    numpy.testing.assert_array_equal(y.ravel(), [1.0, 5.0, 7.0])
    dx = layer.backward(numpy.full(y.shape, 3.0))
    expected = numpy.zeros_like(x)
    expected[0, 0, 0, 0] = expected[0, 1, 0, 1] = expected[0, 2, 1, 0] = 3.0
    numpy.testing.assert_array_equal(dx, expected)


def with_nans(rng, shape, share=0.3, dtype=F64):
    """Small integers (ties) with about `share` of them NaN: windows with none, one, several."""
    x = rng.integers(0, 3, size=shape).astype(dtype)
    x[rng.random(shape) < share] = numpy.nan
    return x


def test_torch_nan_rule_is_what_we_say():
    """PyTorch itself, on the cases that tell the rules apart: the LAST NaN wins."""
    torch = pytest.importorskip("torch")
    nan = numpy.nan
    for window, at in [([[1, nan], [nan, 2]], 2), ([[nan, nan], [nan, nan]], 3),
                       ([[5, 1], [nan, 0]], 2), ([[nan, 9], [1, 2]], 0)]:
        xt = torch.tensor([[window]], dtype=torch.float32, requires_grad=True)
        yt, idx = torch.nn.functional.max_pool2d(xt, 2, return_indices=True)
        yt.sum().backward()
        assert torch.isnan(yt).all() and idx.item() == at and xt.grad.flatten()[at] == 1
        assert winner(numpy.array(window, F64)) == numpy.unravel_index(at, (2, 2))


def test_nan_goes_to_the_last_nan_in_row_major_order():
    nan = numpy.nan
    x = numpy.array([[[[1.0, nan], [nan, 2.0]],   # two NaNs: (1, 0), the later one
                      [[nan, 9.0], [1.0, 2.0]],   # a NaN first, numbers after: it stays
                      [[nan, nan], [nan, nan]]]])  # all NaN: the last element
    layer = MaxPool2d(2, dtype=F64)
    y = layer.forward(x)
    assert numpy.isnan(y).all()
    dx = layer.backward(numpy.full(y.shape, 3.0))
    expected = numpy.zeros_like(x)
    expected[0, 0, 1, 0] = expected[0, 1, 0, 0] = expected[0, 2, 1, 1] = 3.0
    numpy.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("k,s,shape", CASES)
def test_nans_match_loop_reference(k, s, shape, rng):
    x = with_nans(rng, shape)
    layer = MaxPool2d(k, s, dtype=F64)
    y = layer.forward(x)
    y_ref, route = reference(x, k, s)
    numpy.testing.assert_array_equal(y, y_ref)  # NaN where the reference has NaN
    dy = rng.standard_normal(y.shape)
    numpy.testing.assert_allclose(layer.backward(dy), route(dy), rtol=1e-12, atol=1e-12)


def test_overlapping_windows_accumulate():
    # One global max at the centre of a 5x5 plane is in all four k3 s2 windows.
    x = numpy.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 9.0
    layer = MaxPool2d(3, stride=2, dtype=F64)
    y = layer.forward(x)
    assert y.shape == (1, 1, 2, 2) and (y == 9.0).all()
    dx = layer.backward(numpy.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert dx[0, 0, 2, 2] == 10.0 and dx.sum() == 10.0


def test_output_size_floors_like_pytorch():
    layer = MaxPool2d(3, stride=2)
    assert layer.forward(numpy.zeros((2, 3, 7, 10), F32)).shape == (2, 3, 3, 4)
    assert MaxPool2d(2).forward(numpy.zeros((1, 1, 5, 5), F32)).shape == (1, 1, 2, 2)
    assert layer.kernel_size == (3, 3) and layer.stride == (2, 2)
    assert MaxPool2d((2, 3)).stride == (2, 3)


def test_forward_returns_a_new_array_not_a_view_of_the_input():
    x = numpy.arange(16, dtype=F32).reshape(1, 1, 4, 4)
    y = MaxPool2d(1).forward(x)
    y[...] = -1
    assert x.min() == 0


# --- PyTorch --------------------------------------------------------------------------------

TORCH_CASES = [(2, 2, (4, 3, 12, 10)), (3, 2, (2, 3, 9, 11)), (2, 1, (3, 2, 6, 7)), (3, 1, (2, 2, 7, 5)),
               ((2, 3), (1, 2), (2, 2, 8, 9))]


@pytest.mark.parametrize("ties", [False, True, "nans"], ids=["distinct", "ties", "nans"])
@pytest.mark.parametrize("k,s,shape", TORCH_CASES)
def test_matches_torch_float32(k, s, shape, ties, rng):
    torch = pytest.importorskip("torch")
    if ties == "nans":
        x = with_nans(rng, shape, dtype=F32)
    elif ties:  # ReLU-like input: whole windows of zeros
        x = numpy.maximum(rng.standard_normal(shape), 0).astype(F32)
    else:
        x = rng.standard_normal(shape).astype(F32)
    layer = MaxPool2d(k, s)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(F32)
    dx = layer.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, k, s)
    yt.backward(torch.tensor(dy))
    numpy.testing.assert_array_equal(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])  # tiling windows, and overlapping ones
def test_any_memory_order_in_and_dx_keeps_it(k, s, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(numpy.float32)
    pool = MaxPool2d(k, s)
    y = pool.forward(x)
    dy = rng.standard_normal(y.shape).astype(numpy.float32)
    dx = pool.backward(dy)
    order = (0, 2, 1, 3)
    numpy.testing.assert_array_equal(pool.forward(in_memory_order(x, order)), y)
    dx_rows = pool.backward(in_memory_order(dy, order))
    numpy.testing.assert_array_equal(dx_rows, dx)
    assert memory_order(dx_rows) == order


def test_errors_name_the_layer():
    layer = MaxPool2d(2)
    with pytest.raises(ValueError, match="MaxPool2d: backward called before forward"):
        layer.backward(numpy.zeros((1, 1, 1, 1), F32))
    with pytest.raises(ValueError, match="MaxPool2d: expected a 4-d input"):
        layer.forward(numpy.zeros((2, 4, 4), F32))
    with pytest.raises(ValueError, match="MaxPool2d: expected input of dtype float32"):
        layer.forward(numpy.zeros((1, 1, 4, 4), F64))
    with pytest.raises(ValueError, match="MaxPool2d: expected an array"):
        layer.forward([[1.0]])
    with pytest.raises(ValueError, match="MaxPool2d: .*smaller than the kernel"):
        MaxPool2d(3).forward(numpy.zeros((1, 1, 2, 5), F32))
    layer.forward(numpy.zeros((1, 1, 4, 4), F32))
    with pytest.raises(ValueError, match="MaxPool2d: expected grad_out of shape"):
        layer.backward(numpy.zeros((1, 1, 3, 3), F32))
    with pytest.raises(ValueError, match="MaxPool2d: expected grad_out of dtype"):
        layer.backward(numpy.zeros((1, 1, 2, 2), F64))
    for bad in (0, -1, (2,), (2, 2, 2), 1.5):
        with pytest.raises(ValueError, match="MaxPool2d: kernel_size"):
            MaxPool2d(bad)
    with pytest.raises(ValueError, match="MaxPool2d: stride"):
        MaxPool2d(2, stride=0)
    with pytest.raises(ValueError, match="MaxPool2d: dtype"):
        MaxPool2d(2, dtype=numpy.int32)


# --- CuPy vs NumPy (kernels/maxpool.cu) -------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("k,s,shape", TORCH_CASES + [(2, 2, (128, 6, 24, 24))])
def test_cupy_matches_numpy(k, s, shape, rng):
    cupy = pytest.importorskip("cupy")
    x = numpy.maximum(rng.standard_normal(shape), 0).astype(F32)  # with ties
    cpu, gpu = MaxPool2d(k, s), MaxPool2d(k, s)
    y = cpu.forward(x)
    dy = rng.standard_normal(y.shape).astype(F32)
    y_gpu = gpu.forward(cupy.asarray(x))
    assert isinstance(y_gpu, cupy.ndarray)
    numpy.testing.assert_array_equal(y_gpu.get(), y)
    dx_gpu = gpu.backward(cupy.asarray(dy))
    assert isinstance(dx_gpu, cupy.ndarray) and dx_gpu.dtype == F32
    close(dx_gpu, cpu.backward(dy))


@pytest.mark.gpu
@pytest.mark.parametrize("k,s,shape", CASES)
def test_cupy_nan_rule_matches_numpy(k, s, shape, rng):
    cupy = pytest.importorskip("cupy")
    x = with_nans(rng, shape, dtype=F32)
    cpu, gpu = MaxPool2d(k, s), MaxPool2d(k, s)
    y = cpu.forward(x)
    numpy.testing.assert_array_equal(gpu.forward(cupy.asarray(x)).get(), y)
    dy = rng.standard_normal(y.shape).astype(F32)
    close(gpu.backward(cupy.asarray(dy)), cpu.backward(dy))  # overlaps may sum in another order


@pytest.mark.gpu
@pytest.mark.parametrize("k,s,shape", CASES[:5])
def test_cupy_gradient_check_float64(k, s, shape, rng):
    cupy = pytest.importorskip("cupy")
    errors = check_layer(MaxPool2d(k, s, dtype=F64), cupy.asarray(distinct(rng, shape)))
    assert errors["x"] < 1e-6, errors


@pytest.mark.gpu
def test_cupy_non_contiguous_input(rng):
    cupy = pytest.importorskip("cupy")
    x = rng.standard_normal((2, 3, 9, 8)).astype(F32)
    xt = numpy.ascontiguousarray(x.transpose(0, 1, 3, 2))
    y_gpu = MaxPool2d(3, 2).forward(cupy.asarray(x).transpose(0, 1, 3, 2))
    numpy.testing.assert_array_equal(y_gpu.get(), MaxPool2d(3, 2).forward(xt))
