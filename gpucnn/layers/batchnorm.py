"""Batch normalisation over the channels of an NCHW input.

Per channel c, over the M = N*H*W values of that channel:

    mean_c = sum(x) / M,   var_c = sum((x - mean_c)^2) / M        (biased: used to normalise)
    xhat = (x - mean_c) / sqrt(var_c + eps),   y = gamma_c * xhat + beta_c

Training uses the batch's mean_c/var_c and updates the running statistics like PyTorch:
running = (1 - momentum) * running + momentum * batch, with the UNBIASED variance
var_c * M / (M - 1) for running_var. Eval normalises with the running statistics.

Backward (training), with both statistics depending on x:

    dbeta  = sum(dy),   dgamma = sum(dy * xhat)
    dx = gamma * invstd / M * (M * dy - dbeta - xhat * dgamma)

In eval the statistics are constants, so dx = gamma * invstd * dy.

Synchronised (data-parallel --sync-bn): set `reduce` to an in-place sum over ranks. Then
M, sum(x) and sum(x^2) (float64) are summed over the ranks before mean_c and var_c
(var_c = sum(x^2) / M - mean_c^2; see _global_stats for what that costs in accuracy), and
dbeta, dgamma before dx, so every rank normalises with the global batch's statistics and
gets dx as one process would. The layer's own grads stay this rank's part of the sums
(the trainer sums gradients over ranks afterwards).

affine=False: no learned gamma, beta (gamma = 1, beta = 0, no "weight"/"bias" keys, as in
PyTorch). zero_init=True starts gamma at 0, for the last BatchNorm of a residual branch:
each block then starts as its shortcut (torchvision's zero_init_residual).
"""
import functools

import numpy

from gpucnn import backend, kernels
from gpucnn.layers.base import Layer

_AXES = (0, 2, 3)  # every axis but the channel axis
_BN_THREADS = 256  # must equal BN_THREADS in kernels/batchnorm.cu


class BatchNorm2d(Layer):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, zero_init=False, dtype=None):
        super().__init__(dtype)
        if not isinstance(num_features, (int, numpy.integer)) or num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be a positive int, got {num_features!r}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNorm2d: momentum must be in [0, 1], got {momentum!r}")
        if not float(eps) > 0.0:
            raise ValueError(f"BatchNorm2d: eps must be positive, got {eps!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.reduce = None  # sync-BN: an in-place sum over ranks (see the module docstring)
        c = self.num_features
        if zero_init and not affine:
            raise ValueError("BatchNorm2d: zero_init needs affine=True (there is no weight to zero)")
        self.affine = bool(affine)
        gamma_beta = {
            "weight": backend.to_device(numpy.full(c, 0.0 if zero_init else 1.0), dtype=self.dtype),
            "bias": backend.to_device(numpy.zeros(c), dtype=self.dtype),
        }
        # Without affine, gamma = 1 and beta = 0 stay constants outside params: not learned, not saved.
        self.params, self._fixed = (gamma_beta, {}) if self.affine else ({}, gamma_beta)
        self.buffers = {
            "running_mean": backend.to_device(numpy.zeros(c), dtype=self.dtype),
            "running_var": backend.to_device(numpy.ones(c), dtype=self.dtype),
            # A 0-d int64 array, so state_dict keys and dtypes are PyTorch's.
            "num_batches_tracked": backend.to_device(numpy.array(0, dtype=numpy.int64)),
        }

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}" + ("" if self.affine else ", affine=False")

    def _buffer(name):
        """A property reading buffers[name]; setting it copies in place, because optimisers,
        state_dict loading and captured CUDA graphs hold that very array."""

        def set_buffer(self, value):
            buf = self.buffers[name]
            buf[...] = backend.get_array_module(buf).asarray(value, dtype=buf.dtype)

        return property(lambda self: self.buffers[name], set_buffer)

    running_mean = _buffer("running_mean")
    running_var = _buffer("running_var")
    del _buffer

    def forward(self, x):
        self.check_input(x, 4, channels=self.num_features)
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        m = n * h * w
        gamma, beta = self.gamma_beta()
        centred = None
        if not self.training:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        elif self.reduce is not None:
            mean, var, m = _global_stats(x, self.reduce)  # m: the global count, on the device
            self._track(mean, var, m)
        elif m == 0:  # an empty data-parallel share: nothing to learn from
            mean, var = xp.zeros_like(gamma), xp.ones_like(gamma)
        else:
            if m == 1:
                raise ValueError(
                    f"BatchNorm2d: expected more than 1 value per channel when training, got input of "
                    f"shape {tuple(x.shape)}"
                )
            mean, var, centred = _batch_stats(x)
            self._track(mean, var, m)
        invstd = 1 / xp.sqrt(var + self.eps)
        if backend.is_cupy_array(x):
            x = xp.ascontiguousarray(x)
            y = xp.empty_like(x)
            _elementwise("bn_normalize", (x, mean, invstd, gamma, beta, y), x.shape)
            self.save(self.training, x, None, mean, invstd, y)
        else:
            # Two new arrays (xhat, kept for backward, and y), the rest in place: on NumPy
            # each new activation-sized array costs a pass over memory of its own.
            xhat = x - mean[:, None, None] if centred is None else centred
            xhat *= invstd[:, None, None]
            y = xhat * gamma[:, None, None]
            y += beta[:, None, None]
            self.save(self.training, None, xhat, mean, invstd, y)
        return y

    def backward(self, dy):
        training, x, xhat, mean, invstd, y = self.saved()
        self.check_grad(dy, y)
        gamma = self.gamma_beta()[0]
        n, c, h, w = dy.shape
        m = n * h * w
        on_gpu = backend.is_cupy_array(dy)
        if on_gpu:
            dy = backend.cupy_module().ascontiguousarray(dy)
            sum_dy, sum_dy_xhat = _channel_sums_cuda(dy, x, mean, invstd)
        else:
            sum_dy = dy.sum(axis=_AXES)
            sum_dy_xhat = _channel_dot(dy, xhat)
        self.grads = {"weight": sum_dy_xhat, "bias": sum_dy} if self.affine else {}
        if training and self.reduce is not None:  # dx needs the global sums (over M values)
            sum_dy, sum_dy_xhat, m = _global_means(sum_dy, sum_dy_xhat, self._count, self.reduce)
        if on_gpu:
            dx = backend.cupy_module().empty_like(dy)
            if training:
                # m = 0: an empty data-parallel share (nothing to compute, but 1 / 0 would raise)
                inv_m = dy.dtype.type(1.0 / m if m else 0.0)
                _elementwise("bn_dx_train", (x, dy, mean, invstd, gamma, sum_dy, sum_dy_xhat, inv_m, dx), dy.shape)
            else:
                _elementwise("bn_dx_eval", (dy, invstd, gamma, dx), dy.shape)
        else:
            scale = gamma * invstd
            dx = dy * scale[:, None, None]
            if training and m:  # dx = scale * dy - (scale / M) * (sum_dy + xhat * sum_dy_xhat)
                dx -= xhat * (scale * sum_dy_xhat / m)[:, None, None]
                dx -= (scale * sum_dy / m)[:, None, None]
        return dx

    def _track(self, mean, var, m):
        """Fold a training batch's statistics (over m values) into the running ones."""
        self._count = m
        mom = self.momentum
        # In place, without reading values back to the host (CUDA-graph safe).
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm[...] = (1 - mom) * rm + mom * mean
        rv[...] = (1 - mom) * rv + (mom * m / (m - 1)) * var
        self.buffers["num_batches_tracked"] += 1

    def gamma_beta(self):
        """(gamma, beta): the learned pair, or the constants 1 and 0 with affine=False."""
        store = self.params if self.affine else self._fixed
        return store["weight"], store["bias"]


