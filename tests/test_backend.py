"""The backend switch: GPUCNN_BACKEND=auto|numpy|cupy, chosen once at start-up."""
import os
import subprocess
import sys

import numpy
import pytest

from gpucnn import backend


def _run(env_value, code="import gpucnn.backend as b; print(b.name())"):
    env = dict(os.environ, GPUCNN_BACKEND=env_value)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_numpy_backend_is_live_in_tests():
    assert backend.name() == "numpy" and backend.xp is numpy


def test_unknown_value_lists_allowed():
    proc = _run("tensorflow")
    assert proc.returncode != 0
    assert "'tensorflow' is not a backend" in proc.stderr and "auto, numpy, cupy" in proc.stderr


def test_cupy_unusable_gives_reason():
    if backend._probe_cupy()[0] is not None:
        pytest.skip("CuPy works here")
    proc = _run("cupy")
    assert proc.returncode != 0
    assert "GPUCNN_BACKEND=cupy was asked for but CuPy cannot be used" in proc.stderr


# Where CuPy is installed but cannot run (as in the test venv without a GPU); the second
# line of code makes `import cupy` fail as where it is not installed at all.
BROKEN_CUDA = ("import cupy.cuda.runtime as r\n"
               "def fail(): raise r.CUDARuntimeError(35)  # cudaErrorInsufficientDriver\n"
               "r.getDeviceCount = fail\n")
NO_CUPY = "import sys; sys.modules['cupy'] = None\n"
CHOOSE = "import gpucnn.backend as b; print(b.name())"


def _auto(prelude, then="", **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")}
    return subprocess.run([sys.executable, "-c", prelude + CHOOSE + "\n" + then], capture_output=True, text=True,
                          env={**environ, "GPUCNN_BACKEND": "auto", **env})


def test_auto_without_cupy_installed_says_nothing():
    proc = _auto(NO_CUPY)
    assert proc.returncode == 0 and proc.stdout.strip() == "numpy" and proc.stderr == "", proc.stderr


def test_auto_with_cupy_but_no_usable_gpu_says_so_in_one_short_line():
    pytest.importorskip("cupy")
    proc = _auto(BROKEN_CUDA)
    assert proc.returncode == 0 and proc.stdout.strip() == "numpy", proc.stderr
    assert proc.stderr == "gpucnn: CuPy is installed but finds no usable GPU (cudaErrorInsufficientDriver); using NumPy\n"


def test_under_mpirun_rank_0_alone_says_it():
    pytest.importorskip("cupy")
    ranks = ("import os\n"  # imported as rank 1 of MPICH's hydra, then chosen again as others would
             "os.environ.pop('PMI_RANK'); os.environ['OMPI_COMM_WORLD_RANK'] = '2'; b.select('auto')\n"
             "os.environ['OMPI_COMM_WORLD_RANK'] = '0'; b.select('auto')\n")
    proc = _auto(BROKEN_CUDA, ranks, PMI_RANK="1")
    assert proc.returncode == 0 and proc.stderr.splitlines() == [
        "gpucnn: CuPy is installed but finds no usable GPU (cudaErrorInsufficientDriver); using NumPy"], proc.stderr


def test_cli_reports_bad_backend_without_traceback():
    if backend._probe_cupy()[0] is not None:
        pytest.skip("CuPy works here")
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "check", "--backend", "cupy"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "CuPy cannot be used" in proc.stderr


def test_to_numpy_and_to_device_round_trip():
    a = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    b = backend.to_device(a)
    assert backend.get_array_module(b) is numpy
    numpy.testing.assert_array_equal(backend.to_numpy(b), a)
    assert backend.to_device(a, numpy.float64).dtype == numpy.float64
