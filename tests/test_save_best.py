"""--save-best and --early-stop: what they watch, what they write, and how they resume."""
import json
import threading

import numpy
import pytest

from gpucnn import cli
from gpucnn.best import Monitor, best_path
from gpucnn.checkpoint import load_checkpoint

TINY = ["train", "--no-progress", "--batch-size", "128"]


def test_monitor_counts_epochs_without_a_strictly_higher_val_acc():
    m = Monitor(patience=2)
    seen = [m.update(e, acc) for e, acc in enumerate([0.5, 0.6, 0.6, 0.55], start=1)]
    assert seen == [True, True, False, False]
    assert (m.best, m.best_epoch, m.waited, m.stopped) == (0.6, 2, 2, True)
    again = Monitor(2, m.state_dict())
    assert again.state_dict() == m.state_dict()


def lockstep(*monitors_and_updates):
    """Run (monitor, [val_acc per epoch]) pairs as ranks 0, 1, ... in threads whose
    allgather_object meets at a barrier, as MPI's does; returns each rank's update results."""
    barrier, box = threading.Barrier(len(monitors_and_updates)), {}

    class Rank:
        size = len(monitors_and_updates)

        def __init__(self, rank):
            self.rank = rank

        def allgather_object(self, obj):
            box[self.rank] = obj
            barrier.wait()
            out = [box[r] for r in range(self.size)]
            barrier.wait()
            return out

    results = {}

    def run(rank, monitor, accs):
        results[rank] = [monitor.update(e, acc, Rank(rank)) for e, acc in enumerate(accs, start=1)]

    threads = [threading.Thread(target=run, args=(r, m, a)) for r, (m, a) in enumerate(monitors_and_updates)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return [results[r] for r in range(len(threads))]


def test_monitor_takes_rank_zeros_verdict():
    m0, m1 = Monitor(patience=1), Monitor(patience=1)
    assert lockstep((m0, [0.5, 0.4]), (m1, [0.5, 0.9])) == [[True, False], [True, False]]
    assert m1.stopped and m1.best == 0.5


def test_monitor_stops_every_rank_when_rank_zero_stops():
    """Ranks whose waited counts differ (resumed from different states): rank 0 decides."""
    m0 = Monitor(2, {"best": 0.9, "best_epoch": 1, "waited": 1})
    m1 = Monitor(2, {"best": 0.9, "best_epoch": 1, "waited": 0})
    lockstep((m0, [0.5]), (m1, [0.5]))
    assert m0.stopped and m1.stopped


def test_best_path_sits_beside_the_checkpoint():
    assert best_path("runs/last.ckpt") == "runs/last.best.ckpt"
    assert best_path("out/model") == "out/model.best.ckpt"


pytest.importorskip("sklearn")  # the built-in digits dataset


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# a high constant rate: val_acc goes up and down (0.27 0.76 0.85 0.82 0.83 0.85), so the best epoch is not the last
NOISY = ["--val-split", "0.3", "--optimizer", "adam", "--lr", "0.05", "--schedule", "constant", "--seed", "2"]


def test_save_best_keeps_the_best_epochs_weights(tmp_path, capsys):
    last, metrics = tmp_path / "last.ckpt", tmp_path / "m.jsonl"
    run = [*TINY, *NOISY, "--epochs", "5"]
    assert cli.main([*run, "--save-best", "--save", str(last), "--metrics-out", str(metrics)]) == 0
    accs = [r["val_acc"] for r in rows(metrics)]
    best_epoch = int(numpy.argmax(accs)) + 1  # argmax: the first of equal maxima, as "strictly higher" keeps
    assert best_epoch < 5, accs  # the case this test is about
    best = load_checkpoint(tmp_path / "last.best.ckpt")
    assert best["meta"]["epoch"] == best_epoch and best["meta"]["monitor"]["best"] == max(accs)
    assert load_checkpoint(last)["meta"]["monitor"]["best_epoch"] == best_epoch
    # its weights are that epoch's: a run stopped there has them
    again = tmp_path / "again.ckpt"
    assert cli.main([*run, "--save", str(again), "--stop-after", str(best_epoch)]) == 0
    for k, v in load_checkpoint(again)["model_state"].items():
        numpy.testing.assert_array_equal(best["model_state"][k], v, err_msg=k)


def test_early_stop_stops_and_a_resume_says_so(tmp_path, capsys):
    last, metrics = tmp_path / "last.ckpt", tmp_path / "m.jsonl"
    # a zero learning rate: val_acc never improves after the first epoch
    args = [*TINY, "--epochs", "20", "--val-split", "0.2", "--early-stop", "2", "--lr", "0", "--schedule", "constant",
            "--save", str(last), "--metrics-out", str(metrics)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert [r["epoch"] for r in rows(metrics)] == [1, 2, 3]
    assert "early stop: val_acc has not improved for 2 epoch(s)" in out
    assert "test_acc" in [line for line in out.splitlines() if line.startswith("epoch 3/20")][0]
    assert rows(metrics)[-1]["test_acc"] is not None
    assert cli.main([*TINY, "--resume", str(last)]) == 0
    assert "stopped early at epoch 3" in capsys.readouterr().out


def test_interrupted_run_resumes_with_its_best_and_patience(tmp_path):
    """Straight vs stopped after epoch 4 (one epoch without improvement) and resumed: the
    same weights, the same best checkpoint (epoch 3), the same early stop after epoch 5."""
    common = [*NOISY, "--save-best", "--early-stop", "2", "--epochs", "6"]
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    assert cli.main([*TINY, *common, "--save", str(a)]) == 0
    assert cli.main([*TINY, *common, "--save", str(b), "--stop-after", "4"]) == 0
    assert load_checkpoint(b)["meta"]["monitor"]["waited"] == 1
    assert cli.main([*TINY, "--resume", str(b), "--save", str(b)]) == 0
    assert load_checkpoint(a)["meta"]["epoch"] == 5 and load_checkpoint(a)["meta"]["monitor"]["stopped"]
    assert load_checkpoint(tmp_path / "a.best.ckpt")["meta"]["epoch"] == 3
    for x, y in ((a, b), (tmp_path / "a.best.ckpt", tmp_path / "b.best.ckpt")):
        cx, cy = load_checkpoint(x), load_checkpoint(y)
        assert cx["meta"]["monitor"] == cy["meta"]["monitor"] and cx["meta"]["epoch"] == cy["meta"]["epoch"]
        for k in cx["model_state"]:
            numpy.testing.assert_array_equal(cx["model_state"][k], cy["model_state"][k], err_msg=k)


@pytest.mark.parametrize("flag", [["--save-best"], ["--early-stop", "3"]])
def test_they_need_val_split(flag, capsys):
    assert cli.main([*TINY, *flag, "--no-save"]) == 2
    assert "give --val-split FRACTION" in capsys.readouterr().err


def test_save_best_needs_a_checkpoint_and_never_replaces_a_users_file(tmp_path, capsys):
    assert cli.main([*TINY, "--val-split", "0.2", "--save-best", "--no-save"]) == 2
    assert "--no-save" in capsys.readouterr().err
    mine = tmp_path / "last.best.ckpt"
    mine.write_text("my notes")
    assert cli.main([*TINY, "--val-split", "0.2", "--save-best", "--save", str(tmp_path / "last.ckpt")]) == 2
    assert "last.best.ckpt" in capsys.readouterr().err and mine.read_text() == "my notes"


def test_early_stop_below_one_is_refused(capsys):
    assert cli.main([*TINY, "--val-split", "0.2", "--early-stop", "0", "--no-save"]) == 2
    assert "--early-stop must be at least 1" in capsys.readouterr().err


def test_a_damaged_monitor_in_a_checkpoint_is_refused(tmp_path, capsys):
    from gpucnn.checkpoint import save_checkpoint

    ckpt = tmp_path / "c.ckpt"
    assert cli.main([*TINY, "--val-split", "0.2", "--early-stop", "2", "--epochs", "3", "--stop-after", "1",
                     "--save", str(ckpt)]) == 0
    saved = load_checkpoint(ckpt)
    saved["meta"]["monitor"]["waited"] = -4
    save_checkpoint(ckpt, model_state=saved["model_state"], optim_state=saved["optim_state"], meta=saved["meta"])
    assert cli.main([*TINY, "--resume", str(ckpt)]) == 2
    assert "its saved run is damaged (monitor is" in capsys.readouterr().err
