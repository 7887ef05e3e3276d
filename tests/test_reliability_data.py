"""Bad data is named as bad data, before any step and before memory is allocated for it;
`train` and `eval` both refuse it with one line, never a traceback, and leave the files alone."""
import gzip
import os
import struct
import zipfile

import numpy
import pytest

from reliability_helpers import (TRAIN, forge_shape, gpucnn, idx_bytes, npz_entries, refused, snapshot,
                                 tiny_npz, train_tiny, write_bytes, write_zip)


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    """A checkpoint of the small net on tiny 1x8x8 data, 3 classes; shared, never changed."""
    root = tmp_path_factory.mktemp("good")
    train_tiny(root, root / "c.ckpt")
    return root / "c.ckpt"


@pytest.fixture
def train_and_eval_refuse(good_ckpt):
    def check(tmp_path, dataset, *words):
        """`train` on the dataset and `eval` of a good checkpoint on it: both refused, nothing changed."""
        before, ckpt_bytes = snapshot(tmp_path), good_ckpt.read_bytes()
        refused(gpucnn("train", "--dataset", dataset, *TRAIN, "--save", tmp_path / "new.ckpt"), *words)
        refused(gpucnn("eval", "--checkpoint", good_ckpt, "--dataset", dataset), *words)
        assert snapshot(tmp_path) == before and good_ckpt.read_bytes() == ckpt_bytes
    return check


@pytest.mark.parametrize("labels, words", [
    (numpy.array([0, 1, 2, 2**64 - 1, 0, 1, 2, 0], dtype=numpy.uint64), ["18446744073709551615 at index 3", "at most 100,000 classes"]),
    (numpy.array([0, 1, 2, 10**12, 0, 1, 2, 0], dtype=numpy.int64), ["label 1000000000000 at index 3", "at most 100,000"]),
    (numpy.array([0, 1, -1, 2, 0, 1, 2, 0], dtype=numpy.int8), ["negative label (-1) at index 2"]),
    (numpy.array([0.0, 1, 2, 0, 1, 2, 0, 1]), ["y_train must be a 1-d integer array"]),
])
def test_bad_labels_are_refused_in_their_own_dtype(tmp_path, labels, words, train_and_eval_refuse):
    d = tiny_npz(tmp_path / "d.npz", y_train=labels)
    train_and_eval_refuse(tmp_path, d, *words)


def test_labels_beyond_the_named_classes(tmp_path, train_and_eval_refuse):
    d = tiny_npz(tmp_path / "d.npz", classes=numpy.array(["cat", "dog"]))
    train_and_eval_refuse(tmp_path, d, "label 2 at index 2 of y_train is out of range 0..1")


@pytest.mark.parametrize("split, index, value, kind", [("x_test", 2, numpy.nan, "NaN"), ("x_train", 5, numpy.inf, "infinite")])
def test_non_finite_pixels_name_the_split_and_first_image(tmp_path, split, index, value, kind, train_and_eval_refuse):
    d = tiny_npz(tmp_path / "base.npz")
    with numpy.load(d) as f:
        arrays = {k: f[k] for k in f.files}
    arrays[split][index, 3, 4] = value
    arrays[split][index + 1, 0, 0] = value
    d = tiny_npz(tmp_path / "d.npz", **arrays)
    train_and_eval_refuse(tmp_path, d, f"{split} image {index} has a {kind} pixel", "2 image(s)")


def test_empty_splits_are_refused_before_training(tmp_path, train_and_eval_refuse):
    d = tiny_npz(tmp_path / "d.npz", x_test=numpy.zeros((0, 8, 8), numpy.float32), y_test=numpy.zeros(0, numpy.int64))
    train_and_eval_refuse(tmp_path, d, "the test split is empty")
    d2 = tiny_npz(tmp_path / "d2.npz", x_train=numpy.zeros((0, 8, 8), numpy.float32), y_train=numpy.zeros(0, numpy.int64))
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d2, *TRAIN, "--no-save"), "the train split is empty")
    assert snapshot(tmp_path) == before


def test_a_file_that_is_not_a_zip(tmp_path, train_and_eval_refuse):
    d = write_bytes(tmp_path / "d.npz", b"x_train,y_train\n1,2\n" * 10)
    train_and_eval_refuse(tmp_path, d, "not an .npz (zip) file")


def test_an_npz_header_declaring_far_more_than_the_file_holds(tmp_path, train_and_eval_refuse):
    entries = npz_entries(tiny_npz(tmp_path / "base.npz"))
    entries["x_train.npy"] = forge_shape(entries["x_train.npy"], (10**12, 8, 8))
    d = write_zip(tmp_path / "d.npz", entries)
    train_and_eval_refuse(tmp_path, d, "x_train declares a float32 array of shape (1000000000000, 8, 8)",
                          "holds only 2,048 bytes")


