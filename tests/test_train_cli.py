"""The trainer and command line end to end, on small real runs."""
import json
import os
import subprocess
import sys

import numpy
import pytest

from gpucnn import cli
from gpucnn.checkpoint import load_checkpoint
from real_mnist import MNIST, needs_mnist

pytest.importorskip("sklearn")  # the built-in digits dataset

TINY = ["--no-progress", "--batch-size", "128"]


def train(tmp_path, *args):
    return cli.main(["train", *TINY, *args])


def weights(path):
    return load_checkpoint(path)["model_state"]


def test_train_eval_plot_end_to_end(tmp_path, capsys):
    ckpt, metrics, png = tmp_path / "c.ckpt", tmp_path / "m.jsonl", tmp_path / "curves.png"
    assert train(tmp_path, "--epochs", "3", "--save", str(ckpt), "--metrics-out", str(metrics)) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "test_acc" in out
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_s"} <= set(r)
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0 and r["images_per_s"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    assert cli.main(["eval", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and len([l for l in out.splitlines() if l[:1].isdigit()]) == 10  # one row per class
    reported = float(out.split("accuracy ")[1].split()[0])
    assert reported == pytest.approx(rows[-1]["test_acc"], abs=1e-4)

    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(metrics), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_run_reaches_95_percent(tmp_path, capsys):
    """The README's main job: built-in digits, default flags."""
    assert cli.main(["train", "--no-progress", "--no-save"]) == 0
    last = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch ")][-1]
    assert float(last.split("test_acc ")[1].split()[0]) >= 0.95


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_an_epoch_is_bit_exact(tmp_path, schedule):
    straight, split = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    common = ["--schedule", schedule, "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"]
    assert train(tmp_path, "--epochs", "2", "--save", str(straight), *common) == 0
    if schedule == "cosine":
        # the cosine horizon is the run's --epochs: stop the 2-epoch run after one epoch instead
        assert train(tmp_path, "--epochs", "2", "--save", str(split), "--stop-after", "1", *common) == 0
    else:
        assert train(tmp_path, "--epochs", "1", "--save", str(split), *common) == 0
    assert load_checkpoint(split)["meta"]["epoch"] == 1
    assert cli.main(["train", *TINY, "--resume", str(split), "--epochs", "2", "--save", str(split)]) == 0
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys()
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert load_checkpoint(straight)["optim_state"].keys() == load_checkpoint(split)["optim_state"].keys()


def test_interrupt_mid_epoch_saves_and_resumes_bit_exact(tmp_path, monkeypatch, capsys):
    """Ctrl-C after step 5: checkpoint at that step; resuming gives the straight run's weights."""
    from gpucnn import train as train_module

    straight, split = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    assert train(tmp_path, "--epochs", "2", "--save", str(straight)) == 0

    class CtrlCAfter5(train_module._Interrupt):
        checks = 0

        @property
        def requested(self):
            CtrlCAfter5.checks += 1
            return CtrlCAfter5.checks > 5 * 2  # read twice per step

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(train_module, "_Interrupt", CtrlCAfter5)
    assert train(tmp_path, "--epochs", "2", "--save", str(split)) == 130
    assert "interrupted at epoch 1" in capsys.readouterr().out
    meta = load_checkpoint(split)["meta"]
    assert meta["epoch"] == 0 and 0 < meta["step"] < 12
    monkeypatch.undo()
    assert cli.main(["train", *TINY, "--resume", str(split), "--save", str(split)]) == 0
    a, b = weights(straight), weights(split)
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "c.ckpt"
    assert train(tmp_path, "--epochs", "1", "--save", str(ckpt)) == 0
    before = ckpt.read_bytes()
    code = train(tmp_path, "--epochs", "1", "--save", str(ckpt), "--optimizer", "sgd", "--lr", "1e30")
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and "epoch 1, step" in err
    assert ckpt.read_bytes() == before


def test_resume_with_a_different_model_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "c.ckpt"
    assert train(tmp_path, "--epochs", "1", "--save", str(ckpt)) == 0
    before = ckpt.read_bytes()
    assert train(tmp_path, "--resume", str(ckpt), "--model", "lenet", "--save", str(ckpt)) == 2
    assert "was trained with --model small" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    assert cli.main(["eval", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert bad.read_bytes() == b"not a checkpoint at all"


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, capsys):
    from gpucnn.checkpoint import save_checkpoint

    ckpt = tmp_path / "c.ckpt"
    assert train(tmp_path, "--epochs", "1", "--save", str(ckpt)) == 0
    c = load_checkpoint(ckpt)
    del c["model_state"]["0.weight"]
    save_checkpoint(ckpt, model_state=c["model_state"], optim_state=c["optim_state"], meta=c["meta"])
    assert cli.main(["eval", "--checkpoint", str(ckpt)]) == 2
    assert "0.weight" in capsys.readouterr().err


def test_unknown_flag_and_bad_dataset(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--not-a-flag"])
    assert e.value.code == 2 and "--not-a-flag" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "imagenet", "--no-save"]) == 2
    assert "imagenet" in capsys.readouterr().err


def test_help_lists_every_flag_with_its_default():
    out = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--help"], capture_output=True, text=True).stdout
    for flag in ("--model", "--dataset", "--data-dir", "--epochs", "--batch-size", "--optimizer", "--lr",
                 "--momentum", "--weight-decay", "--schedule", "--seed", "--backend", "--save", "--resume",
                 "--metrics-out", "--graph", "--tf32"):
        assert flag in out
    assert out.count("default") >= 20


def test_gradient_check_command_passes(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "all passed" in out and "FAIL" not in out
    assert "BatchNorm2d eval" in out and "MaxPool2d k3 s2 overlap" in out


@pytest.mark.slow
@needs_mnist
def test_lenet_on_mnist_two_epochs_reaches_98_5(capsys):
    assert cli.main(["train", "--model", "lenet", "--dataset", "mnist", "--data-dir", MNIST,
                     "--epochs", "2", "--no-progress", "--no-save"]) == 0
    last = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch ")][-1]
    assert float(last.split("test_acc ")[1].split()[0]) >= 0.985


def test_real_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    """A real SIGINT to a running `gpucnn train`: it finishes the step, saves, says how to resume."""
    import signal

    from reliability_helpers import signal_after_first_checkpoint

    ckpt = tmp_path / "c.ckpt"
    rc, out, err = signal_after_first_checkpoint(["--epochs", "100000", "--no-progress", "--save", ckpt], ckpt,
                                                 signal.SIGINT)
    assert rc == 130, err
    assert "interrupted at epoch" in out and f"--resume {ckpt}" in out
    meta = load_checkpoint(ckpt)["meta"]
    assert meta["epoch"] >= 1 and meta["config"]["epochs"] == 100000


@pytest.mark.parametrize("args,words", [
    (["--lr", "-1"], "lr must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--stop-after", "0"], "--stop-after must be at least 1"),
    (["--warmup-steps", "-3"], "--warmup-steps must be at least 0"),
    (["--dataset", "missing.npz"], "missing.npz"),
])
def test_bad_settings_are_named_without_traceback(args, words, capsys):
    assert cli.main(["train", "--no-save", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_check_command_fails_on_a_wrong_backward(monkeypatch, capsys):
    """`gpucnn check` can fail: a ReLU whose backward forgets the mask is caught, exit status 1."""
    from gpucnn import check
    from gpucnn.layers import ReLU

    class BrokenReLU(ReLU):
        def backward(self, dy):
            super().backward(dy)
            return dy  # forgets to zero the gradient where x < 0

    real_cases = check.cases
    monkeypatch.setattr(check, "cases", lambda rng: [("BrokenReLU", BrokenReLU(dtype=numpy.float64),
                                                      rng.standard_normal((2, 3)))] + real_cases(rng)[:1])
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "BrokenReLU" in out and "FAIL" in out and "FAILED" in out


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert cli.main(["plot", str(metrics), "-o", str(tmp_path / "c.png")]) == 2
    assert 'pip install ".[plot]" (in the gpucnn clone)' in capsys.readouterr().err


def test_plot_rejects_a_file_that_is_not_metrics(tmp_path, capsys):
    bad = tmp_path / "m.jsonl"
    bad.write_text("{not json\n")
    assert cli.main(["plot", str(bad)]) == 2
    assert "line 1: not a JSON object" in capsys.readouterr().err
