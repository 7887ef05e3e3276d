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
from .labels import check_labels
from .npzfile import check_fits_in_memory, inflate_bound

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20

# The four standard file names, shared by MNIST and Fashion-MNIST.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _open(path):
    """(content stream, the file under it, its size on disk, gzipped?): gzip by the magic bytes."""
    f = open(path, "rb")
    gz = f.read(2) == GZIP_MAGIC
    f.seek(0)
    return (gzip.GzipFile(fileobj=f) if gz else f), f, os.fstat(f.fileno()).st_size, gz


def _read_up_to(f, n, chunk=CHUNK):
    """Up to n bytes from f, read a chunk at a time: memory grows only with data really there."""
    out = bytearray()
    while len(out) < n:
        part = f.read(min(chunk, n - len(out)))
        if not part:
            break
        out += part
    return out


def _parse(path, magic, ndim):
    """Check the header, then the size it declares against the file before reading the data
    (a gzip stream is bounded as it inflates); return (dims, data bytes after the header)."""
    try:
        stream, raw, size, gz = _open(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror})") from None
    with raw, stream:
        try:
            head = _read_up_to(stream, 4 + 4 * ndim)
            if len(head) < 4:
                raise DatasetError(f"{path}: too short to be an IDX file ({len(head)} bytes)")
            (found,) = struct.unpack(">i", head[:4])
            if found != magic:
                kind = "image" if magic == IMAGES_MAGIC else "label"
                raise DatasetError(f"{path}: bad magic number {found}, expected {magic} for an IDX {kind} file")
            header = 4 + 4 * ndim
            if len(head) < header:
                raise DatasetError(f"{path}: truncated header ({len(head)} bytes, need {header})")
            dims = struct.unpack(f">{ndim}i", head[4:header])
            if any(d <= 0 for d in dims):
                raise DatasetError(f"{path}: bad dimensions {dims} in header")
            expected = math.prod(dims)  # Python ints: a hostile header cannot overflow this
            shape = "x".join(map(str, dims))
            if not gz and size - header != expected:
                body = size - header
                if body < expected:
                    raise DatasetError(f"{path}: truncated: header says {shape} = {expected} bytes of data, "
                                       f"file has {body}")
                raise DatasetError(f"{path}: {body - expected} unexpected trailing bytes after {shape} values")
            if gz and header + expected > inflate_bound(size):
                raise DatasetError(f"{path}: header says {shape} = {expected:,} bytes of data, more than a "
                                   f"{size:,}-byte gzip file can inflate to (corrupt header or a gzip bomb)")
            check_fits_in_memory(expected, path, f"its header ({shape})", DatasetError)
            body = _read_up_to(stream, expected)
            if len(body) < expected:
                raise DatasetError(f"{path}: truncated: header says {shape} = {expected} bytes of data, "
                                   f"file has {len(body)}")
            if gz and stream.read(1):  # refuse as soon as the stream goes past what the header declared
                raise DatasetError(f"{path}: unexpected trailing bytes after {shape} values")
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; EOFError = cut short
            raise DatasetError(f"{path}: corrupt gzip data ({e})" if gz else f"{path}: cannot be read ({e})") from None
    return dims, body


def read_images(path):
    """uint8 images (N, 1, H, W) from an IDX image file."""
    (n, h, w), body = _parse(path, IMAGES_MAGIC, 3)
    # body is a bytearray, so the array is writable (a bytes buffer would give a read-only one).
    return numpy.frombuffer(body, dtype=numpy.uint8).reshape(n, 1, h, w)


def read_labels(path, num_classes):
    """int64 labels (N,) from an IDX label file, each checked to be in 0..num_classes-1."""
    (n,), body = _parse(path, LABELS_MAGIC, 1)
    return check_labels(numpy.frombuffer(body, dtype=numpy.uint8), path, num_classes=num_classes)


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
