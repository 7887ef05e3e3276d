"""Learning-rate schedules: values at chosen steps against hand-computed numbers."""
import dataclasses
import math

import numpy

import pytest

from gpucnn.optim import SCHEDULES, make_schedule


def values(schedule, steps):
    return [schedule(s) for s in steps]


def test_constant():
    lr_at = make_schedule("constant", 0.1)
    assert values(lr_at, [0, 1, 10**6]) == [0.1, 0.1, 0.1]


def test_step():
    lr_at = make_schedule("step", 1.0, step_size=3, gamma=0.5)
    # 1.0 * 0.5 ** (step // 3)
    assert values(lr_at, [0, 2, 3, 5, 6, 9]) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]


def test_cosine():
    lr_at = make_schedule("cosine", 1.0, total_steps=10)
    # (1 + cos(pi * step / 10)) / 2: 1 at 0, 1/2 at 5, 0 at the end and after it
    assert lr_at(0) == 1.0
    assert lr_at(1) == pytest.approx(0.9755282581475768, rel=1e-15)  # (1 + cos(18 degrees)) / 2
    assert lr_at(5) == pytest.approx(0.5, rel=1e-15)
    assert values(lr_at, [10, 11, 1000]) == [0.0, 0.0, 0.0]


def test_cosine_min_lr():
    lr_at = make_schedule("cosine", 1.0, total_steps=10, min_lr=0.1)
    # 0.1 + 0.9 * (1 + cos(pi * step / 10)) / 2
    assert lr_at(0) == pytest.approx(1.0)
    assert lr_at(5) == pytest.approx(0.55)
    assert lr_at(10) == pytest.approx(0.1)
    assert lr_at(50) == pytest.approx(0.1)


def test_warmup_then_constant():
    lr_at = make_schedule("constant", 1.0, warmup_steps=4)
    # base * (step + 1) / 4 for the first 4 steps
    assert values(lr_at, [0, 1, 2, 3, 4, 100]) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_warmup_then_cosine_runs_on_the_remaining_steps():
    lr_at = make_schedule("cosine", 1.0, total_steps=14, warmup_steps=4)
    # warm-up for steps 0-3, then cosine over the remaining 10 steps (cosine step = step - 4)
    assert values(lr_at, [0, 3]) == [0.25, 1.0]
    assert lr_at(4) == 1.0
    assert lr_at(9) == pytest.approx(0.5, rel=1e-15)
    assert lr_at(14) == 0.0


def test_warmup_then_step():
    lr_at = make_schedule("step", 1.0, warmup_steps=2, step_size=3, gamma=0.1)
    # steps 0, 1 warm up; then 1.0 for 3 steps (2, 3, 4), 0.1 for the next 3, ...
    assert values(lr_at, [0, 1, 2, 4]) == [0.5, 1.0, 1.0, 1.0]
    assert lr_at(5) == pytest.approx(0.1)
    assert lr_at(8) == pytest.approx(0.01)


def test_schedules_are_pure_functions_of_the_step():
    # A resumed run asks for any step first: values do not depend on call order.
    lr_at = make_schedule("cosine", 0.5, total_steps=100, warmup_steps=10, min_lr=0.01)
    forward = values(lr_at, range(120))
    assert values(lr_at, reversed(range(120))) == forward[::-1]
    assert make_schedule("cosine", 0.5, total_steps=100, warmup_steps=10, min_lr=0.01)(57) == forward[57]
    assert all(a >= b for a, b in zip(forward[10:], forward[11:]))  # non-increasing after warm-up


def test_settings_are_recorded():
    lr_at = make_schedule("Step", 0.1, total_steps=100, step_size=30)
    assert dataclasses.asdict(lr_at) == {"name": "step", "base_lr": 0.1, "total_steps": 100, "warmup_steps": 0,
                                         "step_size": 30, "gamma": 0.1, "min_lr": 0.0, "peak_fraction": 0.25}


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="'linear'.*constant, step, cosine"):
        make_schedule("linear", 0.1)
    assert SCHEDULES == ("constant", "step", "cosine", "onecycle")


@pytest.mark.parametrize("kw, match", [
    (dict(name="step", base_lr=0.1), "step_size"),
    (dict(name="step", base_lr=0.1, step_size=0), "step_size"),
    (dict(name="cosine", base_lr=0.1), "total_steps"),
    (dict(name="cosine", base_lr=0.1, total_steps=5, warmup_steps=5), "total_steps"),
    (dict(name="cosine", base_lr=0.1, total_steps=5, min_lr=0.2), "min_lr"),
    (dict(name="constant", base_lr=-0.1), "base_lr"),
    (dict(name="constant", base_lr=0.1, warmup_steps=-1), "warmup_steps"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(**kw)


def test_bad_step():
    lr_at = make_schedule("constant", 0.1)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1)
    with pytest.raises(TypeError):
        lr_at(1.5)


def test_hand_value_of_cos_18_degrees():
    # The constant used above, from its closed form cos(pi/10) = sqrt(10 + 2*sqrt(5)) / 4.
    assert (1 + math.sqrt(10 + 2 * math.sqrt(5)) / 4) / 2 == pytest.approx(0.9755282581475768, rel=1e-15)


def test_onecycle_rises_linearly_to_the_peak_then_falls_to_min_lr():
    lr_at = make_schedule("onecycle", 0.4, total_steps=100, peak_fraction=0.2, min_lr=0.01)
    lrs = [lr_at(t) for t in range(101)]
    assert lrs[0] == pytest.approx(0.4 / 20) and lrs[19] == pytest.approx(0.4) and lrs[20] == pytest.approx(0.4)
    assert all(b > a for a, b in zip(lrs[:20], lrs[1:20]))  # rising
    assert all(b < a for a, b in zip(lrs[20:100], lrs[21:100]))  # falling
    rises, falls = numpy.diff(lrs[:20]), numpy.diff(lrs[20:101])
    numpy.testing.assert_allclose(rises, 0.4 / 20)  # straight lines
    numpy.testing.assert_allclose(falls, -(0.4 - 0.01) / 80)
    assert lrs[100] == pytest.approx(0.01) and lr_at(500) == pytest.approx(0.01)


def test_onecycle_after_warmup_and_its_errors():
    lr_at = make_schedule("onecycle", 1.0, total_steps=30, warmup_steps=10, peak_fraction=0.5)
    assert lr_at(9) == pytest.approx(1.0) and lr_at(10) == pytest.approx(0.1) and lr_at(19) == pytest.approx(1.0)
    assert lr_at(30) == 0.0
    with pytest.raises(ValueError, match="peak_fraction must be in"):
        make_schedule("onecycle", 0.1, total_steps=10, peak_fraction=1.0)
    with pytest.raises(ValueError, match="'onecycle' needs total_steps >= 2"):
        make_schedule("onecycle", 0.1, total_steps=1)
    assert make_schedule("onecycle", 0.1, total_steps=2)(0) == pytest.approx(0.1)
