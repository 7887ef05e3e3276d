"""gpucnn train --tensorboard DIR: the event files, read back with TensorBoard's own
EventAccumulator, hold the values of the same run's --metrics-out file; a resumed run goes
on with the step numbers; the directory is checked like every output."""
import json
import os
import shutil
import subprocess
import sys

import numpy
import pytest

from gpucnn import cli

pytest.importorskip("sklearn")  # the built-in digits dataset: 1,442 training images, 12 steps of 128
pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

RUN = ["train", "--no-progress", "--batch-size", "128", "--epochs", "3"]
STEPS = 12  # per epoch: ceil(1442 / 128)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scalars(directory):
    acc = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_hold_the_metrics_file_and_a_resume_goes_on_counting(tmp_path, capsys):
    tb, m, ckpt = tmp_path / "tb", tmp_path / "m.jsonl", tmp_path / "c.ckpt"
    common = [*RUN, "--save", str(ckpt), "--metrics-out", str(m), "--tensorboard", str(tb), "--tensorboard-every", "1"]
    assert cli.main([*common, "--stop-after", "2"]) == 0
    assert cli.main([*common, "--resume", str(ckpt)]) == 0
    capsys.readouterr()
    assert len(os.listdir(tb)) == 2  # one event file per process, none replaced
    acc, tags = scalars(tb)
    epochs = rows(m)
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for r in epochs:  # every number of the epoch record, at the step that ends the epoch
        for key, value in r.items():
            assert tags[f"epoch/{key}"][r["epoch"] - 1] == (r["epoch"] * STEPS, pytest.approx(value, rel=1e-6))
    # every step once, in order, across the stop and the resume
    assert [s for s, _ in tags["step/train_loss"]] == list(range(1, 3 * STEPS + 1))
    # the per-step losses, weighted by batch size, are the epoch's train_loss (11 x 128 + 34 images)
    sizes = [128] * (STEPS - 1) + [1442 - 128 * (STEPS - 1)]
    for r in epochs:
        losses = [v for s, v in tags["step/train_loss"] if (r["epoch"] - 1) * STEPS < s <= r["epoch"] * STEPS]
        assert sum(l * n for l, n in zip(losses, sizes)) / 1442 == pytest.approx(r["train_loss"], rel=1e-5)
    assert tags["step/lr"][3 * STEPS - 1][1] == pytest.approx(epochs[-1]["lr"], rel=1e-6)
    assert tags["step/lr"][0][1] > tags["step/lr"][-1][1]  # cosine: the rate went down
    hparams = _hparams(acc)
    assert hparams["model"] == "small" and hparams["epochs"] == 3 and hparams["lr"] == pytest.approx(2e-3)
    assert hparams["batch_size"] == 128 and hparams["schedule"] == "cosine"


def _hparams(acc):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def test_a_resume_hides_what_a_crashed_run_logged_past_its_checkpoint(tmp_path, capsys):
    from tensorboardX import SummaryWriter

    tb, ckpt = tmp_path / "tb", tmp_path / "c.ckpt"
    common = [*RUN, "--save", str(ckpt), "--tensorboard", str(tb), "--tensorboard-every", "4"]
    assert cli.main([*common, "--stop-after", "1"]) == 0
    # More events from the same run, as if it had been killed after its checkpoint (named like
    # the file of a run that started at step 0, so it sorts before the resume's, as in life)
    with SummaryWriter(str(tb), filename_suffix=".000000000000.1") as w:
        for step in range(STEPS + 1, STEPS + 8):
            w.add_scalar("step/train_loss", 99.0, step)
    assert cli.main([*common, "--resume", str(ckpt)]) == 0
    capsys.readouterr()
    _, tags = scalars(tb)
    assert [s for s, _ in tags["step/train_loss"]] == list(range(4, 3 * STEPS + 1, 4))
    assert 99.0 not in [v for _, v in tags["step/train_loss"]]
    assert [s for s, _ in tags["epoch/test_acc"]] == [STEPS, 2 * STEPS, 3 * STEPS]


