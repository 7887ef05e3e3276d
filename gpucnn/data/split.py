"""--val-split: a stratified, seeded part of the training split held out for validation.

The held-out rows are a pure function of (labels, fraction, seed), so every rank of an
mpirun job, a resumed run and `gpucnn eval` all draw the same ones. Within each class,
round(fraction * count) images are held out (at least one, and at least one is left to
train on; a class of one image stays in training). The images are not copied: the two
parts are `Rows` views that gather from the original array (a memory-mapped cache stays
on disk). mean/std are recomputed from the training part only, so nothing of the held-out
images leaks into the normalisation.
"""
import dataclasses

import numpy

from .datasets import Dataset
from .errors import DatasetError
from .stats import channel_stats

# the split's own random stream, apart from the (seed, epoch, k) streams of batches.py
_STREAM = 0x5911


class Rows:
    """Rows `index` of the array `base`, read on demand: what iterate(), evaluate() and
    channel_stats() need of an image array (len, shape, dtype, [slice], [int array])."""

    def __init__(self, base, index):
        self.base, self.index = base, numpy.asarray(index, dtype=numpy.int64)
        self.dtype = base.dtype
        self.shape = (len(self.index), *base.shape[1:])
        self.ndim = len(self.shape)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, tuple):  # rows first, then the rest on what they give
            return self[key[0]][(slice(None), *key[1:])]
        picked = self.index[key]
        if numpy.ndim(picked) == 0:
            return self.base[int(picked)]
        # Sorted reads are sequential on a memory map; the result comes back in the asked order.
        order = numpy.argsort(picked, kind="stable")
        out = numpy.empty((len(picked), *self.base.shape[1:]), dtype=self.dtype)
        out[order] = self.base[picked[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def check_fraction(fraction):
    """DatasetError unless 0 < fraction < 1 (None: no split)."""
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise DatasetError(f"--val-split must be a fraction between 0 and 1 (exclusive), got {fraction}")


def holdout(y, fraction, seed):
    """(train rows, held-out rows), each sorted: per class, round(fraction * count) held
    out (at least 1 and at most count - 1), drawn by a generator seeded by `seed`."""
    check_fraction(fraction)
    y = numpy.asarray(y)
    rng = numpy.random.default_rng([int(seed), _STREAM])
    held = []
    for c in numpy.unique(y):  # sorted classes: the draws do not depend on the order of the data
        rows = numpy.flatnonzero(y == c)
        k = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        held.append(rng.permutation(rows)[:k])
    held = numpy.sort(numpy.concatenate(held)) if held else numpy.zeros(0, numpy.int64)
    keep = numpy.ones(len(y), bool)
    keep[held] = False
    return numpy.flatnonzero(keep), held


@dataclasses.dataclass(eq=False, repr=False)
class Validated(Dataset):
    """A Dataset with a validation part (x_val, y_val), which fit() scores every epoch.
    `val_is_test`: the dataset has no test split, so x_test, y_test are the held-out part."""
    x_val: object = None
    y_val: numpy.ndarray = None
    fraction: float = None
    val_is_test: bool = False


def has_test_split(data):
    return len(data.y_test) > 0


def split(data, fraction, seed, stats=True):
    """`data` (a gpucnn.data.Dataset) with `fraction` of its training images held out.
    Without a test split, the held-out part stands in for it. stats=False keeps the
    dataset's mean/std instead of recomputing them from the training part (eval, which
    normalises with the checkpoint's, needs no pass over the images)."""
    train, held = holdout(data.y_train, fraction, seed)
    if len(held) == 0 or len(train) == 0:
        raise DatasetError(f"{data.name}: --val-split {fraction} of {len(data.y_train)} training images "
                           f"leaves nothing to hold out or nothing to train on")
    x_train, x_val = Rows(data.x_train, train), Rows(data.x_train, held)
    y_train, y_val = data.y_train[train], data.y_train[held]
    mean, std = channel_stats(x_train) if stats else (data.mean, data.std)
    empty_test = not has_test_split(data)
    return Validated(data.name, x_train, y_train, x_val if empty_test else data.x_test,
                     y_val if empty_test else data.y_test, list(data.classes), mean, std,
                     x_val=x_val, y_val=y_val, fraction=float(fraction), val_is_test=empty_test)


def prepare(data, fraction, seed):
    """What training runs on: `data` split when `fraction` is set; a DatasetError naming
    --val-split when the dataset has no test split and no fraction is given."""
    check_fraction(fraction)
    if fraction is None:
        if not has_test_split(data):
            raise DatasetError(f"{data.name}: the test split is empty (0 images); give --val-split FRACTION "
                               f"to hold out part of the training images to validate and test on")
        return data
    return split(data, fraction, seed)


def for_eval(data, config):
    """What `gpucnn eval` scores: the test split, or, for a dataset without one, the part
    the run held out (its saved --val-split and seed)."""
    if has_test_split(data) or not config.get("val_split"):
        return data, "test set"
    held = split(data, config["val_split"], config.get("seed", 0), stats=False)
    return held, f"held-out {config['val_split']:g} of the training images (no test split)"


def sizes(data):
    """'54,000 train / 6,000 val / 10,000 test' for the start-up line."""
    val = getattr(data, "y_val", None)
    if val is None:
        return f"{len(data.y_train):,} train / {len(data.y_test):,} test"
    test = "the held-out part as test" if data.val_is_test else f"{len(data.y_test):,} test"
    return f"{len(data.y_train):,} train / {len(val):,} val / {test}"
