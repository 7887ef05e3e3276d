"""2-D convolution (PyTorch's cross-correlation) as one matrix product each way.

    Y[n,o,i,j] = sum_{c,p,q} W[o,c,p,q] * Xpad[n,c,i*sh+p,j*sw+q] + b[o]
    H_out = floor((H + 2*ph - kh) / sh) + 1

The default lowering, im2col: with cols = im2col(X) of shape (K, N*Ho*Wo), K = C_in*kh*kw, and W_mat = W.reshape(C_out, K):

    forward   Y_mat = W_mat @ cols                          (C_out, N*Ho*Wo), then NCHW
    backward  dW = dY_mat @ cols^T     db = sum_{n,i,j} dY
              dcols = W_mat^T @ dY_mat, and col2im adds each dcols entry back onto the
              input pixel it was copied from: dX[n,c,h,w] = sum of dcols over every
              (o, p, q, i, j) with h = i*sh + p - ph and w = j*sw + q - pw.

Every sample's columns are independent, so the same formulas hold on any batch of whole
samples: over a batch too big for COLS_BUDGET_BYTES, forward and backward run chunk by
chunk, with dW and db summed over the chunks.

On NumPy, small narrow convolutions (LeNet's) take the banded lowering of banded.py
instead: the same convolution as one product of whole input rows with a banded kernel
matrix, which moves less memory for more (cheap) multiply-adds. `lowering` picks.
"""
import numpy

from gpucnn import backend, gemm, init
from gpucnn.layers import banded
from gpucnn.layers.base import Layer
from gpucnn.layers.im2col import col2im, cols_width, im2col, out_size

# The most bytes one forward keeps as cols for backward. Below it, cols is kept (no recompute:
# small nets such as LeNet lose no speed). Above it (vgg_bn at batch 256: 604 MB for one
# conv3x3 64->64), the batch runs in chunks of whole samples whose cols fit the budget and
# only x is kept; backward rebuilds each chunk's cols. What a conv keeps is then about what
# PyTorch keeps (its input), and cols (and dcols in backward) never exceed the budget, or one
# sample's cols where that alone is larger. A module constant so tests can shrink it.
COLS_BUDGET_BYTES = 96 << 20  # LeNet at batch 1024 (69 MB of cols) still fits

# OpenBLAS runs a product with a tiny result (6x25 for LeNet's first conv) but a long inner
# dimension (N*Ho*W ~ 86k) about 3x slower than the same work cut into pieces of a few
# thousand columns, batched in one matmul call; on larger results the pieces cost nothing.
# So NumPy products over cols go in groups of whole samples of at most this many columns.
# cuBLAS needs no such help: CuPy uses one 2-D product.
_GROUP_COLUMNS = 6144


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


# Cost model for choosing the lowering on NumPy: one float element written to memory and
# read back by later passes costs about as much as this many BLAS multiply-adds (fitted on
# the 2-core VM of docs/benchmarks.md: ~2 ns per im2col element over a step, ~125 GMAC/s).
_MOVE_COST_IN_MACS = 250


def banded_is_cheaper(c_in, c_out, kh, kw, wp, wc, wo):
    """Per output row: im2col moves C*kh*kw*Wc elements and runs 3 GEMMs of C_out MACs on
    each; banded moves C*kh*Wp elements and runs 3 GEMMs of C_out*Wo MACs on each."""
    im2col_elements, banded_elements = c_in * kh * kw * wc, c_in * kh * wp
    im2col_cost = im2col_elements * (_MOVE_COST_IN_MACS + 3 * c_out)
    banded_cost = banded_elements * (_MOVE_COST_IN_MACS + 3 * c_out * wo)
    return banded_cost < im2col_cost


