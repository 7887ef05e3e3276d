"""gpucnn lr-find: the sweep schedule, the stopping and suggestion rules, and the command
on an MNIST subset with LeNet."""
import math
import os
import re

import numpy
import pytest

from gpucnn import cli, lr_find
from gpucnn.optim.schedules import ExponentialSweep
from real_mnist import mnist_dir



def test_sweep_is_log_spaced_from_start_to_end():
    s = ExponentialSweep(1e-6, 1.0, 7)
    lrs = [s(i) for i in range(7)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0) and s(50) == pytest.approx(1.0)
    numpy.testing.assert_allclose(numpy.log10(lrs), numpy.linspace(-6, 0, 7), atol=1e-12)


@pytest.mark.parametrize("start, end, steps", [(1.0, 0.1, 10), (0.0, 1.0, 10), (1e-3, math.inf, 10), (1e-3, 1.0, 1)])
def test_sweep_rejects_bad_settings(start, end, steps):
    with pytest.raises(ValueError):
        ExponentialSweep(start, end, steps)


class _Optimizer:
    lr = 0.0


def test_watch_smooths_like_fastai_and_stops_at_four_times_the_minimum():
    losses = [2.0, 1.5, 1.0, 0.5, 0.4, 3.0, 30.0, 300.0, 3000.0]
    steps = iter(losses)
    opt = _Optimizer()
    watch = lr_find._Watch(lambda x, y: (next(steps), 0), opt)
    avg, expected = 0.0, []
    for i, loss in enumerate(losses):
        avg = 0.98 * avg + 0.02 * loss
        expected.append(avg / (1 - 0.98 ** (i + 1)))
    with pytest.raises(lr_find._Diverged):
        for i in range(len(losses)):
            opt.lr = 10.0 ** i
            watch(None, None)
    n = len(watch.smoothed)
    assert watch.smoothed == pytest.approx(expected[:n])
    # stopped at the first smoothed loss above 4x the lowest so far
    assert expected[n - 1] > 4 * min(expected[:n]) and all(e <= 4 * min(expected[:i + 1]) for i, e in enumerate(expected[:n - 1]))
    assert watch.lrs == [10.0 ** i for i in range(len(watch.losses))]
    assert watch.stopped == (n, 10.0 ** (n - 1))


def test_watch_stops_on_a_non_finite_loss():
    watch = lr_find._Watch(lambda x, y: (float("nan"), 0), _Optimizer())
    with pytest.raises(lr_find._Diverged):
        watch(None, None)
    assert watch.stopped == (1, 0.0) and watch.losses == []


def test_steepest_descent_and_min_over_ten():
    lrs = list(numpy.logspace(-6, 0, 40))
    x = numpy.log(lrs)
    smoothed = list(2 - numpy.tanh(x - numpy.log(1e-3)) + 0.5 * numpy.exp(x))  # falls fastest at 1e-3
    s = lr_find.Sweep(lrs, smoothed, smoothed, None)
    assert s.steepest() == pytest.approx(lrs[int(numpy.argmin(numpy.abs(x - numpy.log(1e-3))))])
    assert s.min_over_10() == pytest.approx(lrs[int(numpy.argmin(smoothed))] / 10)
    assert lr_find.Sweep(lrs[:5], smoothed[:5], smoothed[:5], (6, 1e-5)).steepest() is None


@pytest.fixture
def mnist_subset(tmp_path):
    from gpucnn.data import load

    d = load("mnist", data_dir=mnist_dir())
    path = tmp_path / "mnist3k.npz"
    numpy.savez(path, x_train=d.x_train[:3000], y_train=d.y_train[:3000], x_test=d.x_test[:1000],
                y_test=d.y_test[:1000])
    return str(path)


