"""CIFAR-10 from the standard `cifar-10-batches-py` directory, read without trusting pickle.

Each batch file is a Python 2 pickle of a dict: b'data' a uint8 array (10000, 3072),
each row the 32x32 red plane, then green, then blue (so it reshapes straight to NCHW);
b'labels' a list of ints 0..9; b'batch_label' and b'filenames' (unused).
batches.meta holds b'label_names'.

pickle.load runs any callable a file names, so a tampered file could run code.
The only callables these files need are the three numpy names that rebuild an array,
so `_SafeUnpickler.find_class` allows exactly those and refuses every other global
before anything is called. (Dicts, lists, ints and byte strings are pickle opcodes,
not globals, so they need no permission.)
"""
import os
import pickle

import numpy

from .errors import DatasetError, missing

DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]


def _numpy_reconstruct():
    # NumPy 2 moved numpy.core to numpy._core; the files (written by NumPy 1 on
    # Python 2) say numpy.core.multiarray, and files re-saved today say numpy._core.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): numpy.ndarray,
    ("numpy", "dtype"): numpy.dtype,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        # encoding="bytes": the files' Python 2 strings stay bytes (keys are b'data' ...),
        # which is also what NumPy needs for the raw array buffer.
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(f"{self.path}: refusing to unpickle: it names the global "
                               f"{module}.{name}, which a CIFAR-10 batch never contains") from None


def read_pickle(path):
    """Load a CIFAR pickle with only numpy's array-rebuilding globals allowed."""
    with open(path, "rb") as f:
        try:
            return _SafeUnpickler(f, path).load()
        except DatasetError:
            raise
        except Exception as e:  # truncated / garbage files raise many types
            raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None


def read_batch(path):
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) from one batch file."""
    d = read_pickle(path)
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DatasetError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = d[b"data"], d[b"labels"]
    if not isinstance(data, numpy.ndarray) or data.dtype != numpy.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path}: b'data' must be a uint8 array (N, 3072), got {shape} "
                           f"{getattr(data, 'dtype', '')}".rstrip())
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DatasetError(f"{path}: b'labels' must be a list of ints")
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels")
    # Checked as Python ints, before NumPy: a label past int64 cannot overflow the conversion.
    bad = [i for i, v in enumerate(labels) if not 0 <= v < len(CLASSES)]
    if bad:
        raise DatasetError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is out of range "
                           f"0..{len(CLASSES) - 1} ({len(bad)} bad labels in all)")
    y = numpy.asarray(labels, dtype=numpy.int64)
    return data.reshape(-1, 3, 32, 32), y


def read_classes(path):
    """Class names from batches.meta (b'label_names'), checked to be the expected ten."""
    d = read_pickle(path)
    names = d.get(b"label_names") if isinstance(d, dict) else None
    if not isinstance(names, list) or len(names) != len(CLASSES) \
            or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{path}: expected b'label_names', a list of {len(CLASSES)} strings")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def resolve_dir(directory):
    """Accept the batches directory itself or its parent (where the archive unpacks)."""
    inner = os.path.join(directory, DIRNAME)
    return inner if os.path.isdir(inner) else directory


def load_dir(directory):
    """(x_train, y_train, x_test, y_test, classes) from a cifar-10-batches-py directory."""
    if not os.path.isdir(directory):
        raise missing(directory, "CIFAR-10 directory")
    directory = resolve_dir(directory)
    paths = [os.path.join(directory, n) for n in TRAIN_FILES + [TEST_FILE]]
    for p in paths:
        if not os.path.isfile(p):
            raise missing(p, "CIFAR-10 batch file")
    train = [read_batch(p) for p in paths[:-1]]
    x_test, y_test = read_batch(paths[-1])
    meta = os.path.join(directory, META_FILE)
    # The meta file only carries names we already know; tolerate its absence.
    classes = read_classes(meta) if os.path.isfile(meta) else list(CLASSES)
    x_train = numpy.concatenate([x for x, _ in train])
    y_train = numpy.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, classes
