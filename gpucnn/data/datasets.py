"""`Dataset` and `load(name)`: the one entry point the trainer and CLI use."""
import os
import zlib
from dataclasses import dataclass, field

import numpy

from . import cifar, digits, download as downloader, idx, npz
from .errors import DatasetError
from .stats import channel_stats, pixel_scale

NAMES = ("digits", "mnist", "fashion-mnist", "cifar10")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass(eq=False)  # arrays make field-wise == meaningless
class Dataset:
    """Images NCHW (uint8 0..255, or float32 already scaled to ~0..1), labels int64.

    mean / std: float32 (C,), per channel, of the scaled training images; computed
    from x_train when not given. Batches are normalised with them (see batches.py).
    """
    name: str
    x_train: numpy.ndarray
    y_train: numpy.ndarray
    x_test: numpy.ndarray
    y_test: numpy.ndarray
    classes: list
    mean: numpy.ndarray = field(default=None)
    std: numpy.ndarray = field(default=None)
    pixels: dict = None     # a folder's pixel settings (image_size, channels, fit), saved in the run's config

    def __post_init__(self):
        if self.mean is None or self.std is None:
            self.mean, self.std = channel_stats(self.x_train)

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def input_shape(self):
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def scale(self):
        return pixel_scale(self.x_train.dtype)

    def fingerprint(self):
        """What identifies the data a run trains on, JSON-able: image shapes and dtype, label
        checksums and class names (compared across ranks, and by a resume against its checkpoint)."""
        return [list(self.x_train.shape), str(self.x_train.dtype), list(self.x_test.shape),
                zlib.crc32(numpy.ascontiguousarray(self.y_train)), zlib.crc32(numpy.ascontiguousarray(self.y_test)),
                [str(c) for c in self.classes]]

    def __repr__(self):
        return (f"Dataset({self.name!r}, train {self.x_train.shape} {self.x_train.dtype}, "
                f"test {self.x_test.shape}, {self.num_classes} classes)")


def is_folder(name):
    """Whether `name` is a folder of images to load_folder (a folder named like a built-in, ./mnist, is one)."""
    key = str(name).strip()
    return key.lower() not in NAMES and os.path.isdir(key)


def load(name, data_dir=None, download=False, cache_dir=None, mirror=None, folder_options=None):
    """Load a dataset by name: digits | mnist | fashion-mnist | cifar10 | path/to/file.npz |
    path/to/folder of images (folder_options: load_folder's keyword arguments).

    Files are looked for in data_dir, else in <cache_dir>/<name> (cache_dir defaults to
    GPUCNN_CACHE or ~/.cache/gpucnn). download=True first fetches any missing files
    into that same directory (from `mirror` / GPUCNN_MIRROR / the official mirror).
    """
    key = str(name).strip()
    options = {k: v for k, v in (folder_options or {}).items() if v is not None}
    if is_folder(key):
        return load_folder(key, cache_dir=cache_dir, **options)
    npz_file = key.lower().endswith(".npz")
    if not npz_file and key.lower() not in NAMES:
        if os.path.lexists(key):  # a picture, say: what it is not, rather than an unknown name
            raise DatasetError(f"{name}: is neither a folder of images nor an .npz file")
        if os.sep in key or "/" in key:
            raise DatasetError(f"{name}: no such folder")
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(NAMES)}, "
                           f"a path to an .npz file, or a folder of images")
    if {"image_size", "channels", "fit"} & set(options):
        raise DatasetError(f"--image-size, --channels and --fit are for folders of images; {name} is not a folder")
    if npz_file:
        return Dataset(os.path.splitext(os.path.basename(key))[0], *npz.load(key))
    key = key.lower()
    if key == "digits":
        return Dataset(key, *digits.load())
    directory = data_dir or os.path.join(cache_dir or downloader.default_cache_dir(), key)
    if key == "cifar10":
        if os.path.basename(os.path.normpath(directory)) == cifar.DIRNAME:
            directory = os.path.dirname(os.path.normpath(directory))  # download beside it
        if download:
            downloader.download(key, directory, mirror=mirror)
        return Dataset(key, *cifar.load_dir(directory))
    if download:
        downloader.download(key, directory, mirror=mirror)
    classes = [str(i) for i in range(10)] if key == "mnist" else list(FASHION_CLASSES)
    return Dataset(key, *idx.load_dir(directory, num_classes=10), classes)


def image_folder(name):
    """`name` when load reads it as a folder of images, else None (what outputs must stay out of)."""
    return str(name).strip() if is_folder(name) else None


def load_folder(path, *, image_size=None, channels=None, fit="stretch", strict_images=False, workers=None,
                cache_dir=None, no_cache=False, progress=True):
    """A Dataset of the images in folder `path` (see folder.py for layouts and checks, cache.py
    for the decoded cache under <cache_dir>/folders). Bad files are named on stderr and skipped."""
    import sys

    from . import cache, folder

    scan = folder.scan(path)
    workers = workers or cache.default_workers()
    size = folder.parse_size(image_size) if image_size is not None else None
    if channels is not None and channels not in (1, 3):
        raise DatasetError(f"--channels must be 1 or 3, got {channels}")
    if size is None or channels is None:
        with cache.worker_map(workers) as pool_map:
            folder.read_headers(scan, pool_map, progress=progress)
    if strict_images:
        folder.check_strict(scan)
    shape = folder.resolve_shape(scan, size, channels)
    arrays, mean, std = cache.load(scan, shape, fit, cache_dir=cache_dir or downloader.default_cache_dir(),
                                   workers=workers, use_cache=not no_cache, progress=progress)
    if strict_images:
        folder.check_strict(scan)
    for p, why in scan.bad:
        print(f"gpucnn: {folder.image.printable(p)}: {why}; skipped", file=sys.stderr)
    if scan.bad:
        print(f"gpucnn: {len(scan.bad)} bad file(s) skipped", file=sys.stderr)
    if folder.ignored_text(scan):
        print(f"gpucnn: {scan.root}: ignored {folder.ignored_text(scan)} (gpucnn data PATH summarises the folder)",
              file=sys.stderr)
    x_test, y_test = arrays.get("test", (numpy.zeros((0, *shape), numpy.uint8), numpy.zeros(0, numpy.int64)))
    pixels = {"image_size": f"{shape[1]}x{shape[2]}", "channels": shape[0], "fit": fit}
    return Dataset(os.path.basename(scan.root), *arrays["train"], x_test, y_test, list(scan.classes),
                   mean, std, pixels=pixels)
