"""Ranks started with different flags are told so, by name, before training, instead of one
rank skipping a collective the others make (gpucnn.same_run). Every mpirun runs under a
timeout: before the fix these hung at 100% CPU, or ended in MPI's "Message truncated"."""
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

from gpucnn.checkpoint import load_checkpoint, save_checkpoint
from test_distributed import HAVE_MPI4PY, MPIRUN, WORKER, _env, needs_mpirun

pytest.importorskip("sklearn")  # the built-in digits: 1,442 training images, 6 steps an epoch

TIMEOUT = 60
BASE = ["--no-progress", "--model", "small", "--batch-size", "256", "--epochs", "2"]


def two_ranks(rank0, rank1, timeout=TIMEOUT, cwd=None):
    """mpirun of two ranks, each with BASE and its own extra flags."""
    cmd = [sys.executable, WORKER, "train", *BASE]
    return subprocess.run([MPIRUN, "-n", "1", *cmd, *rank0, ":", "-n", "1", *cmd, *rank1], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=cwd)


def single(*args, cwd=None):
    r = subprocess.run([sys.executable, WORKER, "train", *BASE, *args], capture_output=True, text=True,
                       timeout=TIMEOUT, env=_env(), cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints after epoch 1 (A, B: A with other weights, and stopped: A with an early-stop
    state that stopped) and after epoch 2 (done),
    and two weight files for --init-from."""
    d = tmp_path_factory.mktemp("runs")
    single("--stop-after", "1", "--save", str(d / "a.ckpt"))
    single("--save", str(d / "done.ckpt"))
    a = load_checkpoint(d / "a.ckpt")
    save_checkpoint(d / "b.ckpt", model_state={k: v + 1 for k, v in a["model_state"].items()},
                    optim_state=a["optim_state"], meta=a["meta"])
    meta = {**a["meta"], "monitor": {"best": 0.9, "best_epoch": 1, "waited": 1, "stopped": True}}
    save_checkpoint(d / "stopped.ckpt", model_state=a["model_state"], optim_state=a["optim_state"], meta=meta)
    safetensors = pytest.importorskip("safetensors.numpy")
    for i in (0, 1):
        safetensors.save_file({k: numpy.ascontiguousarray(v + i) for k, v in a["model_state"].items()},
                              str(d / f"w{i}.safetensors"))
    return d


# (rank 0's extra flags, rank 1's, what the message must name); {d}: the files above
CASES = {
    "no-save on one rank": ([], ["--no-save"], "whether a checkpoint is written (--save, --no-save)"),
    "stop-after on one rank": ([], ["--stop-after", "1"], "--stop-after"),
    "metrics-out on one rank": ([], ["--metrics-out", "{d}/m.jsonl"], "whether metrics are written (--metrics-out)"),
    "tf32 on one rank": ([], ["--tf32"], "--tf32"),
    "graph on one rank": ([], ["--no-graph"], "--graph"),
    "resume on one rank": ([], ["--resume", "{d}/a.ckpt", "--save", "{d}/r1.ckpt"], "where the run starts (--resume"),
    "resume of a finished run on one rank": ([], ["--resume", "{d}/done.ckpt", "--save", "{d}/r1.ckpt"],
                                             "where the run starts (--resume"),
    "resume of other checkpoints": (["--resume", "{d}/a.ckpt", "--save", "{d}/r0.ckpt"],
                                    ["--resume", "{d}/b.ckpt", "--save", "{d}/r1.ckpt"],
                                    "the weights loaded (checksum)"),
    "resume with another early-stop state": (["--resume", "{d}/a.ckpt", "--save", "{d}/r0.ckpt"],
                                             ["--resume", "{d}/stopped.ckpt", "--save", "{d}/r1.ckpt"],
                                             "the early-stop state saved in the checkpoint"),
    "init-from on one rank": ([], ["--init-from", "{d}/w0.safetensors"],
                              "whether the weights come from a file (--init-from)"),
    "init-from other files": (["--init-from", "{d}/w0.safetensors"], ["--init-from", "{d}/w1.safetensors"],
                              "the weights loaded (checksum)"),
}


@needs_mpirun
@pytest.mark.parametrize("case", list(CASES))
def test_ranks_started_with_different_flags_are_told_before_training(tmp_path, files, case):
    rank0, rank1, named = CASES[case]

    def fill(flags):
        return [f.format(d=files) for f in flags]

    save = ["--save", str(tmp_path / "runs" / "run.ckpt")]
    r = two_ranks(save + fill(rank0), save + fill(rank1), cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "the ranks do not run the same training: rank 1: " in r.stderr and f"rank 1: {named}" in r.stderr, r.stderr
    assert "epoch 1/" not in r.stdout and "Traceback" not in r.stderr and "truncated" not in r.stderr
    assert [files for _, _, files in os.walk(tmp_path) if files] == []  # nothing written


@needs_mpirun
def test_ranks_on_different_backends_are_told_before_nccl_starts(tmp_path):
    """A rank whose auto backend found a GPU beside one that did not: told at launch, before
    the GPU rank sets NCCL up in collectives the other never makes."""
    cmd = [sys.executable, WORKER, "train", *BASE, "--no-save"]
    r = subprocess.run([MPIRUN, "-n", "2", *cmd], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                       env=_env(GPUCNN_TEST_BACKEND="1,cupy"))
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "rank 1: the array backend (--backend, $GPUCNN_BACKEND) is 'cupy', rank 0 has 'numpy'" in r.stderr
    assert "Traceback" not in r.stderr


@needs_mpirun
def test_flags_that_may_differ_between_ranks_still_train(tmp_path):
    """--no-progress, --device and --save paths are the rank's own (rank 0 writes)."""
    r = two_ranks(["--save", str(tmp_path / "a.ckpt")], ["--save", str(tmp_path / "b.ckpt"), "--device", "0"],
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 2/2" in r.stdout
    assert (tmp_path / "a.ckpt").exists() and not (tmp_path / "b.ckpt").exists()


@needs_mpirun
def test_dataset_by_other_paths_and_per_rank_flags_still_train(tmp_path):
    """The same .npz by another path, other --workers, --no-cache and --tensorboard-every: the
    data is compared (synchronise_start), not the path text."""
    rng = numpy.random.default_rng(0)
    data = {"x_train": rng.integers(0, 256, (96, 1, 8, 8), numpy.uint8), "y_train": rng.integers(0, 3, 96),
            "x_test": rng.integers(0, 256, (32, 1, 8, 8), numpy.uint8), "y_test": rng.integers(0, 3, 32)}
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        numpy.savez(tmp_path / where / "d.npz", **data)
    r = two_ranks(["--no-save", "--dataset", "a/d.npz", "--workers", "1", "--tensorboard", "tb"],
                  ["--no-save", "--dataset", str(tmp_path / "b" / "d.npz"), "--no-cache", "--tensorboard", "tb",
                   "--tensorboard-every", "7"],
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 2/2" in r.stdout


@needs_mpirun
def test_sigterm_to_mpirun_ends_every_rank(tmp_path):
    ckpt, pids = tmp_path / "run.ckpt", tmp_path / "pids"
    pids.mkdir()
    cmd = [MPIRUN, "-n", "2", sys.executable, WORKER, "train", *BASE[:-1], "500", "--save", str(ckpt)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(GPUCNN_TEST_PIDS=str(pids)), cwd=tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ckpt.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists(), "no epoch finished"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 143 and out.count("interrupted at epoch") == 1, (p.returncode, out, err)
    for f in pids.iterdir():  # every rank's process is gone
        with pytest.raises(ProcessLookupError):
            os.kill(int(f.read_text()), 0)


@pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py")
def test_mpi4py_without_an_mpi_library_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--no-save", "--epochs", "1"], capture_output=True,
                       text=True, timeout=TIMEOUT, cwd=tmp_path,
                       env=_env(PMI_SIZE="2", PMI_RANK="0", MPI4PY_LIBMPI=str(tmp_path / "no-libmpi.so")))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("gpucnn: error: PMI_SIZE=2 says this process was started by an MPI launcher, "
                               "but mpi4py cannot load an MPI library"), r.stderr


def test_every_flag_of_train_is_compared_or_has_a_reason():
    """A flag added later is compared until it is listed, with a reason, as one that may differ."""
    from gpucnn import cli, same_run

    args = cli.build_parser().parse_args(["train"])
    config = {"epochs": 2, "graph": True}
    facts = same_run.facts(args, config, None)
    for dest in vars(args):
        if dest in same_run.PER_RANK:
            assert same_run.PER_RANK[dest]
        elif dest in same_run.DECIDED:
            continue
        else:
            assert "--" + dest.replace("_", "-") in facts, dest
    for dest in same_run.PER_RANK:
        assert dest in vars(args) or dest in cli.TRAIN_DEFAULTS, f"{dest} is not a flag of train"


def test_paths_are_compared_by_what_they_decide():
    """--tensorboard by whether it is given; --dataset FILE or FOLDER by its kind, a built-in by name;
    the resumed early-stop state by its value."""
    from gpucnn import cli, same_run

    def facts(*argv, dataset="digits", monitor=None):
        args = cli.build_parser().parse_args(["train", *argv])
        return same_run.facts(args, {"epochs": 2, "dataset": dataset}, None, monitor)

    assert facts("--tensorboard", "/a/tb") == facts("--tensorboard", "b/tb") != facts()
    assert facts(dataset="/a/d.npz") == facts(dataset="/b/d.npz") != facts(dataset="/a/folder")
    assert facts(dataset="/a/folder") == facts(dataset="/b/other") != facts(dataset="digits") != facts(dataset="mnist")
    assert facts("--workers", "1", "--no-cache", "--tensorboard-every", "7") == facts()
    assert facts(monitor={"best": 0.5, "best_epoch": 1, "waited": 0, "stopped": False}) != facts()
