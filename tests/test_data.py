"""Loaders and their checks: IDX (MNIST / Fashion-MNIST), CIFAR-10, .npz, digits."""
import gzip
import io
import os
import pickle
import struct
import sys

import numpy
import pytest

from gpucnn import data
from gpucnn.data import DatasetError, cifar, idx
from gpucnn.data.stats import channel_stats
from real_mnist import MNIST, needs_mnist
from reliability_helpers import idx_bytes
from reliability_helpers import write_bytes as write

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


# ---------------------------------------------------------------- tiny file writers

def write_mnist_dir(d, n_train=6, n_test=4, gz=True, h=5, w=4, seed=0):
    """Four standard IDX files with random pixels and labels 0..9; returns the arrays."""
    rng = numpy.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, h, w), dtype=numpy.uint8)
        y = rng.integers(0, 10, size=n, dtype=numpy.uint8)
        suffix = ".gz" if gz else ""
        write(d / f"{split}-images-idx3-ubyte{suffix}", idx_bytes(2051, (n, h, w), x.tobytes()), gz)
        write(d / f"{split}-labels-idx1-ubyte{suffix}", idx_bytes(2049, (n,), y.tobytes()), gz)
        arrays[split] = (x, y)
    return arrays


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (SHORT_BINSTRING / BINSTRING).

    The real CIFAR-10 files are Python 2 cPickle output: their keys and the array
    buffer are Python 2 strings, and the array is rebuilt by numpy.core.multiarray.
    This reproduces that opcode stream, so the tests read what the real files contain.
    """
    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[str] = save_string
    dispatch[bytes] = save_string


def py2_pickle(obj):
    f = io.BytesIO()
    Py2Pickler(f, protocol=2).dump(obj)
    # NumPy 2 names its module numpy._core; the 2009 files say numpy.core.
    return f.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar_dir(root, n=3, seed=0, dumps=py2_pickle):
    """A cifar-10-batches-py directory with n images per batch; returns (x_train, y_train, x_test, y_test)."""
    d = root / cifar.DIRNAME
    d.mkdir(parents=True, exist_ok=True)
    rng = numpy.random.default_rng(seed)
    xs, ys = [], []
    for name in cifar.TRAIN_FILES + [cifar.TEST_FILE]:
        x = rng.integers(0, 256, size=(n, 3072), dtype=numpy.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {"batch_label": name, "labels": y, "data": x,
                 "filenames": [f"img_{i}.png" for i in range(n)]}
        (d / name).write_bytes(dumps(batch))
        xs.append(x)
        ys.append(y)
    meta = {"num_cases_per_batch": n, "label_names": list(cifar.CLASSES), "num_vis": 3072}
    (d / cifar.META_FILE).write_bytes(dumps(meta))
    return numpy.concatenate(xs[:5]), numpy.concatenate(ys[:5]), xs[5], numpy.array(ys[5])


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loads(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    ds = data.load("mnist", data_dir=str(tmp_path))
    x, y = arrays["train"]
    assert ds.x_train.shape == (6, 1, 5, 4) and ds.x_train.dtype == numpy.uint8
    numpy.testing.assert_array_equal(ds.x_train[:, 0], x)
    numpy.testing.assert_array_equal(ds.y_train, y)
    assert ds.y_train.dtype == numpy.int64
    numpy.testing.assert_array_equal(ds.x_test[:, 0], arrays["t10k"][0])
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.input_shape == (1, 5, 4) and ds.num_classes == 10
    assert ds.mean.shape == (1,) and ds.mean.dtype == numpy.float32
    numpy.testing.assert_allclose(ds.mean, [x.mean() / 255], rtol=1e-6)
    numpy.testing.assert_allclose(ds.std, [(x / 255).std()], rtol=1e-5)
    ds.x_train[0, 0, 0, 0] = 1  # arrays are writable, not views of a read-only buffer


def test_fashion_mnist_names_its_classes(tmp_path):
    write_mnist_dir(tmp_path)
    ds = data.load("fashion-mnist", data_dir=str(tmp_path))
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_gzip_detected_by_content_not_name(tmp_path):
    x = numpy.arange(12, dtype=numpy.uint8)
    raw = idx_bytes(2051, (1, 3, 4), x.tobytes())
    a = write(tmp_path / "a.gz", raw, gz=False)  # .gz name, raw content
    b = write(tmp_path / "b", raw, gz=True)      # plain name, gzip content
    numpy.testing.assert_array_equal(idx.read_images(a), idx.read_images(b))
    numpy.testing.assert_array_equal(idx.read_images(a).ravel(), x)


def _assert_error(exc_info, path, *words):
    msg = str(exc_info.value)
    assert str(path) in msg, msg
    for word in words:
        assert word in msg, msg


@pytest.mark.parametrize("gz", [True, False])
def test_idx_wrong_magic(tmp_path, gz):
    p = write(tmp_path / "imgs", idx_bytes(2049, (2, 2, 2), bytes(8)), gz)
    with pytest.raises(DatasetError) as e:
        idx.read_images(p)
    _assert_error(e, p, "magic number 2049", "expected 2051")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, gz):
    p = write(tmp_path / "imgs", idx_bytes(2051, (3, 2, 2), bytes(11)), gz)
    with pytest.raises(DatasetError) as e:
        idx.read_images(p)
    _assert_error(e, p, "truncated", "12 bytes", "has 11")


def test_idx_truncated_header(tmp_path):
    p = write(tmp_path / "imgs", struct.pack(">ii", 2051, 3))
    with pytest.raises(DatasetError) as e:
        idx.read_images(p)
    _assert_error(e, p, "truncated header")


def test_idx_trailing_bytes(tmp_path):
    p = write(tmp_path / "labels", idx_bytes(2049, (2,), bytes(3)))
    with pytest.raises(DatasetError) as e:
        idx.read_labels(p, 10)
    _assert_error(e, p, "trailing")


def test_idx_bad_dims(tmp_path):
    p = write(tmp_path / "imgs", idx_bytes(2051, (0, 2, 2), b""))
    with pytest.raises(DatasetError) as e:
        idx.read_images(p)
    _assert_error(e, p, "dimensions")


def test_idx_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write(labels, idx_bytes(2049, (5,), bytes(5)))
    with pytest.raises(DatasetError) as e:
        data.load("mnist", data_dir=str(tmp_path))
    _assert_error(e, tmp_path / "train-images-idx3-ubyte", "6 images", str(labels), "5 labels")


def test_idx_label_out_of_range(tmp_path):
    p = write(tmp_path / "labels.gz", idx_bytes(2049, (4,), bytes([1, 2, 12, 3])), gz=True)
    with pytest.raises(DatasetError) as e:
        idx.read_labels(p, 10)
    _assert_error(e, p, "label 12 at index 2", "out of range 0..9")


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_idx_corrupt_gzip(tmp_path, damage):
    good = gzip.compress(idx_bytes(2051, (4, 8, 8), bytes(range(256))))
    bad = good[:10] + b"\xff" * (len(good) - 10) if damage == "garbage" else good[: len(good) // 2]
    p = write(tmp_path / "imgs.gz", bad)
    with pytest.raises(DatasetError) as e:
        idx.read_images(p)
    _assert_error(e, p, "corrupt gzip")


def test_idx_missing_file_suggests_flags(tmp_path):
    write_mnist_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError) as e:
        data.load("mnist", data_dir=str(tmp_path))
    _assert_error(e, tmp_path / "t10k-labels-idx1-ubyte", "not found", "--data-dir", "--download")


def test_missing_directory_suggests_flags(tmp_path):
    with pytest.raises(DatasetError) as e:
        data.load("mnist", cache_dir=str(tmp_path))
    _assert_error(e, tmp_path / "mnist", "not found", "--data-dir", "--download")


def test_unknown_name_lists_choices():
    with pytest.raises(DatasetError) as e:
        data.load("imagenet")
    for name in ("'imagenet'", "digits", "mnist", "fashion-mnist", "cifar10", ".npz"):
        assert name in str(e.value)


# ---------------------------------------------------------------- real MNIST / Fashion-MNIST

@needs_mnist
def test_real_mnist():
    ds = data.load("mnist", data_dir=MNIST)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert ds.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert abs(float(ds.mean[0]) - 0.1307) < 1e-3
    assert abs(float(ds.std[0]) - 0.3081) < 1e-3
    assert numpy.bincount(ds.y_test).tolist()[:3] == [980, 1135, 1032]


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="apt dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = data.load("fashion-mnist", data_dir=FASHION_DIR)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert numpy.bincount(ds.y_train).tolist() == [6000] * 10
    assert abs(float(ds.mean[0]) - 0.2860) < 1e-3


# ---------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("inner", [False, True])
def test_cifar_directory_loads(tmp_path, inner):
    x_train, y_train, x_test, y_test = write_cifar_dir(tmp_path)
    where = tmp_path / cifar.DIRNAME if inner else tmp_path
    ds = data.load("cifar10", data_dir=str(where))
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == numpy.uint8
    assert ds.x_test.shape == (3, 3, 32, 32)
    # A row is the red 32x32 plane, then green, then blue.
    numpy.testing.assert_array_equal(ds.x_train[4, 1].ravel(), x_train[4, 1024:2048])
    numpy.testing.assert_array_equal(ds.y_train, y_train)
    numpy.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.y_train.dtype == numpy.int64
    assert ds.classes == cifar.CLASSES
    assert ds.mean.shape == (3,)
    numpy.testing.assert_allclose(ds.mean[2], x_train[:, 2048:].mean() / 255, rtol=1e-6)


def test_cifar_reads_pickles_written_by_python3_numpy(tmp_path):
    # Files re-saved today (protocol 3, numpy._core names) load too.
    write_cifar_dir(tmp_path, dumps=lambda o: pickle.dumps(
        {k.encode(): v for k, v in o.items()} if isinstance(o, dict) else o, protocol=3))
    assert data.load("cifar10", data_dir=str(tmp_path)).x_train.shape == (15, 3, 32, 32)


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, eval, getattr(__import__("subprocess"), "getoutput")])
def test_cifar_forbidden_global_is_refused_without_running(tmp_path, func):
    write_cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is not eval else f"open({str(marker)!r}, 'w').close()"
    batch = tmp_path / cifar.DIRNAME / "data_batch_2"
    batch.write_bytes(py2_pickle({"data": _RunsCode(func, arg), "labels": []}))
    with pytest.raises(DatasetError) as e:
        data.load("cifar10", data_dir=str(tmp_path))
    _assert_error(e, batch, "refusing to unpickle", func.__name__)
    assert not marker.exists()


@pytest.mark.parametrize("batch_name,content,words", [
    ("test_batch", {"data": numpy.zeros((2, 100), numpy.uint8), "labels": [0, 1]}, ("(N, 3072)", "(2, 100)")),
    ("data_batch_3", {"data": numpy.zeros((2, 3072), numpy.uint8), "labels": [0, 10]}, ("label 10 at index 1", "out of range")),
    ("data_batch_1", {"data": numpy.zeros((3, 3072), numpy.uint8), "labels": [0, 1]}, ("3 images but 2 labels",)),
], ids=["bad-shape", "label-out-of-range", "count-mismatch"])
def test_cifar_bad_batch(tmp_path, batch_name, content, words):
    write_cifar_dir(tmp_path)
    batch = tmp_path / cifar.DIRNAME / batch_name
    batch.write_bytes(py2_pickle(content))
    with pytest.raises(DatasetError) as e:
        data.load("cifar10", data_dir=str(tmp_path))
    _assert_error(e, batch, *words)


def test_cifar_truncated_pickle(tmp_path):
    write_cifar_dir(tmp_path)
    batch = tmp_path / cifar.DIRNAME / "data_batch_5"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DatasetError) as e:
        data.load("cifar10", data_dir=str(tmp_path))
    _assert_error(e, batch, "not a readable CIFAR pickle")


def test_cifar_missing_batch(tmp_path):
    write_cifar_dir(tmp_path)
    os.remove(tmp_path / cifar.DIRNAME / "data_batch_4")
    with pytest.raises(DatasetError) as e:
        data.load("cifar10", data_dir=str(tmp_path))
    _assert_error(e, tmp_path / cifar.DIRNAME / "data_batch_4", "not found", "--download")


# ---------------------------------------------------------------- .npz

def _npz(path, **arrays):
    numpy.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("layout", ["NHW", "NCHW", "NHWC"])
def test_npz_layouts(tmp_path, layout):
    rng = numpy.random.default_rng(0)
    c = 1 if layout == "NHW" else 3
    x = rng.integers(0, 256, size=(5, c, 6, 7), dtype=numpy.uint8)
    stored = {"NHW": x[:, 0], "NCHW": x, "NHWC": x.transpose(0, 2, 3, 1)}[layout]
    p = _npz(tmp_path / "d.npz", x_train=stored, y_train=numpy.arange(5), x_test=stored[:2],
             y_test=numpy.array([1, 0]))
    ds = data.load(p)
    assert ds.name == "d"
    numpy.testing.assert_array_equal(ds.x_train, x)
    assert ds.x_train.flags.c_contiguous and ds.x_train.dtype == numpy.uint8
    assert ds.y_train.dtype == numpy.int64
    assert ds.classes == ["0", "1", "2", "3", "4"]


def test_npz_float_images_and_class_names(tmp_path):
    x = numpy.linspace(0, 1, 2 * 4 * 4).reshape(2, 4, 4)
    p = _npz(tmp_path / "f.npz", x_train=x, y_train=[0, 1], x_test=x, y_test=[1, 1],
             classes=numpy.array(["cat", "dog"]))
    ds = data.load(p)
    assert ds.x_train.dtype == numpy.float32 and ds.classes == ["cat", "dog"]
    numpy.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-6)  # floats are not divided by 255


def test_npz_missing_key(tmp_path):
    p = _npz(tmp_path / "m.npz", x_train=numpy.zeros((2, 4, 4)), y_train=[0, 1], x_test=numpy.zeros((1, 4, 4)))
    with pytest.raises(DatasetError) as e:
        data.load(p)
    _assert_error(e, p, "missing key", "y_test")


def test_npz_count_mismatch(tmp_path):
    p = _npz(tmp_path / "c.npz", x_train=numpy.zeros((3, 4, 4)), y_train=[0, 1],
             x_test=numpy.zeros((1, 4, 4)), y_test=[0])
    with pytest.raises(DatasetError) as e:
        data.load(p)
    _assert_error(e, p, "x_train has 3 images but y_train has 2 labels")


@pytest.mark.parametrize("bad, words", [
    (dict(x_train=numpy.zeros((2, 4, 4, 5))), ["x_train has shape (2, 4, 4, 5)"]),
    (dict(y_train=numpy.array([0.5, 1.0])), ["y_train must be a 1-d integer array"]),
    (dict(y_train=numpy.array([0, -1])), ["negative label"]),
    (dict(x_train=numpy.full((2, 4, 4), 300)), ["values outside 0..255"]),
    (dict(x_test=numpy.zeros((1, 5, 4))), ["x_test images are (1, 5, 4)"]),
    (dict(classes=numpy.array(["a"])), ["label 1 at index 1 of y_train is out of range 0..0"]),
])
def test_npz_bad_content(tmp_path, bad, words):
    arrays = dict(x_train=numpy.zeros((2, 4, 4)), y_train=numpy.array([0, 1]),
                  x_test=numpy.zeros((1, 4, 4)), y_test=numpy.array([0]))
    arrays.update(bad)
    p = _npz(tmp_path / "b.npz", **arrays)
    with pytest.raises(DatasetError) as e:
        data.load(p)
    _assert_error(e, p, *words)


def test_npz_object_arrays_refused(tmp_path):
    p = _npz(tmp_path / "o.npz", x_train=numpy.array([None, 1], dtype=object), y_train=[0, 1],
             x_test=numpy.zeros((1, 4, 4)), y_test=[0])
    with pytest.raises(DatasetError) as e:
        data.load(p)
    _assert_error(e, p, "not a readable .npz")


def test_npz_missing_and_not_a_zip(tmp_path):
    with pytest.raises(DatasetError) as e:
        data.load(str(tmp_path / "nope.npz"))
    _assert_error(e, tmp_path / "nope.npz", "not found")
    p = write(tmp_path / "junk.npz", b"not a zip file at all")
    with pytest.raises(DatasetError) as e:
        data.load(p)
    _assert_error(e, p, "not an .npz (zip) file")


# ---------------------------------------------------------------- digits

def test_digits_builtin():
    pytest.importorskip("sklearn")
    ds = data.load("digits")
    assert ds.x_train.shape == (1442, 1, 8, 8) and ds.x_test.shape == (355, 1, 8, 8)
    assert ds.x_train.dtype == numpy.float32 and 0 <= ds.x_train.min() and ds.x_train.max() == 1
    assert ds.y_train.dtype == numpy.int64
    # Stratified: every class is in the test set in proportion.
    assert numpy.bincount(ds.y_test, minlength=10).min() >= 34
    again = data.load("digits")
    numpy.testing.assert_array_equal(ds.x_test, again.x_test)
    # Train and test are disjoint (no test image also in train).
    train_rows = {r.tobytes() for r in ds.x_train.reshape(len(ds.x_train), -1)}
    overlap = sum(r.tobytes() in train_rows for r in ds.x_test.reshape(len(ds.x_test), -1))
    assert overlap <= 2  # the raw data has a couple of duplicate images, nothing more


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(DatasetError) as e:
        data.load("digits")
    assert 'pip install ".[digits]" (in the gpucnn clone)' in str(e.value)


# ---------------------------------------------------------------- stats

def test_channel_stats_per_channel_and_chunked():
    rng = numpy.random.default_rng(3)
    x = rng.integers(0, 256, size=(10, 3, 4, 5), dtype=numpy.uint8)
    x[:, 2] = 7  # a constant channel must not give std 0
    mean, std = channel_stats(x, chunk=3)
    f = x / 255.0
    numpy.testing.assert_allclose(mean, f.mean(axis=(0, 2, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(std[:2], f.std(axis=(0, 2, 3))[:2], rtol=1e-5)
    assert std[2] == 1.0
