"""2-D max pooling: the largest value of each (kh, kw) window, windows `stride` apart.

    y[n, c, i, j] = max_{p < kh, q < kw} x[n, c, i*sh + p, j*sw + q]
    H_out = floor((H - kh) / sh) + 1     (no padding, like PyTorch)

Backward: the gradient of a max is 1 at the position that won and 0 elsewhere, so each
dy[n, c, i, j] goes to the argmax of its window; where windows overlap (kh > sh) one input
can win several windows and receives the SUM of their gradients. Ties go to the first
maximum in row-major window order, as in PyTorch, so exactly one input gets each dy.

NaN, by PyTorch's rule too (its CPU and CUDA kernels alike): a window holding a NaN has
max NaN, and its dy goes to the LAST NaN in row-major window order. Both backends follow
it (kernels/maxpool.cu for CuPy).
"""
import numpy

from gpucnn import backend, kernels
from gpucnn.layers.base import Layer
from gpucnn.layers.im2col import out_size


class MaxPool2d(Layer):
    def __init__(self, kernel_size, stride=None, dtype=None):
        super().__init__(dtype)
        self.kernel_size = self.int_pair(kernel_size, "kernel_size")
        self.stride = self.int_pair(kernel_size if stride is None else stride, "stride")

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def output_size(self, h, w):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return out_size(h, kh, sh, 0), out_size(w, kw, sw, 0)  # no padding, like PyTorch's default

    def forward(self, x):
        self.check_input(x, 4)
        h, w = x.shape[2:]
        if h < self.kernel_size[0] or w < self.kernel_size[1]:
            raise ValueError(
                f"MaxPool2d: input of spatial size {h}x{w} is smaller than the kernel {self.kernel_size}"
            )
        ho, wo = self.output_size(h, w)
        if backend.is_cupy_array(x):
            y, argmax = _forward_cuda(x, self.kernel_size, self.stride, ho, wo)
        else:
            y, argmax = _forward_numpy(x, self.kernel_size, self.stride, ho, wo)
        self.save(tuple(x.shape), y, argmax)
        return y

    def backward(self, dy):
        x_shape, y, argmax = self.saved()
        self.check_grad(dy, y)
        if backend.is_cupy_array(dy):
            return _backward_cuda(dy, argmax, x_shape, self.kernel_size, self.stride)
        return _backward_numpy(dy, argmax, x_shape, self.kernel_size, self.stride)


# --- NumPy ------------------------------------------------------------------------------
# A 2-D max is separable: take the max along each row's window first, then the max of those
# row maxima down the window's rows. Picking the FIRST winning row, and within it the first
# winning column, is exactly the first maximum in row-major order, so ties match PyTorch.
# Each pass is a few whole-array operations over strided views (one per tap of the window),
# which is far faster in NumPy than gathering every window.
# The NaN rule is separable as well: the last row holding a NaN, then its last NaN column,
# is the last NaN in row-major order. Tracking NaNs costs an isnan pass per tap, so the
# forward runs without it and redoes the pooling only when the output shows a NaN
# (numpy.maximum propagates them): only a batch that has one pays.


def _taps(a, axis, j, s, n):
    """Tap j of each of the n windows along `axis` (stride s): a view of a[..., j::s][:n]."""
    index = [slice(None)] * a.ndim
    index[axis] = slice(j, j + s * (n - 1) + 1, s)
    return a[tuple(index)]


