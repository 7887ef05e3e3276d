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


def test_auto_falls_back_with_one_line_notice():
    if backend._probe_cupy()[0] is not None:
        pytest.skip("CuPy works here")
    proc = _run("auto")
    assert proc.returncode == 0 and proc.stdout.strip() == "numpy"
    notice = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(notice) == 1 and notice[0].startswith("gpucnn: using the NumPy backend (")


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
