"""Datasets for gpucnn: loading (with checks), downloading (verified), and batching.

    from gpucnn import data
    ds = data.load("mnist", download=True)
    for xb, yb in data.iterate(ds.x_train, ds.y_train, 128, shuffle=True, seed=0,
                               epoch=0, mean=ds.mean, std=ds.std):
        ...

`gpucnn.data.download` is the module (download.download(name, directory) fetches
explicitly); the function is not re-exported here so the module name stays unshadowed.
"""
from .batches import crop_flip, epoch_plan, iterate, num_batches
from .datasets import NAMES, Dataset, load
from .download import default_cache_dir
from .errors import DatasetError

__all__ = ["NAMES", "Dataset", "DatasetError", "crop_flip", "default_cache_dir",
           "epoch_plan", "iterate", "load", "num_batches"]