def _max_along(a, axis, k, s, n, nans=False):
    """Max over the k taps of each window along `axis`, and the first tap that holds it
    (with nans=True: the last NaN tap where the window has one)."""
    if k == 1:
        m = _taps(a, axis, 0, s, n).copy()
        return m, numpy.zeros(m.shape, numpy.int8)
    # Comparisons give bools; viewing them as int8 (free) lets the tap index be built with
    # integer max instead of np.where, which is several times slower on unpredictable masks.
    as_index = (lambda b: b.view(numpy.int8)) if k <= 127 else (lambda b: b.astype(numpy.int32))

    def wins(tap, best):  # strict: a tie keeps the earlier tap; a NaN tap always takes over
        won = numpy.greater(tap, best)
        return numpy.logical_or(won, numpy.isnan(tap), out=won) if nans else won

    first, second = _taps(a, axis, 0, s, n), _taps(a, axis, 1, s, n)
    arg = as_index(wins(second, first))
    m = numpy.maximum(first, second)  # NaN if either is
    for j in range(2, k):
        tap = _taps(a, axis, j, s, n)
        won = as_index(wins(tap, m))  # once m is NaN only a NaN tap wins: tap > NaN is false
        won *= j
        numpy.maximum(arg, won, out=arg)  # j exceeds every earlier tap index: "set j where won"
        numpy.maximum(m, tap, out=m)
    return m, arg


def _forward_numpy(x, k, s, ho, wo, nans=False):
    row_max, col = _max_along(x, 3, k[1], s[1], wo, nans)  # (N, C, H, Wo): best column per row
    y, row = _max_along(row_max, 2, k[0], s[0], ho, nans)  # (N, C, Ho, Wo): best row
    if not nans and numpy.isnan(y).any():
        return _forward_numpy(x, k, s, ho, wo, nans=True)
    return y, (row, col)


def _route(d, arg, shape, axis, k, s, n):
    """Undo one _max_along pass: send d[.., o, ..] to tap arg[o] of window o along `axis`.
    `out` takes arg's memory order (empty_like keeps it), so dX keeps the order x came in:
    writing across orders costs up to 3x here."""
    if k == s:
        # Windows tile the axis without overlap: every input is written at most once, so
        # write in place; only a remainder past the last window (never pooled) needs zeros.
        out = numpy.empty_like(arg, dtype=d.dtype, shape=shape)
        _taps(out, axis, k * n, 1, shape[axis] - k * n)[...] = 0
        for j in range(k):
            numpy.multiply(d, arg == j, out=_taps(out, axis, j, s, n))
    else:
        # Overlap (k > s) must add up contributions; gaps (k < s) must stay zero.
        out = numpy.zeros_like(arg, dtype=d.dtype, shape=shape)
        for j in range(k):
            view = _taps(out, axis, j, s, n)
            view += d * (arg == j)
    return out


def _backward_numpy(dy, argmax, x_shape, k, s):
    row, col = argmax
    n, c, h, w = x_shape
    ho, wo = dy.shape[2:]
    d_row_max = _route(dy, row, (n, c, h, wo), 2, k[0], s[0], ho)
    return _route(d_row_max, col, x_shape, 3, k[1], s[1], wo)


# --- CuPy: kernels/maxpool.cu ------------------------------------------------------------


def _launch(name, dtype, total, args):
    kernels.launch("maxpool.cu", name, dtype, total, args)


def _geometry(h, w, ho, wo, k, s):
    return tuple(numpy.int32(v) for v in (h, w, ho, wo, k[0], k[1], s[0], s[1]))


def _forward_cuda(x, k, s, ho, wo):
    cp = backend.cupy_module()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = cp.empty((n, c, ho, wo), dtype=x.dtype)
    # argmax: flat index h*W + w inside the (H, W) plane, like PyTorch's return_indices.
    argmax = cp.empty((n, c, ho, wo), dtype=cp.int32)
    _launch("maxpool2d_forward", x.dtype, y.size,
            (x, y, argmax, numpy.int64(y.size)) + _geometry(h, w, ho, wo, k, s))
    return y, argmax


def _backward_cuda(dy, argmax, x_shape, k, s):
    cp = backend.cupy_module()
    dy = cp.ascontiguousarray(dy)
    n, c, h, w = x_shape
    ho, wo = dy.shape[2:]
    dx = cp.empty(x_shape, dtype=dy.dtype)  # the kernel writes every element, zeros included
    _launch("maxpool2d_backward", dy.dtype, dx.size,
            (dy, argmax, dx, numpy.int64(dx.size)) + _geometry(h, w, ho, wo, k, s))
    return dx