def test_lenet_on_mnist_subset_suggests_a_rate_that_learns(mnist_subset, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    png = tmp_path / "lr.png"
    assert cli.main(["lr-find", "--model", "lenet", "--dataset", mnist_subset, "--no-progress", "-o", str(png)]) == 0
    out = capsys.readouterr().out
    suggested = float(re.search(r"suggested lr: (\S+) \(lowest smoothed loss / 10", out).group(1))
    assert 3e-4 <= suggested <= 3e-2  # Adam on LeNet: PyTorch's default 1e-3 and ours, 2e-3, sit in here
    assert png.read_bytes().startswith(b"\x89PNG")
    assert sorted(os.listdir(tmp_path)) == ["lr.png", "mnist3k.npz"]  # no checkpoint, no runs/
    assert cli.main(["train", "--model", "lenet", "--dataset", mnist_subset, "--epochs", "1", "--lr", str(suggested),
                     "--schedule", "constant", "--no-save", "--no-progress"]) == 0
    acc = float(re.search(r"test_acc (\S+)", capsys.readouterr().out).group(1))
    assert acc > 0.8  # chance is 0.1


def test_sweep_follows_the_schedule_through_the_loop(mnist_subset):
    from gpucnn import init, models
    from gpucnn.data import load
    from gpucnn.optim import make_optimizer

    data = load(mnist_subset)
    init.seed(0)
    model = models.lenet()
    opt = make_optimizer("sgd", model.parameters(), lr=1e-5, momentum=0.9)
    schedule = ExponentialSweep(1e-5, 1e3, 60)  # SGD at 1e3 must blow up
    result = lr_find.sweep(model, opt, schedule, data, {"batch_size": 32, "seed": 0}, progress=False)
    step, lr = result.stopped
    assert 10 < len(result.losses) < 60 and step in (len(result.losses), len(result.losses) + 1)
    assert lr == pytest.approx(schedule(step - 1))
    assert result.lrs == pytest.approx([schedule(i) for i in range(len(result.lrs))])


@pytest.mark.parametrize("args, words", [
    (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr < --end-lr"),
    (["--steps", "1"], "at least 2 --steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["-o", "curve.xyz"], "unknown image suffix"),
    (["-o", "notes.txt"], "unknown image suffix"),
    (["-o", "mine.png"], "not a gpucnn png image"),
    (["--dataset", "imagenet"], "imagenet"),
])
def test_bad_arguments_are_one_line_errors(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.png").write_text("my notes, not an image")
    assert cli.main(["lr-find", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpucnn: error:") and words in err and "\n" not in err
    assert (tmp_path / "mine.png").read_text() == "my notes, not an image"


def test_help_shows_the_train_flags_it_shares(capsys):
    with pytest.raises(SystemExit):
        cli.main(["lr-find", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--dataset", "--data-dir", "--batch-size", "--optimizer", "--momentum", "--weight-decay",
                 "--seed", "--start-lr", "--end-lr", "--steps", "--output"):
        assert flag in out


def test_ctrl_c_ends_the_sweep_with_its_plot_and_exit_130(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")  # the built-in digits
    pytest.importorskip("matplotlib")
    from gpucnn import train as train_module

    class CtrlCAfter30(train_module._Interrupt):
        checks = 0

        @property
        def requested(self):
            CtrlCAfter30.checks += 1
            return CtrlCAfter30.checks > 30  # read once or twice a step

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(train_module, "_Interrupt", CtrlCAfter30)
    png = tmp_path / "sweep.png"
    assert cli.main(["lr-find", "--no-progress", "-o", str(png)]) == 130
    out = capsys.readouterr().out
    assert 15 <= int(re.search(r"interrupted at step (\d+) of 100", out).group(1)) <= 31 and "suggested lr:" in out
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.gpu
def test_sweep_on_the_gpu(on_cupy):
    from gpucnn import init, models
    from gpucnn.data import load
    from gpucnn.optim import make_optimizer

    pytest.importorskip("sklearn")
    data = load("digits")
    init.seed(0)
    model = models.small()
    opt = make_optimizer("adam", model.parameters(), lr=1e-6)
    result = lr_find.sweep(model, opt, ExponentialSweep(1e-6, 10.0, 80), data, {"batch_size": 64, "seed": 0},
                           progress=False)
    assert len(result.losses) > 20 and 1e-5 < result.min_over_10() < 1.0