def _global_stats(x, reduce):
    """Per-channel mean and biased variance of the global batch, and its count M (a 0-d
    float64 device array): sum(x), sum(x^2) and M, summed over ranks by `reduce` (one
    collective), then var = sum(x^2) / M - mean^2. The sums are float64 with every square
    exact (a float32's square fits a double), so only the float64 additions round; the
    difference then cancels about (mean / std)^2 of the digits. Measured on float32 data
    (8x12x12 values a channel) against a float64 two-pass variance: relative error 7e-9 at
    |mean| / std = 3000, 2e-8 at 1e4 (both below float32's rounding of the result, 6e-8),
    1e-5 at 1e5. The single-process path (_batch_stats) has no such cancellation."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    sums = xp.empty(2 * c + 1, dtype=xp.float64)
    _sum_and_sum_of_squares(x, sums[:c], sums[c:2 * c])
    sums[2 * c] = n * h * w
    reduce(sums)
    m = sums[2 * c]
    mean = sums[:c] / m
    var = xp.maximum(sums[c:2 * c] / m - mean * mean, 0.0)
    return mean.astype(x.dtype), var.astype(x.dtype), m


def _sum_and_sum_of_squares(x, out_sum, out_sumsq):
    """sum(x) and sum(x^2) per channel into the float64 arrays out_sum, out_sumsq: one pass
    over x, no array of x's size made (on CuPy, kernels/batchnorm.cu's partial sums)."""
    if not backend.is_cupy_array(x):
        out_sum[...] = x.sum(axis=_AXES, dtype=numpy.float64)
        out_sumsq[...] = numpy.einsum("nchw,nchw->c", x, x, dtype=numpy.float64)
        return
    cp = backend.cupy_module()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    splits = _splits(n * h * w, c)
    partial_sum, partial_sumsq = cp.empty((c, splits), dtype=cp.float64), cp.empty((c, splits), dtype=cp.float64)
    _kernel("bn_partial_sum_sumsq", x.dtype)(
        (splits, c), (_BN_THREADS,), (x, partial_sum, partial_sumsq) + _geometry(x.shape))
    partial_sum.sum(axis=1, out=out_sum)
    partial_sumsq.sum(axis=1, out=out_sumsq)


def _global_means(sum_dy, sum_dy_xhat, count, reduce):
    """(sum(dy) / M, sum(dy * xhat) / M, 1) over the global batch: the sums dx needs, already
    divided by the global count, so the formula runs on with M = 1."""
    xp = backend.get_array_module(sum_dy)
    c = sum_dy.shape[0]
    sums = xp.empty(2 * c, dtype=xp.float64)
    sums[:c], sums[c:] = sum_dy, sum_dy_xhat
    reduce(sums)
    sums /= count
    return sums[:c].astype(sum_dy.dtype), sums[c:].astype(sum_dy.dtype), 1


def _batch_stats(x):
    """Per-channel mean and biased variance, two-pass (no E[x^2] - E[x]^2 cancellation),
    and on NumPy the centred x - mean it made on the way (None on CuPy)."""
    if backend.is_cupy_array(x):
        cp = backend.cupy_module()
        x = cp.ascontiguousarray(x)
        n, c, h, w = x.shape
        mean, var = cp.empty(c, dtype=x.dtype), cp.empty(c, dtype=x.dtype)
        mu, var_acc = cp.empty(c, dtype=cp.float64), cp.empty(c, dtype=cp.float64)
        splits = _splits(n * h * w, c)
        partial = cp.empty((c, splits), dtype=cp.float64)
        shape, finish = _geometry(x.shape), _kernel("bn_finish", x.dtype)
        inv_m = numpy.float64(1.0 / (n * h * w))
        # mu is not read by bn_partial_sum; bn_finish then fills it for bn_partial_sqdev.
        _kernel("bn_partial_sum", x.dtype)((splits, c), (_BN_THREADS,), (x, mu, partial) + shape)
        finish((c,), (_BN_THREADS,), (partial, numpy.int64(splits), inv_m, mu, mean))
        _kernel("bn_partial_sqdev", x.dtype)((splits, c), (_BN_THREADS,), (x, mu, partial) + shape)
        finish((c,), (_BN_THREADS,), (partial, numpy.int64(splits), inv_m, var_acc, var))
        return mean, var, None
    mean = x.mean(axis=_AXES)
    centred = x - mean[:, None, None]
    var = _channel_dot(centred, centred) / (x.size // x.shape[1])
    return mean, var, centred


def _channel_dot(a, b):
    """sum over n, h, w of a * b, per channel, without the product array (NumPy: 4x faster
    than (a * b).sum, and as accurate: einsum sums in SIMD partial sums too)."""
    return numpy.einsum("nchw,nchw->c", a, b)


def _channel_sums_cuda(dy, x, mean, invstd):
    """sum(dy) and sum(dy * xhat) per channel (kernels/batchnorm.cu, partial sums then finish)."""
    cp = backend.cupy_module()
    n, c, h, w = dy.shape
    sum_dy, sum_dy_xhat = cp.empty(c, dtype=dy.dtype), cp.empty(c, dtype=dy.dtype)
    splits = _splits(n * h * w, c)
    partial_dy, partial_dy_xmu = cp.empty((c, splits), dtype=cp.float64), cp.empty((c, splits), dtype=cp.float64)
    _kernel("bn_backward_partial", dy.dtype)(
        (splits, c), (_BN_THREADS,), (dy, x, mean, partial_dy, partial_dy_xmu) + _geometry(dy.shape))
    _kernel("bn_backward_finish", dy.dtype)(
        (c,), (_BN_THREADS,), (partial_dy, partial_dy_xmu, numpy.int64(splits), invstd, sum_dy, sum_dy_xhat))
    return sum_dy, sum_dy_xhat


def _kernel(name, dtype):
    return kernels.get("batchnorm.cu", name, dtype)


def _geometry(shape):
    n, c, h, w = shape
    return numpy.int64(n), numpy.int64(c), numpy.int64(h * w)


# A reduction's blocks per channel (S). One block per channel would leave most of a large
# GPU idle when C is small (vgg_bn's 64 channels on 132 SMs); instead, aim for this many
# blocks per SM in all, while giving each block at least this many values per thread.
_BLOCKS_PER_SM = 4
_MIN_VALUES_PER_THREAD = 8
_MAX_SPLITS = 1024


def splits_for(m, channels, sm_count):
    """How many blocks share each channel's m values (1 when m or the device is small)."""
    wanted = -(-_BLOCKS_PER_SM * sm_count // channels)
    worth = m // (_BN_THREADS * _MIN_VALUES_PER_THREAD)
    return max(1, min(wanted, worth, _MAX_SPLITS))


def _splits(m, channels):
    return splits_for(m, channels, _sm_count(backend.cupy_module().cuda.Device().id))


@functools.lru_cache(maxsize=None)
def _sm_count(device_id):
    return backend.cupy_module().cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"]


def _elementwise(name, args, shape):
    """One of kernels/batchnorm_elementwise.cu's kernels over an NCHW array of `shape`."""
    n, c, h, w = shape
    total = n * c * h * w
    kernels.launch("batchnorm_elementwise.cu", name, args[0].dtype, total,
                   args + (numpy.int64(total), numpy.int64(h * w), numpy.int64(c)))
