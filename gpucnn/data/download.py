"""--download: fetch MNIST, Fashion-MNIST or CIFAR-10 into a directory, verified by md5.

Only urllib is used. Every file is written to a hidden temporary file in the target
directory and renamed into place only after its checksum matches, so an interrupted or
corrupt download never leaves a file that looks complete: a mismatch deletes it and
raises a DatasetError naming the file.

What is verified, and why:
- MNIST / Fashion-MNIST: the md5 of the UNCOMPRESSED IDX content. Mirrors re-gzip these
  files (the .gz bytes differ between mirrors and distro packages) but the content inside
  is the original; the published uncompressed md5s identify that content. The .gz file is
  kept as downloaded; idx.py reads it directly.
- CIFAR-10: the md5 of the archive, c58f30108f718f92721af3b95e74349a, which is the one
  checksum the dataset's authors publish (the Toronto server serves that very file), and
  then the md5 of each extracted batch file (the values torchvision checks), so what we
  load is verified uncompressed content too. Extraction writes only the eight expected
  member names, each to a path we build, so a hostile archive cannot write elsewhere
  (no path traversal, links or devices); the archive is deleted afterwards.

The base URL can be overridden with the `mirror` argument or the GPUCNN_MIRROR
environment variable; file names are appended to it (tests point it at a local server).
"""
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib

from tqdm import tqdm

from . import cifar, idx
from .errors import DatasetError

MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",  # what torchvision uses
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}

# md5 of the uncompressed IDX files (canonical values; Fashion-MNIST's were computed from
# Debian's dataset-fashion-mnist package and agree with those published elsewhere).
IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_MD5 = {
    CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

CHUNK = 1 << 20
MAX_INFLATED = 256 << 20  # the largest IDX file (MNIST's training images) is 47 MB


def default_cache_dir():
    """GPUCNN_CACHE if set, else ~/.cache/gpucnn."""
    return os.environ.get("GPUCNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gpucnn")


def base_url(name, mirror=None):
    url = mirror or os.environ.get("GPUCNN_MIRROR") or MIRRORS[name]
    return url.rstrip("/") + "/"


def download(name, directory, *, mirror=None, checksums=None):
    """Fetch dataset `name` into `directory` (files already there are kept); return directory.

    checksums: {file name: md5} overriding the built-in values (for tests and mirrors
    of modified data).
    """
    if name not in MIRRORS:
        raise DatasetError(f"cannot download {name!r}; downloadable: {', '.join(MIRRORS)}")
    os.makedirs(directory, exist_ok=True)
    if name == "cifar10":
        md5s = {**CIFAR_MD5, **(checksums or {})}
        _download_cifar(base_url(name, mirror), directory, md5s)
    else:
        md5s = {**IDX_MD5[name], **(checksums or {})}
        for stem in idx.FILES.values():
            if any(os.path.isfile(os.path.join(directory, stem + ext)) for ext in ("", ".gz")):
                continue
            url = base_url(name, mirror) + stem + ".gz"
            _download_verified(url, os.path.join(directory, stem + ".gz"), md5s[stem], gunzip=True)
    return directory


def _download_verified(url, dest, expected_md5, gunzip):
    """Download url to dest, renamed into place only if the (gunzipped) content's md5 matches."""
    tmp = _fetch(url, dest)
    try:
        got = _md5(tmp, gunzip, url)
        if got != expected_md5:
            raise DatasetError(f"{os.path.basename(dest)}: checksum mismatch for {url}: md5 {got}, "
                               f"expected {expected_md5}; the download is corrupt or the mirror "
                               f"serves different data; deleted it, nothing was saved")
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def _fetch(url, dest):
    """Stream url into a hidden temp file beside dest; return its path (deleted on failure)."""
    print(f"gpucnn: downloading {url}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".",
                               prefix="." + os.path.basename(dest) + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(dest), leave=False) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, (urllib.error.URLError, OSError, http.client.HTTPException)):
            raise DatasetError(f"{os.path.basename(dest)}: could not download {url} ({e}); "
                               f"check the network or set GPUCNN_MIRROR") from None
        raise
    return tmp


def _md5(path, gunzip, url):
    """md5 of the file's content, gunzipped first when asked and it is gzip data."""
    with open(path, "rb") as f:
        is_gz = f.read(2) == idx.GZIP_MAGIC
    h, total = hashlib.md5(), 0
    try:
        with (gzip.open if gunzip and is_gz else open)(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                total += len(chunk)
                if gunzip and is_gz and total > MAX_INFLATED:  # a gzip bomb: stop inflating it
                    raise DatasetError(f"{os.path.basename(url)}: inflates past {MAX_INFLATED >> 20} MB, more than "
                                       f"any file of these datasets; not what {url} should serve; deleted it, "
                                       f"nothing was saved")
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{os.path.basename(url)}: corrupt gzip data from {url} ({e}); "
                           f"deleted it, nothing was saved") from None
    return h.hexdigest()


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _download_cifar(url, directory, md5s):
    final = os.path.join(directory, cifar.DIRNAME)
    names = cifar.TRAIN_FILES + [cifar.TEST_FILE, cifar.META_FILE]
    if all(os.path.isfile(os.path.join(final, n)) for n in names):
        return
    archive = os.path.join(directory, CIFAR_ARCHIVE)
    _download_verified(url + CIFAR_ARCHIVE, archive, md5s[CIFAR_ARCHIVE], gunzip=False)
    staging = tempfile.mkdtemp(dir=directory, prefix=".cifar-extract-")
    try:
        _extract(archive, staging, names, md5s)
        os.makedirs(final, exist_ok=True)
        for n in names:  # every file verified: only now do they take their real names
            os.replace(os.path.join(staging, n), os.path.join(final, n))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove(archive)


def _extract(archive, staging, names, md5s):
    """Copy the expected members' bytes into staging/, checking each one's md5."""
    wanted = {f"{cifar.DIRNAME}/{n}": n for n in names}
    found = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # one streaming pass: no seeking back through the gzip
                n = wanted.get(member.name)
                if n is None:
                    continue  # readme.html, or anything a tampered archive adds
                if not member.isfile():
                    raise DatasetError(f"{archive}: {member.name} is not a regular file")
                h = hashlib.md5()
                with tar.extractfile(member) as src, open(os.path.join(staging, n), "wb") as out:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != md5s[n]:
                    raise DatasetError(f"{archive}: checksum mismatch for {member.name}: md5 "
                                       f"{h.hexdigest()}, expected {md5s[n]}")
                found.add(n)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        _remove(archive)
        raise DatasetError(f"{archive}: cannot extract ({e}); deleted it") from None
    except DatasetError:
        _remove(archive)
        raise
    absent = sorted(set(names) - found)
    if absent:
        _remove(archive)
        raise DatasetError(f"{archive}: archive lacks {', '.join(cifar.DIRNAME + '/' + n for n in absent)}")
