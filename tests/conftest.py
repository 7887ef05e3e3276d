import gc
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


def pytest_report_header(config):
    """What this run tests, and whether the MNIST tests run (both said, never silent)."""
    import real_mnist

    return [_code_under_test()[0],
            f"MNIST: {real_mnist.MNIST}" if real_mnist.FOUND else f"{real_mnist.HOW}; the tests that need it skip"]


def pytest_sessionstart(session):
    error = _code_under_test()[1]
    if error:
        pytest.exit(error, returncode=4)


def _code_under_test():
    import gpucnn
    from code_under_test import describe

    return describe(os.path.dirname(os.path.abspath(gpucnn.__file__)))


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
def fake(monkeypatch):
    """tests/fake_cupy.py installed as cupy for one test; its value is the fake's call log.
    Garbage is collected after it, so graphs and handles freed on the stand-in are freed now."""
    import fake_cupy

    log = fake_cupy.install(monkeypatch)
    yield log
    gc.collect()


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)
