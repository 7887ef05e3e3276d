"""Label checks, done on the labels as stored (their own dtype), before any conversion.

A label is a class index 0..N-1, and a net gets one output per class, so the class count
is bounded: MAX_CLASSES. Checking in the stored dtype matters: a uint64 2**64-1 is not
negative, and cast to int64 it would become -1, a silent wrong class.
"""
import numpy

from .errors import DatasetError

MAX_CLASSES = 100_000


def check_labels(labels, path, key="labels", num_classes=None):
    """DatasetError unless `labels` (1-d integers) are all in 0..num_classes-1; with
    num_classes None, in 0..MAX_CLASSES-1. Returns them as int64."""
    y = numpy.asarray(labels)
    if y.ndim != 1 or not numpy.issubdtype(y.dtype, numpy.integer):
        raise DatasetError(f"{path}: {key} must be a 1-d integer array, got {y.dtype} {y.shape}")
    limit = MAX_CLASSES if num_classes is None else num_classes
    if y.size:
        low, high = y.min(), y.max()  # in y's own dtype: exact for every integer type
        if int(low) < 0:
            i = int(numpy.argmax(y < 0))
            raise DatasetError(f"{path}: {key} has a negative label ({int(low)}) at index {i}")
        if int(high) >= limit:
            above = y >= limit  # numpy compares any integer dtype with a Python int exactly
            i = int(numpy.argmax(above))
            if num_classes is None:
                raise DatasetError(f"{path}: {key} has label {int(y[i])} at index {i}; a label is a class "
                                   f"index and gpucnn trains at most {MAX_CLASSES:,} classes (one output "
                                   f"each), so labels must be 0..{MAX_CLASSES - 1}")
            raise DatasetError(f"{path}: label {int(y[i])} at index {i}{f' of {key}' if key != 'labels' else ''} "
                               f"is out of range 0..{num_classes - 1} ({int(above.sum())} bad labels in all)")
    return y.astype(numpy.int64)
