"""`Dataset` and `load(name)`: the one entry point the trainer and CLI use."""
import os
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

    def __repr__(self):
        return (f"Dataset({self.name!r}, train {self.x_train.shape} {self.x_train.dtype}, "
                f"test {self.x_test.shape}, {self.num_classes} classes)")


def load(name, data_dir=None, download=False, cache_dir=None, mirror=None):
    """Load a dataset by name: digits | mnist | fashion-mnist | cifar10 | path/to/file.npz.

    Files are looked for in data_dir, else in <cache_dir>/<name> (cache_dir defaults to
    GPUCNN_CACHE or ~/.cache/gpucnn). download=True first fetches any missing files
    into that same directory (from `mirror` / GPUCNN_MIRROR / the official mirror).
    """
    key = str(name).strip()
    if key.lower().endswith(".npz"):
        return Dataset(os.path.splitext(os.path.basename(key))[0], *npz.load(key))
    key = key.lower()
    if key not in NAMES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(NAMES)}, "
                           f"or a path to an .npz file")
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
