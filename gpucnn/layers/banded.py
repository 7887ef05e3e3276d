"""Banded lowering: a convolution as ONE product of input rows with a banded weight matrix.

im2col copies every (kh, kw) window (kh*kw copies of the input). Here only the kh input
rows under each output row are gathered, whole and padded; sliding along the width is
done by the weight matrix instead, which holds the kernel on a band (Toeplitz in w):

    rows[(n, i), (p, c, w)]  = Xpad[n, c, i*sh + p, w]                  (N*Ho, kh*C*Wp)
    band[(p, c, w), (o, j)]  = W[o, c, p, w - j*sw]  if 0 <= w - j*sw < kw, else 0
    Y[(n, i), (o, j)]        = rows @ band           -> (N, Ho, C_out, Wo) -> NCHW

    backward  d_band = rows^T @ dY          dW[o, c, p, q] = sum_j d_band[(p, c, j*sw + q), (o, j)]
              d_rows = dY @ band^T          dX[n, c, i*sh + p, w] += d_rows[(n, i), (p, c, w)]

The bias rides along as a column of ones in rows and a last band row b[o] (so db[o] is
the sum over j of that row of d_band). The product does about Wp/kw times im2col's
multiply-adds, most of them with the band's zeros, but moves kw times less data. For
narrow images with few channels (LeNet's 28 and 12 pixel inputs), where NumPy time goes
to moving memory rather than to BLAS, that is the cheaper trade; Conv2d decides per shape.
"""
import numpy
from numpy.lib.stride_tricks import as_strided

from gpucnn.layers.im2col import out_size


def _band_view(m, kh, c, kw, o, wp, wo, sw):
    """View of the band's nonzero diagonals inside m (kh*C*Wp, O*Wo): [p, c, q, o, j]."""
    e = m.itemsize
    ow = o * wo
    # (p, c, w = j*sw + q, o, j): w's stride is one band row, so moving j moves sw rows + 1 column
    strides = (c * wp * ow * e, wp * ow * e, ow * e, wo * e, (sw * ow + 1) * e)
    return as_strided(m, shape=(kh, c, kw, o, wo), strides=strides)


def band(weight, bias, wp, wo, sw):
    """(C_out, C, kh, kw) kernel (+ bias) -> the (kh*C*Wp [+1], C_out*Wo) band matrix."""
    o, c, kh, kw = weight.shape
    k = kh * c * wp
    m = numpy.zeros((k + (bias is not None), o * wo), weight.dtype)
    _band_view(m, kh, c, kw, o, wp, wo, sw)[...] = weight.transpose(2, 1, 3, 0)[..., None]
    if bias is not None:
        m[k] = numpy.repeat(bias, wo)  # column (o, j) -> b[o]
    return m


def band_grad(d_band, weight_shape, wp, wo, sw, with_bias):
    """Fold d_band back onto the kernel: dW (C_out, C, kh, kw) and db (or None)."""
    o, c, kh, kw = weight_shape
    k = kh * c * wp
    diagonals = _band_view(numpy.ascontiguousarray(d_band[:k]), kh, c, kw, o, wp, wo, sw)
    dw = diagonals.sum(axis=4).transpose(3, 1, 0, 2)  # [p, c, q, o] -> [o, c, p, q]
    db = d_band[k].reshape(o, wo).sum(axis=1) if with_bias else None
    return numpy.ascontiguousarray(dw), db


def rows(x, kh, sh, ph, pw, ones):
    """(N, C, H, W) in any memory order -> (N*Ho, kh*C*Wp [+1]): the padded input rows under
    each output row."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    ho = out_size(h, kh, sh, ph)
    if ph or pw:
        xpad = numpy.zeros((n, c, hp, wp), x.dtype)
        xpad[:, :, ph : ph + h, pw : pw + w] = x
    else:
        xpad = x
    k = kh * c * wp
    r = numpy.empty((n, ho, k + ones), x.dtype)
    s_n, s_c, s_h, s_w = xpad.strides  # x's own: it is read where it lies, in any order
    under = as_strided(xpad, shape=(n, ho, kh, c, wp), strides=(s_n, sh * s_h, s_h, s_c, s_w))
    r[..., :k].reshape(n, ho, kh, c, wp)[...] = under
    if ones:
        r[..., k] = 1
    return r.reshape(n * ho, k + ones)


def rows_to_image(d_rows, x_shape, kh, sh, ph, pw):
    """Adjoint of rows() (without the ones column): add each row entry back onto its pixel.
    Returns dX as an NCHW view in (N, H, C, W) memory order, the order the sums are made in."""
    n, c, h, w = x_shape
    hp, wp = h + 2 * ph, w + 2 * pw
    ho = out_size(h, kh, sh, ph)
    d = d_rows[:, : kh * c * wp].reshape(n, ho, kh, c * wp)
    # Accumulate in (N, Hp, C, Wp) order, where each kernel row p is one add of whole
    # (C*Wp)-long runs.
    acc = numpy.zeros((n, hp, c * wp), d_rows.dtype)
    for p in range(kh):
        acc[:, p : p + sh * (ho - 1) + 1 : sh] += d[:, :, p]
    acc = acc.reshape(n, hp, c, wp)[:, ph : ph + h, :, pw : pw + w]
    return acc.transpose(0, 2, 1, 3)
