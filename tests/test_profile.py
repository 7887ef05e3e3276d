"""gpucnn profile on NumPy: every layer timed, shares add up, FLOPs follow summary's count."""
import time
import types

import pytest

from gpucnn import cli, models, profile, summary
from gpucnn.optim import make_optimizer


def _profile(model, shape, batch=2, steps=2):
    opt = make_optimizer("adam", model.parameters(), lr=0.0)
    return profile.profile(model, opt, shape, 10, batch, steps)


def test_every_layer_is_timed_and_the_shares_add_up():
    shape = (3, 8, 8)
    model = models.resnet20(shape)
    p = _profile(model, shape)
    assert [t.name for t in p.layers] == [r.name for r in summary.rows(model, shape)]
    assert all(t.forward_s > 0 and t.backward_s > 0 for t in p.layers)
    rest = p.step_s - p.layers_s
    assert 0 < rest < p.step_s  # the loss and the optimiser run outside every layer
    shares = [(t.forward_s + t.backward_s) / p.step_s for t in p.layers] + [rest / p.step_s]
    assert sum(shares) == pytest.approx(1.0)
    assert p.plain_step_s > 0


def test_flops_are_summary_multiply_adds_times_two_forward_and_four_backward():
    shape = (1, 28, 28)
    model = models.lenet()
    p = _profile(model, shape, batch=3)
    macs = {r.name: r.multiply_adds for r in summary.rows(model, shape)}
    for t in p.layers:
        assert t.forward_flops == 2 * 3 * macs[t.name]
        # the first conv skips dX: its backward is dW (and db) only
        assert t.backward_flops == (2 if t.name == "0" else 4) * 3 * macs[t.name]
    assert sum(t.forward_flops for t in p.layers) == 2 * 3 * 286_334


def test_the_step_is_the_loops_own(monkeypatch):
    """profile calls gpucnn.train.TrainStep, not a copy of it."""
    from gpucnn import train

    calls = []
    real = train.TrainStep.__call__
    monkeypatch.setattr(train.TrainStep, "__call__", lambda self, x, y: calls.append(len(y)) or real(self, x, y))
    _profile(models.small(), (1, 8, 8), batch=4, steps=3)
    assert calls == [4] * (profile.WARMUP_STEPS + 2 * 3)


def test_device_clock_reads_cuda_events(monkeypatch):
    """The CuPy path's clock on a stand-in: events record a time, elapsed is read in ms."""
    class Event:
        def record(self):
            self.t = time.perf_counter()

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Event=Event, get_elapsed_time=lambda a, b: (b.t - a.t) * 1000.0))
    monkeypatch.setattr(profile, "clock", lambda: profile.DeviceClock(cupy))
    p = _profile(models.small(), (1, 8, 8))
    assert all(t.forward_s > 0 for t in p.layers) and p.step_s > p.layers_s


def test_profile_command(capsys):
    assert cli.main(["profile", "--model", "lenet", "--batch-size", "4", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("perf_counter", "forward ms", "fwd GFLOP/s", "layers  (sum)", "rest", "uninstrumented", "11      Linear"):
        assert word in out


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--input-shape", "3x32"], "--input-shape"),
    (["--batch-size", "-1"], "--batch-size must be at least 1"),
])
def test_bad_arguments_are_one_line_errors(args, words, capsys):
    assert cli.main(["profile", "--model", "small", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpucnn: error:") and words in err and "\n" not in err


@pytest.mark.gpu
def test_profile_on_the_gpu_times_with_cuda_events(on_cupy, capsys):
    assert isinstance(profile.clock(), profile.DeviceClock)
    p = _profile(models.resnet20(), (3, 32, 32), batch=32, steps=3)
    assert all(t.forward_s > 0 and t.backward_s > 0 for t in p.layers) and p.step_s > p.layers_s