def test_a_new_run_refuses_a_directory_with_events_or_a_file(tmp_path, capsys):
    tb = tmp_path / "tb"
    assert cli.main([*RUN, "--epochs", "1", "--no-save", "--tensorboard", str(tb)]) == 0
    before = sorted(os.listdir(tb))
    assert cli.main([*RUN, "--epochs", "1", "--no-save", "--tensorboard", str(tb)]) == 2
    err = capsys.readouterr().err
    assert "already holds TensorBoard event files" in err and "--resume" in err
    assert sorted(os.listdir(tb)) == before
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert cli.main([*RUN, "--no-save", "--tensorboard", str(mine)]) == 2
    assert "is not a directory" in capsys.readouterr().err and mine.read_text() == "mine"
    (tmp_path / "other" / "data.txt").parent.mkdir()
    (tmp_path / "other" / "data.txt").write_text("kept")  # a directory of other files is fine
    assert cli.main([*RUN, "--epochs", "1", "--no-save", "--tensorboard", str(tmp_path / "other")]) == 0
    assert (tmp_path / "other" / "data.txt").read_text() == "kept"


def test_bad_every_and_a_missing_tensorboardx_are_told_before_any_work(tmp_path, monkeypatch, capsys):
    assert cli.main([*RUN, "--no-save", "--tensorboard", str(tmp_path / "tb"), "--tensorboard-every", "0"]) == 2
    assert "--tensorboard-every must be at least 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now raises ImportError
    assert cli.main([*RUN, "--no-save", "--tensorboard", str(tmp_path / "tb")]) == 2
    assert 'pip install ".[tensorboard]"' in capsys.readouterr().err
    assert not (tmp_path / "tb").exists()
    assert cli.main([*RUN, "--no-save", "--tensorboard-every", "5"]) == 2  # would log nothing, in silence
    assert "--tensorboard-every applies only with --tensorboard DIR" in capsys.readouterr().err


MPIRUN = os.path.join(os.path.dirname(sys.executable), "mpirun")


@pytest.mark.skipif(not (shutil.which(MPIRUN) and __import__("importlib").util.find_spec("mpi4py")),
                    reason="needs mpi4py and the mpich wheel's mpirun")
def test_under_mpirun_rank_0_alone_writes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "SLURM_"))}
    env.update(GPUCNN_BACKEND="numpy", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=ROOT)
    r = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-m", "gpucnn", *RUN, "--epochs", "1", "--no-save",
                        "--tensorboard", str(tmp_path / "tb"), "--tensorboard-every", "1", "--metrics-out", str(tmp_path / "m.jsonl")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(os.listdir(tmp_path / "tb")) == 1
    _, tags = scalars(tmp_path / "tb")
    (row,) = rows(tmp_path / "m.jsonl")
    assert tags["epoch/test_acc"] == [(STEPS, pytest.approx(row["test_acc"], rel=1e-6))]
    # each step's loss is the whole batch's, not rank 0's share: together they make the epoch's
    losses = [v for _, v in tags["step/train_loss"]]
    assert len(losses) == STEPS
    assert (sum(losses[:-1]) * 128 + losses[-1] * (1442 - 128 * (STEPS - 1))) / 1442 == pytest.approx(row["train_loss"], rel=1e-5)


class _CountedLoss(numpy.ndarray):
    """A 0-d loss that counts how often it is read back (float()), as a device scalar would sync."""
    reads = 0

    def __float__(self):
        type(self).reads += 1
        return float(self.view(numpy.ndarray))


class _Recorder:
    def __init__(self):
        self.steps = []

    def step(self, step, values):
        self.steps.append((step, values))

    def epoch(self, row, step):
        pass

    def close(self, finished):
        pass


@pytest.mark.parametrize("every", [None, 50])
def test_on_the_gpu_the_loss_is_read_back_only_every_n_steps(every):
    """The loop's GPU path reads the loss for its NaN check every 20 steps; the per-step
    sink adds a read only at its own steps (50, 100), never one per step."""
    from types import SimpleNamespace

    from gpucnn.sinks import Sinks
    from gpucnn.train import _Epoch

    def step_fn(x, y):
        return numpy.asarray(0.5).view(_CountedLoss), numpy.int64(len(y))

    recorder = _Recorder()
    sinks = Sinks([recorder], every) if every else Sinks()
    optimizer = SimpleNamespace(lr=0.0)
    run = _Epoch(step_fn, optimizer, lambda step: 0.1, 0, 100, {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0},
                 {"epochs": 1}, False, None, sinks)
    run.on_gpu = True  # the path a CuPy run takes; the arrays stay NumPy
    _CountedLoss.reads = 0
    run.run([(None, numpy.zeros(4, numpy.int64))] * 100, 0, SimpleNamespace(requested=False), None)
    assert _CountedLoss.reads == 5 + (2 if every else 0)  # steps 20, 40, 60, 80, 100 (+ 50, 100)
    assert recorder.steps == ([(50, {"train_loss": 0.5, "lr": 0.1}), (100, {"train_loss": 0.5, "lr": 0.1})] if every else [])
