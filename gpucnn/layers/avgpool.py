"""Average pooling: the mean of each (kh, kw) window of the zero-padded input.

    y[n, c, i, j] = 1/(kh*kw) * sum_{p < kh, q < kw} xpad[n, c, i*sh + p, j*sw + q]
    H_out = floor((H + 2*ph - kh) / sh) + 1

PyTorch's nn.AvgPool2d defaults: stride = kernel_size, count_include_pad=True (padded
zeros count in the divisor, which is always kh*kw), ceil_mode=False.

Backward: each dy[n, c, i, j] / (kh*kw) goes to every input of its window; where windows
overlap an input gets the sum. The window sum is separable (rows, then columns), so each
direction is kh + kw whole-array adds over strided views, the same code on both backends:
plain array operations, no host sync, so the CUDA graph captures them.

GlobalAvgPool2d is PyTorch's AdaptiveAvgPool2d(1): it returns (N, C, 1, 1) and does NOT
flatten; nets follow it with Flatten, as PyTorch code does, so the two correspond module for
module and a PyTorch state_dict's indices line up with gpucnn's.
"""
from gpucnn import backend
from gpucnn.layers.base import Layer
from gpucnn.layers.im2col import out_size
from gpucnn.layers.maxpool import _taps


class AvgPool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0, dtype=None):
        super().__init__(dtype)
        self.kernel_size = self.int_pair(kernel_size, "kernel_size")
        self.stride = self.int_pair(kernel_size if stride is None else stride, "stride")
        self.padding = self.int_pair(padding, "padding", low=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"AvgPool2d: padding {self.padding} must be at most half the kernel {self.kernel_size} "
                             f"(as in PyTorch)")

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def output_size(self, h, w):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)

    def forward(self, x):
        self.check_input(x, 4)
        h, w = x.shape[2:]
        ho, wo = self.output_size(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(f"AvgPool2d: input of spatial size {h}x{w} with padding {self.padding} is smaller "
                             f"than the kernel {self.kernel_size}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        xp = backend.get_array_module(x)
        if ph or pw:
            x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        rows = _sum_taps(x, 3, kw, sw, wo)  # (N, C, Hp, Wo)
        y = _sum_taps(rows, 2, kh, sh, ho)  # (N, C, Ho, Wo)
        y *= y.dtype.type(1.0 / (kh * kw))
        self.save(tuple(x.shape), y)
        return y

    def backward(self, dy):
        padded_shape, y = self.saved()
        self.check_grad(dy, y)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        xp = backend.get_array_module(dy)
        n, c, hp, wp = padded_shape
        ho, wo = dy.shape[2:]
        d_rows = _spread(xp, dy * dy.dtype.type(1.0 / (kh * kw)), (n, c, hp, wo), 2, kh, sh, ho)
        dx = _spread(xp, d_rows, padded_shape, 3, kw, sw, wo)
        return dx[:, :, ph : hp - ph, pw : wp - pw] if ph or pw else dx


class GlobalAvgPool2d(Layer):
    """(N, C, H, W) -> (N, C, 1, 1): y[n, c] = mean over h, w of x[n, c, h, w]; dx = dy / (H*W)
    at every position. No flatten (AdaptiveAvgPool2d(1))."""

    def forward(self, x):
        self.check_input(x, 4)
        y = x.mean(axis=(2, 3), keepdims=True)
        self.save(tuple(x.shape), y)
        return y

    def backward(self, dy):
        x_shape, y = self.saved()
        self.check_grad(dy, y)
        xp = backend.get_array_module(dy)
        dx = xp.empty(x_shape, dtype=dy.dtype)
        dx[...] = dy * dy.dtype.type(1.0 / (x_shape[2] * x_shape[3]))
        return dx


def _sum_taps(a, axis, k, s, n):
    """Sum over the k taps of each of the n windows along `axis` (a new array)."""
    total = _taps(a, axis, 0, s, n).copy()
    for j in range(1, k):
        total += _taps(a, axis, j, s, n)
    return total


def _spread(xp, d, shape, axis, k, s, n):
    """The transpose of _sum_taps: add d[.., o, ..] onto each of the k taps of window o."""
    out = xp.zeros(shape, dtype=d.dtype)
    for j in range(k):
        _taps(out, axis, j, s, n)[...] += d
    return out
