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
from .augment import random_resized_crop, rrc_boxes
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
    shifts: numpy.ndarray       # (n, 2) crop offsets (dy, dx) in 0..2*PAD into the padded image; None unless crop-flip
    flips: numpy.ndarray        # (n,) bool, flip horizontally; None without augment
    boxes: numpy.ndarray = None  # (n, 4) random-resized-crop boxes (top, left, h, w); None unless rrc-flip


def augment_kind(augment):
    """None, or which augmentation: True (the flag alone) is crop-flip (see augment.KINDS)."""
    return None if not augment else "crop-flip" if augment is True else augment


def epoch_plan(n, *, shuffle, seed, epoch, augment=False, image_size=None):
    """The shuffle order and augmentation draws for one epoch: a pure function of its arguments.
    augment: False, True or "crop-flip", or "rrc-flip" (which needs image_size (H, W))."""
    # Separate streams for order and augmentation, so turning shuffling off or on
    # does not change the crops and flips.
    order_rng = numpy.random.default_rng([seed, epoch, 0])
    aug_rng = numpy.random.default_rng([seed, epoch, 1])
    order = order_rng.permutation(n) if shuffle else numpy.arange(n)
    kind = augment_kind(augment)
    if kind is None:
        return EpochPlan(order, None, None)
    if kind == "rrc-flip":
        boxes = rrc_boxes(aug_rng, n, *image_size)
        return EpochPlan(order, None, aug_rng.random(n) < 0.5, boxes)
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


@dataclass
class HostBatch:
    """One batch as gathered on the host, before it crosses to the device."""
    x: numpy.ndarray            # images in their stored dtype
    y: numpy.ndarray            # int64 labels
    pos: slice                  # its positions in the epoch's plan


def iterate(x, y, batch_size, *, shuffle, seed, epoch, mean, std, augment=False,
            drop_last=False, skip=0, shard=None, prefetch=False, dtype=numpy.float32):
    """Yield (xb `dtype` (B, C, H, W), yb int64 (B,)) on backend.xp for one epoch.

    x, y: host (NumPy) arrays, images NCHW uint8 or float (x may be memory-mapped, or any
    array-like that gathers rows by an index array). mean, std: per channel (C,)
    or scalars, in the scaled-pixel units of stats.py. augment: False; True or "crop-flip":
    random crop with PAD zero padding plus random horizontal flip (meant for CIFAR-10);
    "rrc-flip": random-resized-crop plus flip (augment.py). skip: leave out the
    first batches without transferring them (resuming mid-epoch). shard=(rank, size): yield
    only that rank's `share` of each batch (data-parallel; it may be empty), with the
    same order and augmentation draws as the whole batch. prefetch: gather (and on CuPy,
    send) the next batch while the caller works on this one (prefetch.py); the batches
    are the same, bit for bit.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} samples but y has {len(y)}")
    plan = epoch_plan(n, shuffle=shuffle, seed=seed, epoch=epoch, augment=augment, image_size=tuple(x.shape[2:]))
    host = gather(x, y, plan, batch_size, drop_last=drop_last, skip=skip, shard=shard)
    finish = Finisher(plan, x.shape[1], x.dtype, mean, std, dtype)
    if prefetch:
        from .prefetch import prefetched

        return prefetched(host, finish)
    return (finish(backend.to_device(hb.x), hb) for hb in host)


def gather(x, y, plan, batch_size, *, drop_last=False, skip=0, shard=None):
    """The epoch's HostBatches, from batch `skip` on (host work only: safe in a thread)."""
    n = len(x)
    for k in range(skip, num_batches(n, batch_size, drop_last)):
        pos = slice(k * batch_size, min((k + 1) * batch_size, n))
        if shard is not None:
            lo, hi = share(pos.stop - pos.start, *shard)
            pos = slice(pos.start + lo, pos.start + hi)
        idx = plan.order[pos]
        yield HostBatch(x[idx], numpy.asarray(y[idx], numpy.int64), pos)


class Finisher:
    """Device batch -> (augmented, normalised xb of the net's float type, yb): the work done on the device."""

    def __init__(self, plan, channels, stored, mean, std, dtype=numpy.float32):
        self.plan, self.dtype = plan, numpy.dtype(dtype)
        std = numpy.broadcast_to(numpy.asarray(std, dtype=numpy.float64).reshape(-1), (channels,))
        mean = numpy.broadcast_to(numpy.asarray(mean, dtype=numpy.float64).reshape(-1), (channels,))
        # (x * scale - mean) / std folded into one multiply-add per element on the device.
        self.mul = backend.to_device((pixel_scale(stored) / std).reshape(1, -1, 1, 1), self.dtype)
        self.add = backend.to_device((-mean / std).reshape(1, -1, 1, 1), self.dtype)

    def __call__(self, xb, hb):
        """xb: hb.x on the device (stored dtype: uint8 crosses the bus at 1 byte/pixel)."""
        plan, pos = self.plan, hb.pos
        yb = backend.to_device(hb.y, numpy.int64)
        if plan.shifts is not None:
            xb = crop_flip(xb, backend.to_device(plan.shifts[pos]), backend.to_device(plan.flips[pos]))
        xb = xb.astype(self.dtype)
        if plan.boxes is not None:  # interpolates: on the scaled values, before the (affine) normalisation
            xb = random_resized_crop(xb, plan.boxes[pos], plan.flips[pos])
        return xb * self.mul + self.add, yb
