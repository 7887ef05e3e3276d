"""Dropout with inverted scaling; its mask is a pure function of (seed, draw, element).

    training:  y = x * m / (1 - p),  m[i] = 1 if u(seed, draw, i) >= p else 0
    eval:      y = x                         backward: dx = dy * m / (1 - p) (eval: dy)

u is a counter-based hash (SplitMix64's finaliser) of the layer's seed, the draw number and
the element's flat index, mapped to [0, 1) in steps of 2^-32: computed with whole-array
integer operations on the array's own device, so nothing is drawn on the host, nothing is
read back, and no generator state is kept beyond `draws`, a 0-d int64 device array that
each training forward reads and then increments in place. A CUDA graph that captured one
step therefore replays with the draw number the array holds at replay time, a fresh mask
each step, and a run resumed at global step t sets `draws` to t (see `set_draws`) and
draws exactly the masks the straight run drew. Data-parallel, the element index counts from
the rank's first row in the global batch (`first_row`), so the ranks' masks are the slices of
the one process's mask, not one mask repeated on every rank. `seed` is a host int, fixed when the layer
is made (drawn from gpucnn.init's seeded generator unless given), baked into a captured graph.
"""
import numpy

from gpucnn import backend, init
from gpucnn.layers.base import Layer

_U64 = numpy.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def _mix(z):
    """SplitMix64's finaliser: a bijection of uint64 that scrambles every input bit."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def keep_mask(seed, draws, shape, p, xp, first_row=None):
    """Boolean mask (True = kept) of `shape` for this seed and draw number (a device array).
    `first_row` (a device array): the batch is rows first_row.. of a larger one, whose mask
    this is the slice of (a data-parallel rank's share of the global batch)."""
    n = int(numpy.prod(shape))
    # 1-element arrays, not 0-d: NumPy's scalar arithmetic would warn on the intended wrap-around.
    key = _mix(draws.reshape(1).astype(xp.uint64) * _GOLDEN + _U64(seed % 2**64))
    index = xp.arange(n, dtype=xp.uint64)
    if first_row is not None and n:
        index += first_row.reshape(1).astype(xp.uint64) * _U64(n // shape[0])
    bits = _mix(index * _GOLDEN ^ _mix(key))
    threshold = _U64(min(int(round(p * 2**32)), 2**32))
    return ((bits >> _U64(32)) >= threshold).reshape(shape)


class Dropout(Layer):
    def __init__(self, p=0.5, seed=None, dtype=None):
        super().__init__(dtype)
        if isinstance(p, bool) or not isinstance(p, (int, float, numpy.floating)) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = int(init.integer_seed() if seed is None else seed)
        self.draws = backend.to_device(numpy.array(0, dtype=numpy.int64))
        # Data-parallel: where this rank's share starts in the global batch (the trainer sets it).
        self.first_row = backend.to_device(numpy.array(0, dtype=numpy.int64))

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        self.check_input(x)
        if not self.training or self.p == 0.0:
            self.save(None, x)
            return x
        xp = backend.get_array_module(x)
        mask = keep_mask(self.seed, self.draws, x.shape, self.p, xp, self.first_row).astype(x.dtype)
        mask *= x.dtype.type(1.0 / (1.0 - self.p))
        self.draws += 1  # in place, on the device: a graph replay advances it too
        y = x * mask
        self.save(mask, y)
        return y

    def backward(self, dy):
        mask, y = self.saved()
        self.check_grad(dy, y)
        return dy if mask is None else dy * mask


def set_draws(layers, draws):
    """Set every Dropout among `layers` to draw number `draws` (the global step: a resumed run
    continues the masks of the straight run), in place."""
    for layer in layers:
        if isinstance(layer, Dropout):
            layer.draws[...] = draws
