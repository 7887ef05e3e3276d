"""The built-in default dataset: scikit-learn's bundled 8x8 handwritten digits.

No download: the 1797 images ship inside scikit-learn. Pixel values are 0..16; we
store them as float32 / 16, so 0..1 like every other dataset after scaling.
The train/test split is fixed by a rule, not a random generator, so it is the same
on every machine and NumPy version: within each class, in file order, every 5th
image goes to the test set (a stratified 80/20 split: 1442 train, 355 test).
"""
import numpy

from .errors import DatasetError
from ..install_hint import require

CLASSES = [str(i) for i in range(10)]


def load():
    """(x_train, y_train, x_test, y_test, classes); x float32 (N, 1, 8, 8) in 0..1."""
    datasets = require("sklearn.datasets", "digits", "the built-in 'digits' dataset needs scikit-learn", DatasetError)
    d = datasets.load_digits()
    x = (d.images.astype(numpy.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    y = d.target.astype(numpy.int64)
    test = numpy.zeros(len(y), dtype=bool)
    for c in range(10):
        test[numpy.flatnonzero(y == c)[4::5]] = True
    return x[~test], y[~test], x[test], y[test], list(CLASSES)
