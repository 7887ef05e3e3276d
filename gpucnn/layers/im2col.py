"""im2col / col2im: the data movement that turns a convolution into one matrix product.

    cols[k, n, i, j] = Xpad[n, c, i*sh + p, j*sw + q]      k = (c*kh + p)*kw + q

k runs over (c, p, q) in PyTorch's weight order, so `W.reshape(C_out, K) @ cols.reshape(K, -1)`
is the convolution, with its result already grouped by output channel. col2im is the
transpose: every cols entry is added back onto the input pixel it was copied from.

cols is returned as (K, N, Ho, Wc). On CuPy and for horizontal stride > 1, Wc = Wo. On NumPy
with horizontal stride 1, Wc is the padded input width Wp ("row-flat" layout): the last
Wp - Wo columns of each row are junk that callers ignore. In exchange, each (c, p, q) row of
cols is ONE shifted slice of the flattened padded input, so im2col is a single strided copy
and col2im mostly long 1-D adds, instead of tens of thousands of 24-element ones (NumPy pays
about 50-200 ns of overhead per inner row of a strided operation).
"""
import numpy
from numpy.lib.stride_tricks import as_strided

from gpucnn import backend, kernels


def out_size(size, k, s, p):
    """Output length of a window k, stride s, padding p over `size` inputs (may be < 1)."""
    return (size + 2 * p - k) // s + 1


def cols_width(x, kw, sw, pw):
    """Wc of im2col(x, ...)'s (K, N, Ho, Wc) result, known before building it."""
    row_flat = sw == 1 and not backend.is_cupy_array(x)
    return x.shape[3] + 2 * pw if row_flat else out_size(x.shape[3], kw, sw, pw)


def im2col(x, kh, kw, sh, sw, ph, pw):
    """(N, C, H, W) -> cols (C*kh*kw, N, Ho, Wc); see the module docstring for Wc."""
    if backend.is_cupy_array(x):
        return _im2col_cuda(x, kh, kw, sh, sw, ph, pw)
    return _im2col_numpy(x, kh, kw, sh, sw, ph, pw)


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of im2col: (K, N, Ho, Wc) -> dx of x_shape, summing overlapping windows.

    The junk columns j >= Wo of a row-flat cols must hold zeros (a gradient that is zero
    there, like W^T @ dY with dY zero-padded, gives that for free).
    """
    if backend.is_cupy_array(cols):
        return _col2im_cuda(cols, x_shape, kh, kw, sh, sw, ph, pw)
    return _col2im_numpy(cols, x_shape, kh, kw, sh, sw, ph, pw)


# --- NumPy --------------------------------------------------------------------------------


def _im2col_numpy(x, kh, kw, sh, sw, ph, pw):
    n, c, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wc = out_size(h, kh, sh, ph), cols_width(x, kw, sw, pw)
    # Padded copy of x in a flat buffer with a short zero tail: the junk columns of the very
    # last row read up to kw - 1 elements past the image (they read the next row elsewhere).
    flat = numpy.zeros(n * c * hp * wp + kw, x.dtype)
    flat[: n * c * hp * wp].reshape(n, c, hp, wp)[:, :, ph : ph + h, pw : pw + w] = x
    e = flat.itemsize
    windows = as_strided(
        flat,
        shape=(c, kh, kw, n, ho, wc),
        strides=(hp * wp * e, wp * e, e, c * hp * wp * e, sh * wp * e, sw * e),
        writeable=False,
    )
    return numpy.ascontiguousarray(windows).reshape(c * kh * kw, n, ho, wc)


def _col2im_numpy(cols, x_shape, kh, kw, sh, sw, ph, pw):
    n, c, h, w = x_shape
    hp, wp = h + 2 * ph, w + 2 * pw
    _, _, ho, wc = cols.shape
    dxp = numpy.zeros((n, c, hp, wp), cols.dtype)
    if sw == 1:
        # Row-flat: shifting by q columns is a 1-D shift of the flattened (n, i, j) rows, so
        # first sum the kw shifted taps of each (c, p) with long 1-D adds (junk, which is
        # zero, spills into the next row or the tail), then add each kernel row p into place.
        m = n * ho * wp
        taps = cols.reshape(c, kh, kw, m)
        rows = numpy.zeros((c, kh, m + kw), cols.dtype)
        for p in range(kh):  # p outermost: one (C, m) accumulator stays in cache for kw adds
            for q in range(kw):
                rows[:, p, q : q + m] += taps[:, p, q]
        rows = rows[:, :, :m].reshape(c, kh, n, ho, wp)
        for p in range(kh):
            dxp[:, :, p : p + sh * (ho - 1) + 1 : sh, :] += rows[:, p].transpose(1, 0, 2, 3)
    else:
        taps = cols.reshape(c, kh, kw, n, ho, wc).transpose(3, 0, 1, 2, 4, 5)  # (N, C, kh, kw, Ho, Wo)
        for p in range(kh):
            for q in range(kw):
                dxp[:, :, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wc - 1) + 1 : sw] += taps[:, :, p, q]
    if ph == 0 and pw == 0:
        return dxp
    return numpy.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w])


# --- CuPy: kernels/im2col.cu --------------------------------------------------------------


def _launch(name, dtype, total, args):
    kernels.launch("im2col.cu", name, dtype, total, args)


def _geometry(n, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw):
    return tuple(numpy.int32(v) for v in (n, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw))


def _im2col_cuda(x, kh, kw, sh, sw, ph, pw):
    cp = backend.cupy_module()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols = cp.empty((c * kh * kw, n, ho, wo), dtype=x.dtype)  # every element is written
    _launch("im2col", x.dtype, cols.size,
            (x, cols, numpy.int64(cols.size)) + _geometry(n, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw))
    return cols


def _col2im_cuda(cols, x_shape, kh, kw, sh, sw, ph, pw):
    cp = backend.cupy_module()
    cols = cp.ascontiguousarray(cols)
    n, c, h, w = x_shape
    _, _, ho, wo = cols.shape
    dx = cp.empty(tuple(x_shape), dtype=cols.dtype)  # the gather kernel writes every pixel
    _launch("col2im", cols.dtype, dx.size,
            (cols, dx, numpy.int64(dx.size)) + _geometry(n, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw))
    return dx
