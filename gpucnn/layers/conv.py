"""2-D convolution (PyTorch's cross-correlation) as im2col + one matrix product each way.

    Y[n,o,i,j] = sum_{c,p,q} W[o,c,p,q] * Xpad[n,c,i*sh+p,j*sw+q] + b[o]
    H_out = floor((H + 2*ph - kh) / sh) + 1

With cols = im2col(X) of shape (K, N*Ho*Wo), K = C_in*kh*kw, and W_mat = W.reshape(C_out, K):

    forward   Y_mat = W_mat @ cols                          (C_out, N*Ho*Wo), then NCHW
    backward  dW = dY_mat @ cols^T     db = sum_{n,i,j} dY
              dcols = W_mat^T @ dY_mat, and col2im adds each dcols entry back onto the
              input pixel it was copied from: dX[n,c,h,w] = sum of dcols over every
              (o, p, q, i, j) with h = i*sh + p - ph and w = j*sw + q - pw.
"""
import numpy

from gpucnn import backend, gemm, init
from gpucnn.layers.base import Layer
from gpucnn.layers.im2col import col2im, im2col, out_size

# OpenBLAS runs a product with a tiny result (6x25 for LeNet's first conv) but a long inner
# dimension (N*Ho*W ~ 86k) about 3x slower than the same work cut into pieces of a few
# thousand columns, batched in one matmul call; on larger results the pieces cost nothing.
# So NumPy products over cols go in groups of whole samples of at most this many columns.
# cuBLAS needs no such help: CuPy uses one 2-D product.
_GROUP_COLUMNS = 6144


def _pair(v, what, low):
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or not all(
        isinstance(p, (int, numpy.integer)) and not isinstance(p, bool) and p >= low for p in pair
    ):
        kind = "positive" if low >= 1 else "non-negative"
        raise ValueError(f"Conv2d: {what} must be a {kind} int or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def _groups(xp, n, columns_per_sample):
    """How many groups of whole samples to cut the N*L columns into (1 on CuPy)."""
    if xp is not numpy or n <= 1:
        return 1
    per_group = max(1, _GROUP_COLUMNS // columns_per_sample)
    samples = max(d for d in range(1, min(n, per_group) + 1) if n % d == 0)  # equal groups
    return n // samples


def _split(m, groups):
    """View a (rows, groups*M) matrix as a stack of `groups` (rows, M) blocks (no copy)."""
    return m.reshape(m.shape[0], groups, -1).transpose(1, 0, 2)


class Conv2d(Layer):
    skips_input_grad = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, dtype=None):
        super().__init__(dtype)
        for what, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, numpy.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Conv2d: {what} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.params["weight"] = init.uniform_fan_in((out_channels, in_channels, kh, kw), fan_in, self.dtype)
        if bias:
            self.params["bias"] = init.uniform_fan_in((out_channels,), fan_in, self.dtype)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if "bias" not in self.params:
            s += ", bias=False"
        return s

    def output_size(self, h, w):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)

    def _geometry(self):
        return (*self.kernel_size, *self.stride, *self.padding)

    def forward(self, x):
        """Y = W_mat @ im2col(X) + b, returned as a fresh (N, C_out, Ho, Wo) array."""
        self.check_input(x, 4, self.in_channels)
        xp = backend.get_array_module(x)
        n, _, h, w = x.shape
        ho, wo = self.output_size(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"Conv2d: input of spatial size {h}x{w} with padding {self.padding} is smaller "
                f"than the kernel {self.kernel_size}"
            )
        weight = self.params["weight"]
        o = self.out_channels
        cols = im2col(x, *self._geometry())  # (K, N, Ho, Wc); Wc may exceed Wo, see im2col.py
        wc = cols.shape[3]
        w_mat = weight.reshape(o, -1)
        cols_mat = cols.reshape(cols.shape[0], -1)
        groups = _groups(xp, n, ho * wc)
        if groups == 1:
            y_mat = gemm.matmul(w_mat, cols_mat)
        else:
            y_mat = xp.empty((o, cols_mat.shape[1]), dtype=self.dtype)
            xp.matmul(w_mat, _split(cols_mat, groups), out=_split(y_mat, groups))
        if "bias" in self.params:
            # Here, not on y: C_out long rows make a far faster NumPy add than N*C_out short ones.
            y_mat += self.params["bias"].reshape(o, 1)
        # (C_out, N, Ho, Wc) -> NCHW: one strided copy.
        y = xp.empty((n, o, ho, wo), dtype=self.dtype)
        y[...] = y_mat.reshape(o, n, ho, wc)[..., :wo].transpose(1, 0, 2, 3)
        self.save(tuple(x.shape), cols, y, groups)
        return y

    def backward(self, dy, input_grad=True):
        """dW = dY_mat @ cols^T, db = sum dY, dX = col2im(W_mat^T @ dY_mat).

        input_grad=False skips dX (returns None): a net's first layer has no use for it.
        """
        x_shape, cols, y, groups = self.saved()
        self.check_grad(dy, y)
        xp = backend.get_array_module(dy)
        o, n = self.out_channels, x_shape[0]
        k, _, ho, wc = cols.shape
        wo = y.shape[3]
        weight = self.params["weight"]
        # dY in cols' column order (C_out, N, Ho, Wc). Junk columns (Wc > Wo) must be zero:
        # then they add nothing to dW and leave zeros in dcols, as col2im requires.
        dy_mat = (xp.zeros if wc > wo else xp.empty)((o, n, ho, wc), dtype=self.dtype)
        dy_mat[..., :wo] = dy.transpose(1, 0, 2, 3)
        dy_mat = dy_mat.reshape(o, -1)
        cols_mat = cols.reshape(k, -1)
        if "bias" in self.params:
            # sum over columns as a matrix-vector product: BLAS does it ~4x faster than .sum(axis=1)
            self.grads["bias"] = gemm.matmul(dy_mat, xp.ones((dy_mat.shape[1], 1), dtype=self.dtype)).reshape(o)
        # dW^T = cols @ dY^T (the faster orientation for OpenBLAS), summed over sample groups.
        if groups == 1:
            dw_t = gemm.matmul(cols_mat, dy_mat, trans_b=True)
        else:
            dw_t = xp.matmul(_split(cols_mat, groups), _split(dy_mat, groups).transpose(0, 2, 1)).sum(axis=0)
        self.grads["weight"] = xp.ascontiguousarray(dw_t.T).reshape(weight.shape)
        if not input_grad:
            return None
        dcols = gemm.matmul(weight.reshape(o, k), dy_mat, trans_a=True)
        return col2im(dcols.reshape(k, n, ho, wc), x_shape, *self._geometry())