def test_a_deflated_npz_entry_claiming_an_impossible_size(tmp_path, train_and_eval_refuse):
    entries = npz_entries(tiny_npz(tmp_path / "base.npz"))
    d = write_zip(tmp_path / "d.npz", entries, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(open(d, "rb").read())
    # set the uncompressed size of every entry, in the local and central headers, to 4 GB - 1
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.find(sig)
        while i != -1:
            data[i + off:i + off + 4] = struct.pack("<I", 2**32 - 1)
            i = data.find(sig, i + 4)
    d = write_bytes(tmp_path / "d.npz", bytes(data))
    train_and_eval_refuse(tmp_path, d, "more than deflate can")


# --- IDX (mnist) ------------------------------------------------------------------------------
def mnist_dir(root, n=8, gz=True, images=None):
    root.mkdir(parents=True, exist_ok=True)
    rng = numpy.random.default_rng(0)
    for split in ("train", "t10k"):
        x = rng.integers(0, 256, (n, 28, 28), dtype=numpy.uint8)
        body = images if (images is not None and split == "train") else idx_bytes(2051, (n, 28, 28), x.tobytes())
        write_bytes(root / f"{split}-images-idx3-ubyte{'.gz' if gz else ''}", body, gz=gz and images is None)
        write_bytes(root / f"{split}-labels-idx1-ubyte.gz", idx_bytes(2049, (n,), bytes(range(n))), gz=True)
    return root


def mnist_refused(tmp_path, directory, *words):
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", "mnist", "--data-dir", directory, *TRAIN, "--no-save"), *words)
    assert snapshot(tmp_path) == before


def test_idx_header_far_larger_than_the_file(tmp_path):
    raw = idx_bytes(2051, (2**31 - 1, 28, 28), bytes(100))
    mnist_refused(tmp_path, mnist_dir(tmp_path / "raw", gz=False, images=raw), "truncated: header says 2147483647x28x28")
    mnist_refused(tmp_path, mnist_dir(tmp_path / "gz", images=gzip.compress(raw)), "more than a", "gzip file can inflate to")


def test_gzip_bomb_is_refused_as_it_streams(tmp_path):
    """A 50 KB .gz inflating to 50 MB behind a header declaring 8 images: refused at 8 images."""
    bomb = gzip.compress(idx_bytes(2051, (8, 28, 28), bytes(8 * 28 * 28)) + bytes(50 << 20), 9)
    assert len(bomb) < 100_000
    mnist_refused(tmp_path, mnist_dir(tmp_path / "bomb", images=bomb), "unexpected trailing bytes")


def test_idx_reader_keeps_memory_to_what_the_header_declares(tmp_path):
    import tracemalloc

    from gpucnn.data import DatasetError, idx

    p = write_bytes(tmp_path / "bomb.gz", gzip.compress(idx_bytes(2051, (8, 28, 28), bytes(6272)) + bytes(48 << 20), 9))
    tracemalloc.start()
    with pytest.raises(DatasetError, match="trailing"):
        idx.read_images(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak:,} bytes while refusing a 48 MB bomb"


# --- eval: a dataset that does not fit the checkpoint's net -----------------------------------
@pytest.fixture
def trained(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    train_tiny(tmp_path, ckpt)  # 1x8x8 images, 3 classes
    return ckpt


@pytest.mark.parametrize("kw, words", [
    (dict(hw=10), ["takes 1x8x8 (CxHxW) images", "d's are 1x10x10"]),
    (dict(channels=3), ["takes 1x8x8", "3x8x8"]),
    (dict(n_classes=5), ["predicts 3 classes", "has 5"]),
])
def test_eval_on_a_dataset_that_does_not_fit(tmp_path, trained, kw, words):
    d = tiny_npz(tmp_path / "d.npz", **kw)
    before = snapshot(tmp_path)
    refused(gpucnn("eval", "--checkpoint", trained, "--dataset", d), str(trained), *words)
    refused(gpucnn("train", "--resume", trained, "--epochs", "2", "--dataset", d, "--no-progress",
                   "--save", trained), "--dataset")  # another dataset is another run
    assert snapshot(tmp_path) == before


def test_eval_on_a_dataset_with_fewer_classes_works(tmp_path, trained):
    d = tiny_npz(tmp_path / "d.npz", n_classes=2)
    r = gpucnn("eval", "--checkpoint", trained, "--dataset", d)
    assert r.returncode == 0, r.stderr
    assert len([line for line in r.stdout.splitlines() if line[:1].isdigit()]) == 3  # one row per output class


def test_eval_fit_without_recorded_shape_is_still_explained(tmp_path, trained):
    """A checkpoint from before input_shape was recorded: the net's weights say what it takes."""
    from reliability_helpers import edit_checkpoint

    def forget(tree):
        del tree["meta"]["input_shape"], tree["meta"]["num_classes"]

    edit_checkpoint(trained, forget)
    refused(gpucnn("eval", "--checkpoint", trained, "--dataset", tiny_npz(tmp_path / "d.npz", n_classes=5)),
            "predicts 3 classes")
    refused(gpucnn("eval", "--checkpoint", trained, "--dataset", tiny_npz(tmp_path / "e.npz", hw=12)),
            "does not fit e's 1x12x12 (CxHxW) images", "(shapes differ")
    assert os.path.exists(trained)


@pytest.mark.parametrize("size", ["0", "-5"])
def test_eval_batch_size_must_be_positive(tmp_path, trained, size):
    before = snapshot(tmp_path)
    refused(gpucnn("eval", "--checkpoint", trained, "--batch-size", size), f"--batch-size must be at least 1, got {size}")
    assert snapshot(tmp_path) == before


def test_a_downloaded_gzip_bomb_is_not_inflated_to_the_end(tmp_path, monkeypatch):
    from gpucnn.data import DatasetError, download

    monkeypatch.setattr(download, "MAX_INFLATED", 4 << 20)  # the real bound is 256 MB
    bomb = write_bytes(tmp_path / "x.gz", gzip.compress(bytes(16 << 20), 9))
    with pytest.raises(DatasetError, match="inflates past 4 MB"):
        download._md5(bomb, True, "http://mirror/x.gz")


def test_a_cifar_label_past_int64_is_named_not_overflowed(tmp_path):
    import pickle

    from gpucnn.data import DatasetError, cifar

    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": numpy.zeros((2, 3072), numpy.uint8), b"labels": [0, 2**70]}, protocol=3))
    with pytest.raises(DatasetError, match=r"label 1180591620717411303424 at index 1 is out of range 0\.\.9"):
        cifar.read_batch(str(p))
