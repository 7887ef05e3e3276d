"""GPU: gradients summed by NCCL (cupy.cuda.nccl) give NumPy's training, eagerly and inside a
captured CUDA graph; two ranks sharing one GPU where the installed NCCL allows it.
Skipped without CuPy and a CUDA device."""
import contextlib
import os
import shutil
import subprocess
import sys

import numpy
import pytest

from gpucnn import backend, init, models
from gpucnn.optim import SGD
from gpucnn.train import make_step
from real_mnist import mnist_dir

pytestmark = pytest.mark.gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the `mpich` wheel's, in the environment's bin/; else the one on PATH
MPIRUN = os.path.join(os.path.dirname(sys.executable), "mpirun")
if not os.path.exists(MPIRUN):
    MPIRUN = shutil.which("mpirun") or MPIRUN


def _nccl_version():
    from cupy.cuda import nccl

    return nccl.get_version()


def _run(batches, comm=None, use_graph=False):
    from gpucnn import distributed

    init.seed(0)
    model = models.build("lenet", (1, 28, 28), 10, dtype=batches[0][0].dtype)
    sync = distributed.GradientSync(comm, model, backend.xp) if comm is not None else None
    step = make_step(model, SGD(model.parameters(), lr=0.05, momentum=0.9), use_graph, sync=sync)
    stream = getattr(step, "stream", None)
    backend.synchronize()
    if sync is not None:
        batches = sync.announce(iter(batches), 16 * len(batches), 16, 0, None)
    losses = []
    # announce writes the gradient scale as the loop takes a batch: on the step's stream, as
    # fit() does (a non-blocking stream does not wait for the null stream's writes)
    with stream if stream is not None else contextlib.nullcontext():
        for x, y in batches:
            loss, _ = step(backend.to_device(x), backend.to_device(y))
            losses.append(float(loss))
    return numpy.array(losses), model.state_dict()


@pytest.mark.parametrize("use_graph", [False, True])
def test_one_rank_nccl_equals_numpy(on_cupy, use_graph):
    mpi4py = pytest.importorskip("mpi4py")  # noqa: F841
    from mpi4py import MPI

    from gpucnn.distributed import NCCLCommunicator

    rng = numpy.random.default_rng(0)
    # float64: the GPU and the CPU sum in different orders, which float32 steps amplify by the CPU's own amount
    batches = [(rng.standard_normal((16, 1, 28, 28)), rng.integers(0, 10, 16)) for _ in range(6)]
    comm = NCCLCommunicator(MPI.COMM_WORLD, MPI)  # a singleton: NCCL with one rank
    gpu_losses, gpu_state = _run(batches, comm, use_graph)
    backend.select("numpy")
    cpu_losses, cpu_state = _run(batches)
    numpy.testing.assert_allclose(gpu_losses, cpu_losses, rtol=2e-8)
    for k in cpu_state:
        numpy.testing.assert_allclose(gpu_state[k], cpu_state[k], rtol=1e-7, atol=1e-9, err_msg=k)


def test_two_ranks_on_one_gpu_equal_one_process(on_cupy, tmp_path):
    if not os.path.exists(MPIRUN):
        pytest.skip(f"no mpirun beside {sys.executable} or on PATH")
    version = _nccl_version()
    if version < 23000:
        pytest.skip(f"NCCL {version} refuses two ranks on one GPU (NCCL_MULTI_RANK_GPU_ENABLE needs NCCL >= 2.30)")
    mnist = mnist_dir()
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.data import idx

    x_train, y_train, x_test, y_test = idx.load_dir(mnist)
    data = tmp_path / "m.npz"
    numpy.savez(data, x_train=x_train[:640], y_train=y_train[:640], x_test=x_test[:200], y_test=y_test[:200])
    args = ["-m", "gpucnn", "train", "--no-progress", "--model", "lenet", "--dataset", str(data), "--epochs", "3",
            "--optimizer", "sgd", "--lr", "0.01", "--schedule", "constant", "--batch-size", "32",
            "--dtype", "float64"]  # 60 steps on two devices' summation orders: equal to rounding in float64
    env = dict(os.environ, PYTHONPATH=ROOT, NCCL_MULTI_RANK_GPU_ENABLE="1")
    r = subprocess.run([sys.executable, *args, "--backend", "numpy", "--save", str(tmp_path / "cpu.ckpt")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([MPIRUN, "-n", "2", sys.executable, *args, "--backend", "cupy", "--device", "0",
                        "--save", str(tmp_path / "gpu.ckpt")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 ranks" in r.stdout and "CUDA graphs" in r.stdout
    a, b = load_checkpoint(tmp_path / "cpu.ckpt")["model_state"], load_checkpoint(tmp_path / "gpu.ckpt")["model_state"]
    for k in a:
        numpy.testing.assert_allclose(b[k], a[k], rtol=1e-7, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("sync", [False, True])
def test_batchnorm_on_an_empty_share(on_cupy, sync):
    """A rank whose share of the last batch is empty still runs BatchNorm's forward and
    backward (per-rank: m = 0; --sync-bn: the other ranks' count)."""
    from gpucnn.layers import BatchNorm2d

    bn = BatchNorm2d(3)
    if sync:
        bn.reduce = lambda buf: buf.__setitem__(-1, 4) if buf.size % 2 else None  # another rank had 4 values
    x = backend.to_device(numpy.zeros((0, 3, 2, 2), numpy.float32))
    y = bn.forward(x)
    dx = bn.backward(y)
    assert dx.shape == x.shape and numpy.isfinite(backend.to_numpy(bn.running_var)).all()
