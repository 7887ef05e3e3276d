"""--download against a local HTTP server (no external network): verify, reject, clean up."""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading

import numpy
import pytest

from gpucnn import data
from gpucnn.data import DatasetError, cifar, idx
from gpucnn.data import download as dl
from real_mnist import HOW, MNIST

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/served on 127.0.0.1:<free port>; yields (base url, served dir, request log)."""
    root = tmp_path / "served"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def md5(b):
    return hashlib.md5(b).hexdigest()


def serve_mnist(root, n=5):
    """Tiny gzipped IDX files in the served dir; returns {stem: md5 of uncompressed content}."""
    rng = numpy.random.default_rng(0)
    sums = {}
    for stem in idx.FILES.values():
        if "images" in stem:
            raw = struct.pack(">iiii", 2051, n, 3, 3) + rng.integers(0, 256, n * 9, dtype=numpy.uint8).tobytes()
        else:
            raw = struct.pack(">ii", 2049, n) + bytes(range(n))
        (root / (stem + ".gz")).write_bytes(gzip.compress(raw))
        sums[stem] = md5(raw)
    return sums


def listing(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_download_lands_verified_and_loads(server, tmp_path):
    url, root, requests = server
    sums = serve_mnist(root)
    dest = tmp_path / "cache" / "mnist"
    dl.download("mnist", str(dest), mirror=url, checksums=sums)
    assert listing(dest) == sorted(s + ".gz" for s in idx.FILES.values())  # no temp files left
    ds = data.load("mnist", data_dir=str(dest))
    assert ds.x_train.shape == (5, 1, 3, 3) and ds.y_test.tolist() == [0, 1, 2, 3, 4]
    # Files already there are not fetched again.
    before = len(requests)
    dl.download("mnist", str(dest), mirror=url, checksums=sums)
    assert len(requests) == before


def test_load_with_download_uses_env_mirror_and_cache(server, tmp_path, monkeypatch):
    url, root, requests = server
    monkeypatch.setitem(dl.IDX_MD5, "fashion-mnist", serve_mnist(root))
    monkeypatch.setenv("GPUCNN_MIRROR", url)
    monkeypatch.setenv("GPUCNN_CACHE", str(tmp_path / "c"))
    ds = data.load("fashion-mnist", download=True)
    assert ds.x_test.shape == (5, 1, 3, 3)
    assert len(listing(tmp_path / "c" / "fashion-mnist")) == 4
    assert all(r.startswith("/t") for r in requests)  # fetched from the local server


def test_checksum_mismatch_rejected_and_nothing_left(server, tmp_path):
    url, root, _ = server
    sums = serve_mnist(root)
    # Corrupt one served file: still valid gzip, different content.
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03tampered"))
    dest = tmp_path / "mnist"
    with pytest.raises(DatasetError) as e:
        dl.download("mnist", str(dest), mirror=url, checksums=sums)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "checksum mismatch" in msg
    assert sums["t10k-images-idx3-ubyte"] in msg and "deleted" in msg
    assert "t10k-images-idx3-ubyte.gz" not in listing(dest)
    assert not [n for n in listing(dest) if n.startswith(".")]  # no half-written temp file


def test_real_checksums_reject_wrong_data(server, tmp_path):
    url, root, _ = server
    serve_mnist(root)  # tiny files cannot match the real MNIST md5s
    with pytest.raises(DatasetError, match="checksum mismatch"):
        dl.download("mnist", str(tmp_path / "m"), mirror=url)
    assert listing(tmp_path / "m") == []


def test_corrupt_gzip_rejected_and_nothing_left(server, tmp_path):
    url, root, _ = server
    sums = serve_mnist(root)
    good = (root / "train-labels-idx1-ubyte.gz").read_bytes()
    (root / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])  # cut short
    with pytest.raises(DatasetError) as e:
        dl.download("mnist", str(tmp_path / "m"), mirror=url, checksums=sums)
    assert "train-labels-idx1-ubyte" in str(e.value) and "corrupt gzip" in str(e.value)
    assert listing(tmp_path / "m") == sorted(["train-images-idx3-ubyte.gz"])  # the one before it


def test_http_error_is_clear_and_leaves_nothing(server, tmp_path):
    url, _, _ = server  # nothing served: 404
    with pytest.raises(DatasetError) as e:
        dl.download("mnist", str(tmp_path / "m"), mirror=url)
    assert "could not download" in str(e.value) and "train-images-idx3-ubyte.gz" in str(e.value)
    assert "404" in str(e.value)
    assert listing(tmp_path / "m") == []


def test_unknown_download_name(tmp_path):
    with pytest.raises(DatasetError, match="downloadable: mnist, fashion-mnist, cifar10"):
        dl.download("digits", str(tmp_path))


# ---------------------------------------------------------------- CIFAR-10

def _tar_member(tar, name, content):
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def serve_cifar(root, extra=(), tamper=None):
    """A tiny cifar-10-python.tar.gz; returns checksums for download(checksums=...)."""
    # Protocol-3 pickles keep this file independent; test_data.py covers the Python 2 format.
    rng = numpy.random.default_rng(1)
    files = {}
    for name in cifar.TRAIN_FILES + [cifar.TEST_FILE]:
        files[name] = pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=numpy.uint8),
                                    b"labels": [1, 2], b"batch_label": name.encode()}, protocol=3)
    files[cifar.META_FILE] = pickle.dumps({b"label_names": [c.encode() for c in cifar.CLASSES]}, protocol=3)
    sums = {n: md5(b) for n, b in files.items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _tar_member(tar, f"{cifar.DIRNAME}/readme.html", b"<html></html>")
        for name, content in files.items():
            _tar_member(tar, f"{cifar.DIRNAME}/{name}", tamper if tamper and name == "data_batch_3" else content)
        for member in extra:
            tar.addfile(*member)
    (root / dl.CIFAR_ARCHIVE).write_bytes(buf.getvalue())
    sums[dl.CIFAR_ARCHIVE] = md5(buf.getvalue())
    return sums


def test_cifar_download_extracts_verified_files(server, tmp_path):
    url, root, _ = server
    sums = serve_cifar(root)
    dest = tmp_path / "cifar10"
    dl.download("cifar10", str(dest), mirror=url, checksums=sums)
    assert listing(dest) == [cifar.DIRNAME]  # archive and staging dir removed
    assert listing(dest / cifar.DIRNAME) == sorted(cifar.TRAIN_FILES + [cifar.TEST_FILE, cifar.META_FILE])
    ds = data.load("cifar10", data_dir=str(dest))
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.y_test.tolist() == [1, 2]


def test_cifar_archive_checksum_mismatch(server, tmp_path):
    url, root, _ = server
    sums = serve_cifar(root)
    sums[dl.CIFAR_ARCHIVE] = "0" * 32
    with pytest.raises(DatasetError) as e:
        dl.download("cifar10", str(tmp_path / "c"), mirror=url, checksums=sums)
    assert dl.CIFAR_ARCHIVE in str(e.value) and "checksum mismatch" in str(e.value)
    assert listing(tmp_path / "c") == []


def test_cifar_member_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, root, _ = server
    good = serve_cifar(root)
    sums = serve_cifar(root, tamper=b"not the real batch")
    sums["data_batch_3"] = good["data_batch_3"]  # the real file's md5, a tampered member
    with pytest.raises(DatasetError) as e:
        dl.download("cifar10", str(tmp_path / "c"), mirror=url, checksums=sums)
    assert "data_batch_3" in str(e.value) and "checksum mismatch" in str(e.value)
    assert listing(tmp_path / "c") == []  # no archive, no staging, no half-filled batches dir


def test_cifar_hostile_archive_cannot_write_outside(server, tmp_path):
    url, root, _ = server
    evil = tarfile.TarInfo("../../evil.txt")
    evil.size = 4
    absolute = tarfile.TarInfo(str(tmp_path / "absolute.txt"))
    absolute.size = 4
    sums = serve_cifar(root, extra=[(evil, io.BytesIO(b"evil")), (absolute, io.BytesIO(b"evil"))])
    dl.download("cifar10", str(tmp_path / "deep" / "c"), mirror=url, checksums=sums)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not (tmp_path / "absolute.txt").exists()


def test_cifar_link_member_refused(server, tmp_path):
    url, root, _ = server
    sums = serve_cifar(root)
    # Rebuild the archive with data_batch_1 as a symlink to a file outside.
    buf = io.BytesIO()
    with tarfile.open(root / dl.CIFAR_ARCHIVE) as src, tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in src:
            if m.name.endswith("data_batch_1"):
                link = tarfile.TarInfo(m.name)
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
            else:
                tar.addfile(m, src.extractfile(m))
    (root / dl.CIFAR_ARCHIVE).write_bytes(buf.getvalue())
    sums[dl.CIFAR_ARCHIVE] = md5(buf.getvalue())
    with pytest.raises(DatasetError, match="data_batch_1 is not a regular file"):
        dl.download("cifar10", str(tmp_path / "c"), mirror=url, checksums=sums)
    assert listing(tmp_path / "c") == []


# ---------------------------------------------------------------- the built-in checksums

def _gunzip_md5(path):
    with gzip.open(path, "rb") as f:
        return md5(f.read())


@pytest.mark.parametrize("name, directory", [("mnist", MNIST), ("fashion-mnist", FASHION_DIR)])
def test_builtin_md5s_match_real_files(name, directory):
    if not os.path.isdir(directory):
        pytest.skip(HOW if name == "mnist" else f"{directory} not present (Debian: apt install dataset-fashion-mnist)")
    for stem, expected in dl.IDX_MD5[name].items():
        assert _gunzip_md5(os.path.join(directory, stem + ".gz")) == expected, stem
