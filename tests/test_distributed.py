"""Data-parallel training under mpirun (NumPy backend, MPICH from the `mpich` wheel): the
same command at 1, 2 and 3 ranks trains the same model. Every mpirun runs under a timeout,
so a hang fails the test instead of the CI job."""
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy
import pytest

from gpucnn.checkpoint import load_checkpoint
from real_mnist import mnist_dir, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
# the `mpich` wheel's, in the environment's bin/; else the one on PATH
MPIRUN = os.path.join(os.path.dirname(sys.executable), "mpirun")
if not os.path.exists(MPIRUN):
    MPIRUN = shutil.which("mpirun") or MPIRUN
TIMEOUT = 120  # seconds for one mpirun on a loaded 2-core machine; a hang ends here

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed (pip install '.[test]')")
needs_mpirun = pytest.mark.skipif(not (HAVE_MPI4PY and os.path.exists(MPIRUN)),
                                  reason=f"needs mpi4py and mpirun (beside {sys.executable} or on PATH)")

# SGD with momentum, constant rate: 31 steps an epoch (610 = 30 * 20 + 10: an uneven last batch)
RUN = ["--no-progress", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--schedule", "constant",
       "--batch-size", "20"]
# Runs that must train the same weights compute in float64: a rank sums its share of a batch
# in another order than one process, and training (a BatchNorm net most) amplifies that
# rounding by an amount that depends on the CPU and BLAS. In float64 it stays near 1e-15 (seen
# on AVX2 and AVX-512), so EXACT is 6 orders below any real difference (0.1 for per-rank BN).
F64 = ["--dtype", "float64"]
EXACT = 1e-9
# float32, one epoch at most: rounding of the split sums (seen: 2e-7). A max-pool window whose
# two largest values differ by a rounding error can route its gradient differently in the two
# runs: one such flip moves weights by about 1e-4.
TOL = 5e-4


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "SLURM_", "MV2_", "GPUCNN_TEST_"))}
    env.update(GPUCNN_BACKEND="numpy", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=ROOT, **extra)
    return env