class Conv2d(Layer):
    """`lowering` ("auto", "im2col" or "banded"; a class default an instance may override)
    picks how the convolution becomes a matrix product. auto: im2col on CuPy (the GPU path
    has kernels for it) and on NumPy where banded_is_cheaper says no or the banded rows
    would exceed COLS_BUDGET_BYTES; banded otherwise. Results agree to float rounding."""

    skips_input_grad = True
    lowering = "auto"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, dtype=None):
        super().__init__(dtype)
        for what, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, numpy.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Conv2d: {what} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = self.int_pair(kernel_size, "kernel_size")
        self.stride = self.int_pair(stride, "stride")
        self.padding = self.int_pair(padding, "padding", low=0)
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
        """Y = conv(X, W) + b through the chosen lowering, as a new (N, C_out, Ho, Wo) array
        (C-contiguous from im2col; in (N, Ho, C_out, Wo) memory order from banded)."""
        self.check_input(x, 4, self.in_channels)
        xp = backend.get_array_module(x)
        n, _, h, w = x.shape
        ho, wo = self.output_size(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"Conv2d: input of spatial size {h}x{w} with padding {self.padding} is smaller "
                f"than the kernel {self.kernel_size}"
            )
        if self._uses_banded(x, ho, wo):
            return self._forward_banded(x, ho, wo)
        kh, kw = self.kernel_size
        wc = cols_width(x, kw, self.stride[1], self.padding[1])
        sample_bytes = self.in_channels * kh * kw * ho * wc * self.dtype.itemsize
        fit = max(1, COLS_BUDGET_BYTES // sample_bytes)  # samples whose cols fit the budget
        chunks = max(1, -(-n // fit))  # ceil: as few chunks as the budget allows (one for an empty batch),
        chunk = -(-n // chunks)  # of near-equal size (no small last chunk); chunk <= fit
        y = xp.empty((n, self.out_channels, ho, wo), dtype=self.dtype)
        if chunk >= n:  # cols fits the budget: keep it
            self.save("im2col", tuple(x.shape), None, self._forward_chunk(x, y), y, chunk)
        else:
            for s in range(0, n, chunk):
                self._forward_chunk(x[s : s + chunk], y[s : s + chunk])
            self.save("im2col", tuple(x.shape), x, None, y, chunk)
        return y

    def _uses_banded(self, x, ho, wo):
        if self.lowering not in ("auto", "im2col", "banded"):
            raise ValueError(f"Conv2d: lowering must be 'auto', 'im2col' or 'banded', got {self.lowering!r}")
        on_gpu = backend.is_cupy_array(x)
        if on_gpu and self.lowering == "banded":
            raise ValueError("Conv2d: the banded lowering is NumPy-only; use 'auto' or 'im2col' on CuPy")
        if on_gpu or self.lowering != "auto":
            return self.lowering == "banded"
        (kh, kw), (_, sw), (_, pw) = self.kernel_size, self.stride, self.padding
        n, c, _, w = x.shape
        wp = w + 2 * pw
        rows_bytes = n * ho * (kh * c * wp + 1) * self.dtype.itemsize
        return rows_bytes <= COLS_BUDGET_BYTES and banded_is_cheaper(
            c, self.out_channels, kh, kw, wp, cols_width(x, kw, sw, pw), wo)

    def _forward_banded(self, x, ho, wo):
        """Y = rows(X) @ band(W, b), (N*Ho, C_out*Wo), returned as an NCHW view of itself.

        No copy to NCHW memory order: the layers after it keep the order they are given
        (see Layer), so the dY that comes back is in this same order and backward reads
        it as dY rows without a transpose either. Two copies of the activation saved.
        """
        (kh, _), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        bias = self.params.get("bias")
        r = banded.rows(x, kh, sh, ph, pw, ones=bias is not None)
        m = banded.band(self.params["weight"], bias, x.shape[3] + 2 * pw, wo, sw)
        y_rows = r @ m
        n = x.shape[0]
        y = y_rows.reshape(n, ho, self.out_channels, wo).transpose(0, 2, 1, 3)  # a view
        self.save("banded", tuple(x.shape), r, m, y)
        return y

    def _forward_chunk(self, x, y):
        """Write the convolution of x (whole samples) into y, its slice of the output; return cols."""
        xp = backend.get_array_module(x)
        n, o, ho, wo = y.shape
        cols = im2col(x, *self._geometry())  # (K, n, Ho, Wc); Wc may exceed Wo, see im2col.py
        wc = cols.shape[3]
        w_mat = self.params["weight"].reshape(o, -1)
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
        # (C_out, n, Ho, Wc) -> NCHW: one strided copy.
        y[...] = y_mat.reshape(o, n, ho, wc)[..., :wo].transpose(1, 0, 2, 3)
        return cols

    def backward(self, dy, input_grad=True):
        """dW = dY_mat @ cols^T, db = sum dY, dX = col2im(W_mat^T @ dY_mat), chunk by chunk
        (one chunk, with the cols forward kept, when they fit COLS_BUDGET_BYTES).

        input_grad=False skips dX (returns None): a net's first layer has no use for it.
        """
        if self.saved()[0] == "banded":
            return self._backward_banded(dy, input_grad)
        _, x_shape, x, cols, y, chunk = self.saved()
        self.check_grad(dy, y)
        xp = backend.get_array_module(dy)
        if cols is not None:  # kept by forward: one chunk
            dw_t, db, dx = self._backward_chunk(cols, dy, x_shape, input_grad)
        else:
            dx = xp.empty(x_shape, dtype=self.dtype) if input_grad else None
            for s in range(0, x_shape[0], chunk):
                x_part = x[s : s + chunk]
                dw_part, db_part, dx_part = self._backward_chunk(
                    im2col(x_part, *self._geometry()), dy[s : s + chunk], x_part.shape, input_grad)
                if s == 0:
                    dw_t, db = dw_part, db_part
                else:
                    dw_t += dw_part
                    if db is not None:
                        db += db_part
                if input_grad:
                    dx[s : s + chunk] = dx_part
        self.grads["weight"] = xp.ascontiguousarray(dw_t.T).reshape(self.params["weight"].shape)
        if db is not None:
            self.grads["bias"] = db
        return dx

    def _backward_banded(self, dy, input_grad):
        """d_band = rows^T @ dY -> dW, db; dX = rows_to_image(dY @ band^T)."""
        _, x_shape, r, m, y = self.saved()
        self.check_grad(dy, y)
        (kh, _), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        n, o, ho, wo = dy.shape
        # No copy when dy came back in forward's (N, Ho, C_out, Wo) memory order.
        dy_rows = numpy.ascontiguousarray(dy.transpose(0, 2, 1, 3)).reshape(n * ho, o * wo)
        with_bias = "bias" in self.params
        # OpenBLAS runs rows^T @ dY about 1.4x faster as (dY^T @ rows)^T when rows is no
        # wider than dY (LeNet's first conv, 141 vs 144 columns) and slower otherwise (its second).
        d_band = (dy_rows.T @ r).T if r.shape[1] <= dy_rows.shape[1] else r.T @ dy_rows
        dw, db = banded.band_grad(d_band, self.params["weight"].shape, x_shape[3] + 2 * pw, wo, sw, with_bias)
        self.grads["weight"] = dw
        if with_bias:
            self.grads["bias"] = db
        if not input_grad:
            return None
        k = m.shape[0] - with_bias
        return banded.rows_to_image(dy_rows @ m[:k].T, x_shape, kh, sh, ph, pw)

    def _backward_chunk(self, cols, dy, x_shape, input_grad):
        """dW^T (K, C_out), db (None without bias) and dX (None unless input_grad) of one chunk."""
        xp = backend.get_array_module(dy)
        o = self.out_channels
        k, n, ho, wc = cols.shape
        wo = dy.shape[3]
        # dY in cols' column order (C_out, n, Ho, Wc). Junk columns (Wc > Wo) must be zero:
        # then they add nothing to dW and leave zeros in dcols, as col2im requires.
        dy_mat = (xp.zeros if wc > wo else xp.empty)((o, n, ho, wc), dtype=self.dtype)
        dy_mat[..., :wo] = dy.transpose(1, 0, 2, 3)
        dy_mat = dy_mat.reshape(o, -1)
        cols_mat = cols.reshape(k, -1)
        db = None
        if "bias" in self.params:
            # sum over columns as a matrix-vector product: BLAS does it ~4x faster than .sum(axis=1)
            db = gemm.matmul(dy_mat, xp.ones((dy_mat.shape[1], 1), dtype=self.dtype)).reshape(o)
        # dW^T = cols @ dY^T (the faster orientation for OpenBLAS), summed over sample groups.
        groups = _groups(xp, n, ho * wc)
        if groups == 1:
            dw_t = gemm.matmul(cols_mat, dy_mat, trans_b=True)
        else:
            dw_t = xp.matmul(_split(cols_mat, groups), _split(dy_mat, groups).transpose(0, 2, 1)).sum(axis=0)
        if not input_grad:
            return dw_t, db, None
        dcols = gemm.matmul(self.params["weight"].reshape(o, k), dy_mat, trans_a=True)
        return dw_t, db, col2im(dcols.reshape(k, n, ho, wc), x_shape, *self._geometry())
