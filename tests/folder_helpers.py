"""Small folders of real MNIST digits, written as image files at test time."""
import os

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIRS = ("/work/shared/data/mnist", os.path.join(ROOT, "..", "shared", "data", "mnist"))


def mnist(n_train=200, n_test=60):
    """(x_train (n, 28, 28) uint8, y_train, x_test, y_test) of real MNIST; skips the test if absent."""
    from gpucnn.data import idx

    directory = next((d for d in MNIST_DIRS if os.path.isdir(d)), None)
    if directory is None:
        pytest.skip("real MNIST not present (shared/data/mnist)")
    x = idx.read_images(idx.find(directory, idx.FILES["train_images"]))[:n_train, 0]
    y = idx.read_labels(idx.find(directory, idx.FILES["train_labels"]), 10)[:n_train]
    xt = idx.read_images(idx.find(directory, idx.FILES["test_images"]))[:n_test, 0]
    yt = idx.read_labels(idx.find(directory, idx.FILES["test_labels"]), 10)[:n_test]
    return x, y, xt, yt


def write_split(directory, x, y, ext="png", nested=False, **save):
    """Each digit as directory/<label>/[sub/]NNNN.ext; returns {path: (image, label)}."""
    from PIL import Image

    written = {}
    for i, (im, label) in enumerate(zip(x, y)):
        folder = os.path.join(directory, str(label), f"part{i % 2}" if nested else "")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:04d}.{ext}")
        Image.fromarray(im).save(path, **save)
        written[path] = (im, int(label))
    return written


def expected_arrays(written):
    """(x (N, 1, 28, 28), y) in the loader's order: classes sorted by name, paths sorted within."""
    order = sorted(written, key=lambda p: (str(written[p][1]), p))
    return (numpy.stack([written[p][0] for p in order])[:, None],
            numpy.array([written[p][1] for p in order]), order)


def tree(root):
    """{relative path: (size, mtime_ns)} of everything under root: to show nothing was written."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(top, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out
