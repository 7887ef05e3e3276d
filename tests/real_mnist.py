"""Where the tests find real MNIST (the four IDX .gz files): $GPUCNN_TEST_MNIST, else
../shared/data/mnist beside the repository. The tests that need it skip without it, and say
how to enable them (conftest.py prints the same in pytest's header)."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIABLE = "GPUCNN_TEST_MNIST"
FALLBACK = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "mnist"))
MNIST = os.environ.get(VARIABLE) or FALLBACK
FOUND = os.path.isdir(MNIST)
HOW = (f"MNIST not found at {MNIST}: set {VARIABLE}=DIR, a directory holding its four IDX .gz files "
       f"(`gpucnn train --dataset mnist --download` puts them in ~/.cache/gpucnn/mnist)")

needs_mnist = pytest.mark.skipif(not FOUND, reason=HOW)


def mnist_dir():
    """The directory, or skip the calling test (in a fixture: every test that uses it)."""
    if not FOUND:
        pytest.skip(HOW)
    return MNIST
