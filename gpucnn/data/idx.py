"""IDX files (MNIST, Fashion-MNIST): a big-endian int32 header, then raw uint8 values.

Header: magic (0x00000803 = 2051 for 3-d image files, 0x00000801 = 2049 for 1-d label
files; the low byte is the number of dimensions), then one int32 per dimension.
Files may be gzipped or not; we decide by the gzip magic bytes, not the file name,
because mirrors and tools disagree about whether they unpack on download.
"""
import gzip
import math
import os
import struct
import zlib

import numpy

from .errors import DatasetError, missing

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
GZIP_MAGIC = b"\x1f\x8b"

# The four standard file names, shared by MNIST and Fashion-MNIST.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_bytes(path):
    """The file's content, gunzipped when it starts with the gzip magic."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; EOFError = cut short
        raise DatasetError(f"{path}: corrupt gzip data ({e})") from None


def _parse(path, magic, ndim):
    """Check the header and byte count; return (dims, data bytes after the header)."""
    data = read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise DatasetError(f"{path}: bad magic number {found}, expected {magic} for an IDX {kind} file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    if any(d <= 0 for d in dims):
        raise DatasetError(f"{path}: bad dimensions {dims} in header")
    expected = math.prod(dims)  # Python ints: a hostile header cannot overflow this
    body = len(data) - header
    if body < expected:
        raise DatasetError(f"{path}: truncated: header says {'x'.join(map(str, dims))} "
                           f"= {expected} bytes of data, file has {body}")
    if body > expected:
        raise DatasetError(f"{path}: {body - expected} unexpected trailing bytes after "
                           f"{'x'.join(map(str, dims))} values")
    return dims, memoryview(data)[header:]  # a view: no 47 MB copy


def read_images(path):
    """uint8 images (N, 1, H, W) from an IDX image file."""
    (n, h, w), body = _parse(path, IMAGES_MAGIC, 3)
    # bytearray so the array is writable (a bytes buffer would give a read-only one).
    return numpy.frombuffer(bytearray(body), dtype=numpy.uint8).reshape(n, 1, h, w)


def read_labels(path, num_classes):
    """int64 labels (N,) from an IDX label file, each checked to be in 0..num_classes-1."""
    (n,), body = _parse(path, LABELS_MAGIC, 1)
    labels = numpy.frombuffer(body, dtype=numpy.uint8).astype(numpy.int64)
    check_labels(labels, num_classes, path)
    return labels


def check_labels(labels, num_classes, path):
    bad = numpy.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: label {int(labels[i])} at index {i} is out of range "
                           f"0..{num_classes - 1} ({bad.size} bad labels in all)")


def read_pair(images_path, labels_path, num_classes):
    """Images and labels from two IDX files, checked to have the same count."""
    x = read_images(images_path)
    y = read_labels(labels_path, num_classes)
    if len(x) != len(y):
        raise DatasetError(f"{images_path}: {len(x)} images but {labels_path} has {len(y)} labels")
    return x, y


def find(directory, stem):
    """The path of `stem` or `stem.gz` in directory (whichever exists), else a clear error."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise missing(os.path.join(directory, stem + "[.gz]"), "IDX file")


def load_dir(directory, num_classes=10):
    """(x_train, y_train, x_test, y_test) from a directory with the four standard IDX files."""
    if not os.path.isdir(directory):
        raise missing(directory, "data directory")
    p = {key: find(directory, stem) for key, stem in FILES.items()}
    x_train, y_train = read_pair(p["train_images"], p["train_labels"], num_classes)
    x_test, y_test = read_pair(p["test_images"], p["test_labels"], num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{p['test_images']}: image size {x_test.shape[2:]} differs from "
                           f"the training images' {x_train.shape[2:]}")
    return x_train, y_train, x_test, y_test