def mpirun(n, *args, env=None, timeout=TIMEOUT):
    return subprocess.run([MPIRUN, "-n", str(n), sys.executable, WORKER, "train", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(**(env or {})))


def single(*args, env=None):
    """The same command without mpirun, in its own process with one BLAS thread as each rank
    has: BLAS sums in another order with two, and a BN net amplifies that over the steps."""
    ok(subprocess.run([sys.executable, WORKER, "train", *args], capture_output=True, text=True, timeout=TIMEOUT,
                      env=_env(**(env or {}))))


def weights(path):
    return load_checkpoint(path)["model_state"]


def max_diff(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    return max(float(numpy.abs(a[k].astype(numpy.float64) - b[k]).max()) for k in a)


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory):
    """610 training and 200 test images of real MNIST, as an .npz dataset."""
    from gpucnn.data import idx

    x_train, y_train, x_test, y_test = idx.load_dir(mnist_dir())
    path = tmp_path_factory.mktemp("data") / "mnist610.npz"
    numpy.savez(path, x_train=x_train[:610], y_train=y_train[:610], x_test=x_test[:200], y_test=y_test[:200])
    return str(path)


@pytest.fixture
def tiny_vgg():
    return {"GPUCNN_TEST_TINY_VGG": "1"}


# --- no MPI needed ------------------------------------------------------------------
def test_plain_train_never_imports_mpi4py(tmp_path):
    code = ("import sys; from gpucnn import cli; "
            "rc = cli.main(['train', '--no-progress', '--no-save', '--epochs', '1', '--batch-size', '256']); "
            "assert rc == 0, rc; assert 'mpi4py' not in sys.modules, 'mpi4py was imported'")
    pytest.importorskip("sklearn")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env(),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_launcher_sizes_from_the_environment():
    from gpucnn.distributed import launcher_size

    assert launcher_size({}) == (None, None)
    assert launcher_size({"PMI_SIZE": "4", "PMI_RANK": "1"}) == (4, "PMI_SIZE")
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "8"}) == (8, "OMPI_COMM_WORLD_SIZE")
    # srun sets the step's task count; an sbatch script alone (SLURM_NTASKS only) is no launch
    assert launcher_size({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) == (None, None)
    assert launcher_size({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"}) == \
        (2, "SLURM_STEP_NUM_TASKS")
    # mpirun inside a Slurm step: mpirun's own variables describe the job
    assert launcher_size({"PMI_SIZE": "3", "SLURM_STEP_NUM_TASKS": "1"}) == (3, "PMI_SIZE")
    assert launcher_size({"PMIX_RANK": "0"}) == (0, "PMIX_RANK")


def test_ranks_on_one_machine_share_its_cores():
    from gpucnn.distributed import _share_cores

    env = {}
    _share_cores(2, env, numpy_loaded=False)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    mine = {"OMP_NUM_THREADS": "3"}
    _share_cores(2, mine, numpy_loaded=False)
    assert mine == {"OMP_NUM_THREADS": "3"}  # the user's choice stands
    late = {}
    _share_cores(2, late, numpy_loaded=True)  # too late to matter: set nothing
    assert late == {}


def test_shares_cover_a_batch_once_in_order():
    from gpucnn.data.batches import iterate, share

    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            bounds = [share(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    rng = numpy.random.default_rng(0)
    x = rng.integers(0, 255, size=(23, 3, 8, 8)).astype(numpy.uint8)
    y = rng.integers(0, 10, size=23)
    kw = dict(shuffle=True, seed=3, epoch=2, mean=0.5, std=0.25, augment=True)
    whole = list(iterate(x, y, 10, **kw))
    parts = [list(iterate(x, y, 10, shard=(r, 3), **kw)) for r in range(3)]
    for k, (xb, yb) in enumerate(whole):
        numpy.testing.assert_array_equal(numpy.concatenate([p[k][0] for p in parts]), xb)
        numpy.testing.assert_array_equal(numpy.concatenate([p[k][1] for p in parts]), yb)


@needs_mpi4py
def test_launcher_and_mpi4py_disagree_is_a_clear_error(tmp_path):
    # every process would say "rank 0 of 1" while the launcher's variables say 4
    r = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--no-save", "--epochs", "1"], capture_output=True,
                       text=True, timeout=60, env=_env(OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_RANK="0"),
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "started 4 ranks" in r.stderr and "mpi4py" in r.stderr and "sees 1" in r.stderr


@needs_mpi4py
def test_distributed_flag_without_a_launcher_is_an_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--distributed", "--no-save"], capture_output=True,
                       text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert r.returncode == 2 and "--distributed" in r.stderr and "mpirun -n 2" in r.stderr, r.stderr


@pytest.mark.parametrize("affine", [True, False])
def test_sync_bn_hook_gives_the_whole_batch_statistics(affine):
    """Two 'ranks' in threads, each a BatchNorm2d on its share, summing through a barrier:
    outputs, input gradients and summed parameter gradients equal one layer on the whole batch."""
    import threading

    from gpucnn.layers import BatchNorm2d

    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((7, 3, 4, 5)) * 3 + 2
    dy = rng.standard_normal(x.shape)
    whole = BatchNorm2d(3, affine=affine, dtype=numpy.float64)
    y_ref, dx_ref = whole.forward(x), whole.backward(dy)
    barrier, box = threading.Barrier(2), {}

    def reduce(buf, rank):
        box[rank] = buf.copy()
        barrier.wait()
        buf[...] = box[0] + box[1]
        barrier.wait()

    results = {}

    def rank_run(rank, lo, hi):
        bn = BatchNorm2d(3, affine=affine, dtype=numpy.float64)
        bn.reduce = functools.partial(reduce, rank=rank)
        results[rank] = (bn.forward(x[lo:hi]), bn.backward(dy[lo:hi]), bn.grads, bn.running_var.copy())

    threads = [threading.Thread(target=rank_run, args=a) for a in ((0, 0, 4), (1, 4, 7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    numpy.testing.assert_allclose(numpy.concatenate([results[0][0], results[1][0]]), y_ref, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(numpy.concatenate([results[0][1], results[1][1]]), dx_ref, rtol=1e-9, atol=1e-12)
    assert set(results[0][2]) == set(whole.grads) == ({"weight", "bias"} if affine else set())
    for name in whole.grads:
        numpy.testing.assert_allclose(results[0][2][name] + results[1][2][name], whole.grads[name], rtol=1e-10)
    numpy.testing.assert_allclose(results[0][3], whole.running_var, rtol=1e-12)


# the NCCL and MPI stand-ins live in tests/fake_nccl.py (tests/test_graph_nccl.py uses them too)
from fake_nccl import FakeDeviceArray as _FakeDeviceArray, FakeMpiComm as _FakeMpiComm, FakeNccl as _FakeNccl  # noqa: E402


def test_nccl_communicator_calls_nccl_in_place_on_the_current_stream():
    from gpucnn.distributed import NCCLCommunicator

    nccl = _FakeNccl()
    mpi = type("MPI", (), {"COMM_TYPE_SHARED": 1})
    comm = NCCLCommunicator(_FakeMpiComm(rank=0, size=2), mpi, nccl=nccl, stream_ptr=lambda: 77)
    assert nccl.calls[0] == ("init", 2, (1, 2, 3), 0) and comm.comm.bcasts == [(1, 2, 3)]
    comm.allreduce(_FakeDeviceArray(10, numpy.float32, ptr=1234))
    assert nccl.calls[-1] == ("allReduce", 1234, 1234, 10, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 77)
    comm.allreduce(_FakeDeviceArray(5, numpy.float64, ptr=99))
    assert nccl.calls[-1][3:5] == (5, nccl.NCCL_FLOAT64)
    comm.broadcast(_FakeDeviceArray(3, numpy.int64, ptr=8), root=0)
    assert nccl.calls[-1] == ("bcast", 8, 3, nccl.NCCL_INT64, 0, 77)
    with pytest.raises(TypeError, match="contiguous"):
        comm.allreduce(_FakeDeviceArray(3, numpy.complex64))
    # a rank other than 0 takes the id rank 0 broadcasts, and does not make one
    other = NCCLCommunicator(_FakeMpiComm(rank=1, size=2), mpi, nccl=nccl, stream_ptr=lambda: 0)
    assert nccl.calls[-1] == ("init", 2, None, 1) and other.comm.bcasts == [None]


def test_ranks_sharing_a_gpu_are_refused_unless_nccl_allows_it():
    from gpucnn.distributed import RanksDisagree, check_gpu_sharing

    apart = [("node1", "0000:01:00.0"), ("node1", "0000:02:00.0"), ("node2", "0000:01:00.0")]
    check_gpu_sharing(apart, 22800, {})  # same bus id on another machine is another GPU
    shared = apart + [("node1", "0000:02:00.0")]
    with pytest.raises(RanksDisagree, match=r"ranks 1, 3 all use the GPU at 0000:02:00.0 on node1.*NCCL 22800"):
        check_gpu_sharing(shared, 22800, {"NCCL_MULTI_RANK_GPU_ENABLE": "1"})
    with pytest.raises(RanksDisagree, match="set NCCL_MULTI_RANK_GPU_ENABLE=1"):
        check_gpu_sharing(shared, 23007, {})
    check_gpu_sharing(shared, 23007, {"NCCL_MULTI_RANK_GPU_ENABLE": "1"})


# --- under mpirun -----------------------------------------------------------------------
@needs_mpirun
@needs_mnist
@pytest.mark.parametrize("ranks", [2, 3])
def test_lenet_at_several_ranks_equals_one_process(tmp_path, mnist_npz, ranks):
    """310 steps of LeNet on 610 MNIST images (uneven last batch of 10; at 3 ranks shares of
    7, 7, 6 and 4, 3, 3): the weights equal the single process's with the same global batch."""
    args = [*RUN, "--model", "lenet", "--dataset", mnist_npz, "--epochs", "10", *F64]
    single(*args, "--save", str(tmp_path / "one.ckpt"), "--metrics-out", str(tmp_path / "one.jsonl"))
    r = ok(mpirun(ranks, *args, "--save", str(tmp_path / "many.ckpt"), "--metrics-out", str(tmp_path / "many.jsonl")))
    assert f"{ranks} ranks (global batch 20)" in r.stdout
    assert r.stdout.count("epoch 10/10") == 1  # rank 0 alone prints
    assert max_diff(tmp_path / "one.ckpt", tmp_path / "many.ckpt") < EXACT
    import json

    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    many = [json.loads(line) for line in (tmp_path / "many.jsonl").read_text().splitlines()]
    assert len(many) == 10  # rank 0 alone writes metrics
    for a, b in zip(one, many):  # the whole job's loss and accuracy, the whole test set once
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
        assert abs(b["train_acc"] - a["train_acc"]) <= 2 / 610 and abs(b["test_acc"] - a["test_acc"]) <= 2 / 200


@needs_mpirun
@needs_mnist
@pytest.mark.parametrize("dtype,epochs,bound", [("float64", "3", EXACT), ("float32", "1", TOL)])
def test_vgg_bn_with_sync_bn_equals_one_process_and_without_it_differs(tmp_path, mnist_npz, tiny_vgg, dtype, epochs,
                                                                        bound):
    """In float64 over 3 epochs; in float32 over one, before this small BN net amplifies
    rounding (float32, 3 epochs: 2e-7 grows to 2e-2 on some CPUs)."""
    args = [*RUN, "--momentum", "0", "--lr", "0.02", "--model", "vgg_bn", "--dataset", mnist_npz, "--epochs", epochs,
            "--dtype", dtype]
    single(*args, "--save", str(tmp_path / "one.ckpt"), env=tiny_vgg)
    ok(mpirun(2, *args, "--sync-bn", "--save", str(tmp_path / "sync.ckpt"), env=tiny_vgg))
    ok(mpirun(2, *args, "--save", str(tmp_path / "local.ckpt"), env=tiny_vgg))
    synced, local = max_diff(tmp_path / "one.ckpt", tmp_path / "sync.ckpt"), max_diff(tmp_path / "one.ckpt",
                                                                                      tmp_path / "local.ckpt")
    # seen: synced 7e-16 (float64) and 2e-7 (float32); local 0.1 (per-rank statistics: another run)
    assert synced < bound and local > 1e-2, (synced, local)


@needs_mpirun
@needs_mnist
def test_dataset_smaller_than_ranks_times_batch(tmp_path, mnist_npz, tiny_vgg):
    """5 images, global batch 4, 3 ranks: shares 2, 1, 1 then 1, 0, 0 (two ranks with
    nothing join every collective, BatchNorm's included)."""
    data = numpy.load(mnist_npz)
    small = tmp_path / "five.npz"
    numpy.savez(small, x_train=data["x_train"][:5], y_train=data["y_train"][:5], x_test=data["x_test"][:2],
                y_test=data["y_test"][:2])
    for model, extra in (("vgg_bn", ["--sync-bn"]), ("lenet", [])):
        args = [*RUN[:-1], "4", "--model", model, "--dataset", str(small), "--epochs", "4", *extra, *F64]
        single(*args, "--save", str(tmp_path / f"one-{model}.ckpt"), env=tiny_vgg)
        ok(mpirun(3, *args, "--save", str(tmp_path / f"many-{model}.ckpt"), env=tiny_vgg))
        assert max_diff(tmp_path / f"one-{model}.ckpt", tmp_path / f"many-{model}.ckpt") < EXACT, model
    # per-rank BatchNorm: a rank with an empty share leaves its running statistics alone
    args = [*RUN[:-1], "4", "--model", "vgg_bn", "--dataset", str(small), "--epochs", "2"]
    ok(mpirun(3, *args, "--save", str(tmp_path / "local.ckpt"), env=tiny_vgg))
    state = weights(tmp_path / "local.ckpt")
    assert all(numpy.isfinite(v).all() for v in state.values())


@needs_mpirun
@needs_mnist
def test_resume_at_another_number_of_ranks(tmp_path, mnist_npz):
    args = [*RUN, "--model", "lenet", "--dataset", mnist_npz, "--epochs", "4", *F64]
    single(*args, "--save", str(tmp_path / "straight.ckpt"))
    # one rank, then two
    single(*args, "--stop-after", "2", "--save", str(tmp_path / "a.ckpt"))
    r = ok(mpirun(2, "--no-progress", "--resume", str(tmp_path / "a.ckpt"), "--save", str(tmp_path / "a.ckpt")))
    assert "resuming" in r.stdout and "epoch 4/4" in r.stdout
    # two ranks, then one
    ok(mpirun(2, *args, "--stop-after", "2", "--save", str(tmp_path / "b.ckpt")))
    assert load_checkpoint(tmp_path / "b.ckpt")["meta"]["epoch"] == 2
    single("--no-progress", "--resume", str(tmp_path / "b.ckpt"), "--save", str(tmp_path / "b.ckpt"))
    assert max_diff(tmp_path / "straight.ckpt", tmp_path / "a.ckpt") < EXACT
    assert max_diff(tmp_path / "straight.ckpt", tmp_path / "b.ckpt") < EXACT


@needs_mpirun
@needs_mnist
def test_stopped_mid_epoch_at_two_ranks_resumed_at_three(tmp_path, mnist_npz):
    """Ctrl-C on rank 1 during its 40th step (epoch 2, step 9; the step's stop flag was
    already set, so the next one carries it): all stop after step 10, one checkpoint; three
    ranks finish the run from there as one process would have."""
    args = [*RUN, "--model", "lenet", "--dataset", mnist_npz, "--epochs", "3", *F64]
    single(*args, "--save", str(tmp_path / "straight.ckpt"))
    r = mpirun(2, *args, "--save", str(tmp_path / "split.ckpt"), env={"GPUCNN_TEST_SIGINT": "1,40"})
    assert r.returncode == 130 and "interrupted at epoch 2, step 10" in r.stdout, r.stdout + r.stderr
    meta = load_checkpoint(tmp_path / "split.ckpt")["meta"]
    assert (meta["epoch"], meta["step"]) == (1, 10)
    ok(mpirun(3, "--no-progress", "--resume", str(tmp_path / "split.ckpt"), "--save", str(tmp_path / "split.ckpt")))
    assert max_diff(tmp_path / "straight.ckpt", tmp_path / "split.ckpt") < EXACT


@needs_mpirun
@needs_mnist
def test_a_rank_that_raises_ends_the_job_within_seconds(tmp_path, mnist_npz):
    r = mpirun(2, *RUN, "--model", "lenet", "--dataset", mnist_npz, "--epochs", "50", "--no-save",
               env={"GPUCNN_TEST_FAIL": "1,5"}, timeout=60)
    ended = time.time()
    assert r.returncode != 0
    assert "injected failure at step 5" in r.stderr and "rank 1 of 2" in r.stderr, r.stderr
    assert "epoch 50/50" not in r.stdout and r.stdout.count("gpucnn: lenet") == 1
    raised = float(r.stderr.split("injected failure at step 5, time ")[1].split()[0].rstrip(");"))
    assert ended - raised < 10, ended - raised  # rank 0 was waiting in the step's all-reduce


@needs_mpirun
@needs_mnist
def test_sigint_to_mpirun_saves_one_checkpoint_and_every_rank_exits(tmp_path, mnist_npz):
    ckpt = tmp_path / "run.ckpt"
    cmd = [MPIRUN, "-n", "2", sys.executable, WORKER, "train", *RUN, "--model", "lenet", "--dataset", mnist_npz,
           "--epochs", "200", "--save", str(ckpt)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ckpt.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)  # the first epoch's checkpoint: training is under way
        assert ckpt.exists(), "no epoch finished"
        first = load_checkpoint(ckpt)["meta"]
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert out.count("interrupted at epoch") == 1, out + err
    assert "checkpoint saved to" in out
    meta = load_checkpoint(ckpt)["meta"]
    assert (meta["epoch"], meta["step"]) > (first["epoch"], first["step"])
    assert p.returncode != 0 and "Traceback" not in err, err
    assert [f for f in os.listdir(tmp_path) if f != "run.ckpt"] == []  # no stray temporaries


@needs_mpirun
@needs_mnist
def test_sigint_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, mnist_npz):
    ckpt, pids = tmp_path / "run.ckpt", tmp_path / "pids"
    pids.mkdir()
    cmd = [MPIRUN, "-n", "2", sys.executable, WORKER, "train", *RUN, "--model", "lenet", "--dataset", mnist_npz,
           "--epochs", "200", "--save", str(ckpt)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(GPUCNN_TEST_PIDS=str(pids)))
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ckpt.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists(), "no epoch finished"
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGINT)  # rank 1 alone sees Ctrl-C
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert out.count("interrupted at epoch") == 1 and "checkpoint saved to" in out, out + err
    assert p.returncode == 130 and "Traceback" not in err, (p.returncode, err)


@needs_mpirun
@needs_mnist
def test_ranks_launched_with_different_runs_are_told_not_hung(tmp_path, mnist_npz):
    common = [sys.executable, WORKER, "train", *RUN, "--model", "lenet", "--dataset", mnist_npz, "--no-save"]
    r = subprocess.run([MPIRUN, "-n", "1", *common, "--seed", "0", ":", "-n", "1", *common, "--seed", "1"],
                       capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert r.returncode == 2, r.stderr
    assert "do not run the same training" in r.stderr and "rank 1" in r.stderr and "seed" in r.stderr


RECIPE = ["--label-smoothing", "0.1", "--tta", "--ema", "0.9"]


def _eval_loss(ckpt, *flags):
    out = subprocess.run([sys.executable, WORKER, "eval", "--checkpoint", str(ckpt), *flags], capture_output=True,
                         text=True, timeout=TIMEOUT, env=_env(GPUCNN_TEST_TINY_VGG="1"))
    ok(out)
    return float(out.stdout.split(": loss ")[1].split(",")[0])


@needs_mpirun
@needs_mnist
def test_ema_and_tta_at_two_ranks_evaluate_and_save_one_model(tmp_path, mnist_npz, tiny_vgg):
    """Per-rank BatchNorm: the EMA's copy of the running statistics is the ranks' average, as
    the net's is, so the epoch line's ema_test_loss (sharded, with TTA) is what eval --ema
    of the checkpoint measures in one process."""
    import json

    ckpt, log = tmp_path / "run.ckpt", tmp_path / "m.jsonl"
    args = [*RUN, "--model", "vgg_bn", "--dataset", mnist_npz, "--epochs", "1", *RECIPE]
    ok(mpirun(2, *args, "--save", str(ckpt), "--metrics-out", str(log), env=tiny_vgg))
    saved = load_checkpoint(ckpt)
    for key, live in saved["model_state"].items():
        if "running" in key:
            numpy.testing.assert_array_equal(saved["meta"]["ema"][key], live, err_msg=key)
    row = json.loads(log.read_text().splitlines()[-1])
    assert _eval_loss(ckpt) == pytest.approx(row["test_loss"], abs=1e-4)
    assert _eval_loss(ckpt, "--ema") == pytest.approx(row["ema_test_loss"], abs=1e-4)


@needs_mpirun
@needs_mnist
def test_recipe_run_stopped_at_two_ranks_resumed_at_three_equals_one_process(tmp_path, mnist_npz, tiny_vgg):
    args = [*RUN, "--momentum", "0", "--lr", "0.02", "--model", "vgg_bn", "--dataset", mnist_npz, "--epochs", "2",
            "--schedule", "onecycle", "--sync-bn", *RECIPE, *F64]
    single(*args, "--save", str(tmp_path / "straight.ckpt"), env=tiny_vgg)
    ok(mpirun(2, *args, "--stop-after", "1", "--save", str(tmp_path / "split.ckpt"), env=tiny_vgg))
    r = ok(mpirun(3, "--no-progress", "--resume", str(tmp_path / "split.ckpt"), "--save", str(tmp_path / "split.ckpt"),
                  env=tiny_vgg))
    assert "resuming" in r.stdout and "ema_test_acc" in r.stdout
    a, b = load_checkpoint(tmp_path / "straight.ckpt"), load_checkpoint(tmp_path / "split.ckpt")
    assert {k: b["meta"]["config"][k] for k in ("label_smoothing", "tta", "ema", "schedule", "sync_bn", "dtype")} == \
        {"label_smoothing": 0.1, "tta": True, "ema": 0.9, "schedule": "onecycle", "sync_bn": True, "dtype": "float64"}
    assert max_diff(tmp_path / "straight.ckpt", tmp_path / "split.ckpt") < EXACT
    assert max(float(numpy.abs(a["meta"]["ema"][k].astype(numpy.float64) - b["meta"]["ema"][k]).max())
               for k in a["meta"]["ema"]) < EXACT


@needs_mpirun
def test_bench_dist_runs_its_three_cases(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_dist.py"), "--models", "small",
                        "--steps", "2", "--json", str(out)], capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    (row,) = json.loads(out.read_text())
    assert row["model"] == "small" and row["grad_bytes"] == 4 * row["params"] and row["allreduce_ms"] > 0


def test_dropout_masks_of_the_shares_are_slices_of_the_whole_batch_mask(rng):
    """Each rank's Dropout mask counts its elements from the rank's first row in the global
    batch (GradientSync.announce sets it), so the ranks together drop what one process drops."""
    from gpucnn import distributed
    from gpucnn.data.batches import share
    from gpucnn.layers import Dropout, Linear
    from gpucnn.sequential import Sequential

    x = rng.standard_normal((7, 5)).astype(numpy.float32)
    whole = Dropout(0.5, seed=11).forward(x)
    rank_of_three = type("Rank", (distributed.Single,), {"rank": 1, "size": 3})()
    model = Sequential(Linear(5, 5), Dropout(0.5, seed=11))
    sync = distributed.GradientSync(rank_of_three, model, numpy)
    one = numpy.zeros(1, dtype=numpy.int64)
    batches = [(x[:1], one), (x[:1], one)]  # global batches of 4 and 2: rank 1 takes row 2, then row 1
    starts = [int(model[1].first_row) for _ in sync.announce(iter(batches), 6, 4, 0, None)]
    assert starts == [2, 1]
    for lo, hi in (share(7, r, 3) for r in range(3)):
        layer = Dropout(0.5, seed=11)
        layer.first_row[...] = lo
        numpy.testing.assert_array_equal(layer.forward(x[lo:hi]), whole[lo:hi])
