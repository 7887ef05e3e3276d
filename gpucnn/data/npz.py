"""Any dataset saved as .npz with x_train, y_train, x_test, y_test (and optionally classes).

Image layouts accepted (N = number of images, C = channels, 1 or 3):
  (N, H, W)     grayscale, becomes (N, 1, H, W)
  (N, C, H, W)  used as is (tried first, so (N, 3, 32, 3) counts as NCHW)
  (N, H, W, C)  transposed to NCHW
Pixel values: uint8 (0..255) is kept as uint8; other integer types must hold 0..255 and
become uint8; floats become float32 and are taken as already scaled (typically 0..1),
so batches.iterate does not divide them by 255.
Labels: integers >= 0. Class names come from an optional `classes` array of strings,
else they are "0", "1", ... up to the largest label.
The file is opened with allow_pickle=False: an .npz can then only hold plain arrays.
"""
import os
import zipfile

import numpy

from .errors import DatasetError, missing

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
        return numpy.ascontiguousarray(x, dtype=numpy.float32)
    if numpy.issubdtype(x.dtype, numpy.integer) or x.dtype == numpy.bool_:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"{path}: {key} is {x.dtype} with values outside 0..255")
        return numpy.ascontiguousarray(x, dtype=numpy.uint8)
    raise DatasetError(f"{path}: {key} has dtype {x.dtype}; expected integers 0..255 or floats")


def _labels(path, key, y):
    if y.ndim != 1 or not numpy.issubdtype(y.dtype, numpy.integer):
        raise DatasetError(f"{path}: {key} must be a 1-d integer array, got {y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise DatasetError(f"{path}: {key} has a negative label ({int(y.min())})")
    return y.astype(numpy.int64)


def load(path):
    """(x_train, y_train, x_test, y_test, classes) from an .npz file."""
    if not os.path.isfile(path):
        raise missing(path, ".npz file", hint="check the path")
    try:
        with numpy.load(path, allow_pickle=False) as f:
            absent = [k for k in KEYS if k not in f.files]
            if absent:
                raise DatasetError(f"{path}: missing key(s) {', '.join(absent)}; "
                                   f"an .npz dataset needs {', '.join(KEYS)}")
            arrays = {k: f[k] for k in f.files if k in KEYS + ("classes",)}
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:  # ValueError: a pickled object
        raise DatasetError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None

    x_train = _images(path, "x_train", arrays["x_train"])
    x_test = _images(path, "x_test", arrays["x_test"])
    y_train = _labels(path, "y_train", arrays["y_train"])
    y_test = _labels(path, "y_test", arrays["y_test"])
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DatasetError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{path}: x_test images are {x_test.shape[1:]} (C,H,W) "
                           f"but x_train images are {x_train.shape[1:]}")
    if x_train.dtype != x_test.dtype:
        raise DatasetError(f"{path}: x_train is {x_train.dtype} but x_test is {x_test.dtype}; "
                           f"use one pixel scale for both")
    top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"].ravel()]
        if top >= len(classes):
            raise DatasetError(f"{path}: label {top} is out of range for {len(classes)} classes")
    else:
        classes = [str(i) for i in range(top + 1)]
    return x_train, y_train, x_test, y_test, classes
