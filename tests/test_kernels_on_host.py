"""kernels/maxpool.cu compiled as C++ and run on the CPU against the NumPy layer and the
loop reference: the kernel's own NaN and tie rules checked where no GPU is (needs g++)."""
import os
import shutil
import subprocess

import numpy
import pytest

from gpucnn import kernels
from gpucnn.layers import MaxPool2d

from helpers import close
from test_maxpool import CASES, reference, with_nans

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "host", "maxpool_on_host.cpp")

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")


@pytest.fixture(scope="module")
def maxpool_exe(tmp_path_factory):
    exe = tmp_path_factory.mktemp("host") / "maxpool"
    proc = subprocess.run(["g++", "-O1", "-std=c++17", "-Dscalar_t=double", f"-I{kernels.kernel_dir()}",
                           "-x", "c++", HARNESS, "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def run_kernel(exe, x, dy, k, s):
    kh, kw = (k, k) if isinstance(k, int) else k
    s = k if s is None else s
    sh, sw = (s, s) if isinstance(s, int) else s
    args = [str(v) for v in (*x.shape, kh, kw, sh, sw)]
    stdin = numpy.ascontiguousarray(x, numpy.float64).tobytes() + numpy.ascontiguousarray(dy, numpy.float64).tobytes()
    proc = subprocess.run([str(exe), *args], input=stdin, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    out = numpy.frombuffer(proc.stdout, numpy.uint8)
    ny, nx = dy.size, x.size
    y = out[: 8 * ny].view(numpy.float64).reshape(dy.shape)
    argmax = out[8 * ny : 12 * ny].view(numpy.int32).reshape(dy.shape)
    dx = out[12 * ny :].view(numpy.float64).reshape(x.shape)
    assert dx.size == nx
    return y, argmax, dx


@pytest.mark.parametrize("nans", [False, True], ids=["ties", "nans"])
@pytest.mark.parametrize("k,s,shape", CASES)
def test_kernel_follows_the_numpy_layer_and_the_reference(maxpool_exe, k, s, shape, nans, rng):
    x = with_nans(rng, shape) if nans else rng.integers(0, 3, size=shape).astype(numpy.float64)
    layer = MaxPool2d(k, s, dtype=numpy.float64)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    y_k, _, dx_k = run_kernel(maxpool_exe, x, dy, k, s)
    y_ref, route = reference(x, k, s)
    numpy.testing.assert_array_equal(y_k, y_ref)
    numpy.testing.assert_array_equal(y_k, y)
    close(dx_k, route(dy), rtol=1e-12)
    close(dx_k, layer.backward(dy), rtol=1e-12)


def test_kernel_argmax_is_torchs_index(maxpool_exe, rng):
    """The flat h*W + w index, as PyTorch's return_indices gives it, NaNs included."""
    torch = pytest.importorskip("torch")
    x = with_nans(rng, (2, 3, 9, 11))
    y_k, argmax, _ = run_kernel(maxpool_exe, x, numpy.zeros((2, 3, 4, 5)), 3, 2)
    yt, idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, return_indices=True)
    numpy.testing.assert_array_equal(y_k, yt.numpy())
    numpy.testing.assert_array_equal(argmax, idx.numpy())
