"""Mini-batches on the live backend, normalised and (optionally) augmented on the device.

Reproducibility: every random choice of an epoch (the shuffle order, each image's crop
offset and flip) is drawn up front on the host from generators seeded by (seed, epoch)
alone. So the batches of an epoch do not depend on what ran before: a run resumed at
epoch e, batch k (skip=k) sees exactly the batches it would have seen, and the
NumPy and CuPy backends see the same images, crops and flips.

Transfer: each batch crosses to the device as it is stored (uint8 for image datasets, a
quarter of the bytes of float32) and is padded, cropped, flipped and normalised there.
Normalisation: xb = (x * scale - mean) / std with scale 1/255 for uint8 and 1 for float
images (see stats.py); mean and std are per channel.
"""
from dataclasses import dataclass

import numpy

from .. import backend
from .stats import pixel_scale

PAD = 4  # the usual CIFAR augmentation: 4 pixels of zero padding, then a random 32x32 crop


def num_batches(n, batch_size, drop_last=False):
    """How many batches iterate() yields for n samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def share(n, rank, size):
    """The [start, stop) of `rank`'s share of n samples among `size` ranks: contiguous,
    sizes differ by at most one, the first n % size ranks take the larger (array_split's rule)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass
class EpochPlan:
    """All of an epoch's randomness, indexed by position in the epoch (not by image)."""
    order: numpy.ndarray        # (n,) image index served at each position
    shifts: numpy.ndarray       # (n, 2) crop offsets (dy, dx) in 0..2*PAD into the padded image; None without augment
    flips: numpy.ndarray        # (n,) bool, flip horizontally; None without augment


def epoch_plan(n, *, shuffle, seed, epoch, augment=False):
    """The shuffle order and augmentation draws for one epoch: a pure function of its arguments."""
    # Separate streams for order and augmentation, so turning shuffling off or on
    # does not change the crops and flips.
    order_rng = numpy.random.default_rng([seed, epoch, 0])
    aug_rng = numpy.random.default_rng([seed, epoch, 1])
    order = order_rng.permutation(n) if shuffle else numpy.arange(n)
    if not augment:
        return EpochPlan(order, None, None)
    shifts = aug_rng.integers(0, 2 * PAD + 1, size=(n, 2))
    flips = aug_rng.random(n) < 0.5
    return EpochPlan(order, shifts, flips)


def crop_flip(xb, shifts, flips, pad=PAD):
    """Zero-pad each image by `pad`, take the HxW window at shifts[i], flip where flips[i].

    xb (B, C, H, W) and the plan arrays on the same backend. Vectorised: one gather with
    per-image row and column indices, no Python loop over images.
    """
    xp = backend.get_array_module(xb)
    b, c, h, w = xb.shape
    padded = xp.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=xb.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = xb
    rows = shifts[:, 0:1] + xp.arange(h)                     # (B, H) rows of `padded` to read
    cols = shifts[:, 1:2] + xp.arange(w)                     # (B, W)
    cols = xp.where(flips[:, None], cols[:, ::-1], cols)     # a flip reads the columns backwards
    return padded[xp.arange(b)[:, None, None, None], xp.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def iterate(x, y, batch_size, *, shuffle, seed, epoch, mean, std, augment=False,
            drop_last=False, skip=0, shard=None, dtype=numpy.float32):
    """Yield (xb `dtype` (B, C, H, W), yb int64 (B,)) on backend.xp for one epoch.

    x, y: host (NumPy) arrays, images NCHW uint8 or float. mean, std: per channel (C,)
    or scalars, in the scaled-pixel units of stats.py. augment: random crop with PAD
    zero padding plus random horizontal flip (meant for CIFAR-10). skip: leave out the
    first batches without transferring them (resuming mid-epoch). shard=(rank, size): yield
    only that rank's `share` of each batch (data-parallel; it may be empty), with the
    same order and augmentation draws as the whole batch.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} samples but y has {len(y)}")
    total = num_batches(n, batch_size, drop_last)
    plan = epoch_plan(n, shuffle=shuffle, seed=seed, epoch=epoch, augment=augment)
    channels = x.shape[1]
    std = numpy.broadcast_to(numpy.asarray(std, dtype=numpy.float64).reshape(-1), (channels,))
    mean = numpy.broadcast_to(numpy.asarray(mean, dtype=numpy.float64).reshape(-1), (channels,))
    # (x * scale - mean) / std folded into one multiply-add per element on the device.
    mul = backend.to_device((pixel_scale(x.dtype) / std).reshape(1, -1, 1, 1), dtype)
    add = backend.to_device((-mean / std).reshape(1, -1, 1, 1), dtype)
    for k in range(skip, total):
        pos = slice(k * batch_size, min((k + 1) * batch_size, n))
        if shard is not None:
            lo, hi = share(pos.stop - pos.start, *shard)
            pos = slice(pos.start + lo, pos.start + hi)
        idx = plan.order[pos]
        xb = backend.to_device(x[idx])  # stored dtype: uint8 crosses the bus at 1 byte/pixel
        yb = backend.to_device(y[idx], numpy.int64)
        if augment:
            xb = crop_flip(xb, backend.to_device(plan.shifts[pos]), backend.to_device(plan.flips[pos]))
        yield xb.astype(dtype) * mul + add, yb
