"""Any dataset saved as .npz with x_train, y_train, x_test, y_test (and optionally classes).

Image layouts accepted (N = number of images, C = channels, 1 or 3):
  (N, H, W)     grayscale, becomes (N, 1, H, W)
  (N, C, H, W)  used as is (tried first, so (N, 3, 32, 3) counts as NCHW)
  (N, H, W, C)  transposed to NCHW
Pixel values: uint8 (0..255) is kept as uint8; other integer types must hold 0..255 and
become uint8; floats become float32 and are taken as already scaled (typically 0..1),
so batches.iterate does not divide them by 255.
Float pixels must be finite: a NaN or infinity is named with its split and first image.
Labels: integers >= 0, checked in their stored dtype (labels.py). Class names come from an
optional `classes` array of strings, else they are "0", "1", ... up to the largest label.
The file is read by npzfile.read_npz: headers checked against the file before allocating,
no pickle, so an .npz can only hold plain arrays.
"""
import os

import numpy

from .errors import DatasetError, missing
from .labels import MAX_CLASSES, check_labels
from .npzfile import read_npz

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _images(path, key, x):
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        pass
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DatasetError(f"{path}: {key} has shape {x.shape}; expected (N,H,W), (N,C,H,W) "
                           f"or (N,H,W,C) with C = 1 or 3")
    if x.dtype == numpy.uint8:
        return numpy.ascontiguousarray(x)
    if numpy.issubdtype(x.dtype, numpy.floating):
        with numpy.errstate(over="ignore"):  # a float64 1e300 becomes inf: checked next
            x = numpy.ascontiguousarray(x, dtype=numpy.float32)
        _check_finite(path, key, x)
        return x
    if numpy.issubdtype(x.dtype, numpy.integer) or x.dtype == numpy.bool_:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"{path}: {key} is {x.dtype} with values outside 0..255")
        return numpy.ascontiguousarray(x, dtype=numpy.uint8)
    raise DatasetError(f"{path}: {key} has dtype {x.dtype}; expected integers 0..255 or floats")


def _check_finite(path, key, x, chunk=4096):
    """DatasetError naming the first image (and the count) with a NaN or infinite pixel."""
    first, count = None, 0
    for start in range(0, len(x), chunk):  # a chunk at a time: no full-size boolean copy
        part = x[start:start + chunk]
        bad = ~numpy.isfinite(part).reshape(len(part), -1).all(axis=1)
        if bad.any():
            first = start + int(numpy.argmax(bad)) if first is None else first
            count += int(bad.sum())
    if count:
        kind = "NaN" if numpy.isnan(x[first]).any() else "infinite"
        raise DatasetError(f"{path}: {key} image {first} has a {kind} pixel ({count} image(s) "
                           f"with NaN or infinite pixels in all); pixels must be finite numbers")


def load(path):
    """(x_train, y_train, x_test, y_test, classes) from an .npz file."""
    if not os.path.isfile(path):
        raise missing(path, ".npz file", hint="check the path")
    arrays = read_npz(path, error=DatasetError, keys=KEYS + ("classes",))
    absent = [k for k in KEYS if k not in arrays]
    if absent:
        raise DatasetError(f"{path}: missing key(s) {', '.join(absent)}; "
                           f"an .npz dataset needs {', '.join(KEYS)}")

    x_train = _images(path, "x_train", arrays["x_train"])
    x_test = _images(path, "x_test", arrays["x_test"])
    classes = None
    if "classes" in arrays:
        if arrays["classes"].size > MAX_CLASSES:
            raise DatasetError(f"{path}: classes holds {arrays['classes'].size:,} names; gpucnn trains "
                               f"at most {MAX_CLASSES:,} classes")
        classes = [str(c) for c in arrays["classes"].ravel()]
    n = None if classes is None else len(classes)
    y_train = check_labels(arrays["y_train"], path, "y_train", n)
    y_test = check_labels(arrays["y_test"], path, "y_test", n)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DatasetError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{path}: x_test images are {x_test.shape[1:]} (C,H,W) "
                           f"but x_train images are {x_train.shape[1:]}")
    if x_train.dtype != x_test.dtype:
        raise DatasetError(f"{path}: x_train is {x_train.dtype} but x_test is {x_test.dtype}; "
                           f"use one pixel scale for both")
    if classes is None:
        top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
        classes = [str(i) for i in range(top + 1)]
    return x_train, y_train, x_test, y_test, classes
