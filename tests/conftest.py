import os

os.environ.setdefault("GPUCNN_BACKEND", "numpy")

import numpy
import pytest


def _cupy_usable():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cupy_usable():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def on_cupy():
    """The CuPy backend selected for one GPU test (NumPy again after it); its value is cupy."""
    pytest.importorskip("cupy")
    from gpucnn import backend

    backend.select("cupy")
    try:
        yield backend.xp
    finally:
        backend.select("numpy")


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)
