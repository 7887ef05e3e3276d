"""Learning-rate schedules: pure functions of the global step (optimiser steps taken).

A schedule keeps no state, so a resumed run just asks for the lr at its step. Warm-up
(linear, from base_lr / warmup_steps at step 0 to base_lr at step warmup_steps - 1)
replaces the first warmup_steps steps; the main schedule then runs on the remaining
steps, counting from 0 where warm-up ends.
"""
import dataclasses
import math
import operator

SCHEDULES = ("constant", "step", "cosine", "onecycle")


def constant_lr(step, base_lr):
    """lr = base_lr."""
    return base_lr


def step_lr(step, base_lr, step_size, gamma=0.1):
    """lr = base_lr * gamma ** (step // step_size): multiplied by gamma every step_size steps."""
    return base_lr * gamma ** (step // step_size)


def cosine_lr(step, base_lr, total_steps, min_lr=0.0):
    """lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2,
    held at min_lr once step >= total_steps."""
    t = min(step, total_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / total_steps))


def onecycle_lr(step, base_lr, total_steps, peak_steps, min_lr=0.0):
    """lr = base_lr * (step + 1) / peak_steps for step < peak_steps (up from nearly 0),
    then min_lr + (base_lr - min_lr) * (total_steps - step) / (total_steps - peak_steps),
    from base_lr at step peak_steps down to min_lr at total_steps (and held there)."""
    if step < peak_steps:
        return base_lr * (step + 1) / peak_steps
    t = min(step, total_steps)
    return min_lr + (base_lr - min_lr) * (total_steps - t) / (total_steps - peak_steps)


def warmup_lr(step, base_lr, warmup_steps):
    """lr = base_lr * (step + 1) / warmup_steps for step < warmup_steps."""
    return base_lr * (step + 1) / warmup_steps


@dataclasses.dataclass(frozen=True)
class Schedule:
    """`schedule(step) -> lr`; a frozen record of its settings (dataclasses.asdict for logs)."""

    name: str
    base_lr: float
    total_steps: int | None = None
    warmup_steps: int = 0
    step_size: int | None = None
    gamma: float = 0.1
    min_lr: float = 0.0
    peak_fraction: float = 0.25

    def __call__(self, step):
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"schedule: step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return warmup_lr(step, self.base_lr, self.warmup_steps)
        step -= self.warmup_steps
        if self.name == "step":
            return step_lr(step, self.base_lr, self.step_size, self.gamma)
        if self.name == "cosine":
            return cosine_lr(step, self.base_lr, self.total_steps - self.warmup_steps, self.min_lr)
        if self.name == "onecycle":
            main = self.total_steps - self.warmup_steps
            return onecycle_lr(step, self.base_lr, main, _peak_steps(main, self.peak_fraction), self.min_lr)
        return constant_lr(step, self.base_lr)


def _peak_steps(steps, fraction):
    """Steps of onecycle's rise: at least 1, and at least 1 step left for the fall."""
    return min(max(1, round(steps * fraction)), steps - 1)


def make_schedule(name, base_lr, total_steps=None, warmup_steps=0, step_size=None, gamma=0.1, min_lr=0.0,
                  peak_fraction=0.25):
    """A `Schedule`: callable lr_at(step) for name in SCHEDULES ("constant", "step", "cosine",
    "onecycle"), optionally after `warmup_steps` of linear warm-up. "step" needs step_size (in
    steps); "cosine" and "onecycle" need total_steps (the whole run, warm-up included) and end
    at min_lr; "onecycle" peaks at base_lr after peak_fraction of the steps after warm-up."""
    key = str(name).strip().lower()
    if key not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    if not base_lr >= 0:
        raise ValueError(f"schedule: base_lr must be >= 0, got {base_lr}")
    warmup_steps = operator.index(warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"schedule: warmup_steps must be >= 0, got {warmup_steps}")
    if key == "step":
        if step_size is None or operator.index(step_size) < 1:
            raise ValueError(f"schedule 'step' needs step_size >= 1 (steps between decays), got {step_size}")
        if not gamma >= 0:
            raise ValueError(f"schedule 'step': gamma must be >= 0, got {gamma}")
    if key in ("cosine", "onecycle"):
        least = warmup_steps + (2 if key == "onecycle" else 1)  # onecycle: a step up and a step down
        if total_steps is None or operator.index(total_steps) < least:
            raise ValueError(f"schedule {key!r} needs total_steps >= {least} (warmup_steps {warmup_steps} "
                             f"+ {least - warmup_steps}), got {total_steps}")
        if not 0 <= min_lr <= base_lr:
            raise ValueError(f"schedule {key!r}: min_lr must be in [0, base_lr={base_lr}], got {min_lr}")
    if key == "onecycle" and not 0 < peak_fraction < 1:
        raise ValueError(f"schedule 'onecycle': peak_fraction must be in (0, 1), got {peak_fraction}")
    return Schedule(key, float(base_lr), None if total_steps is None else operator.index(total_steps), warmup_steps,
                    None if step_size is None else operator.index(step_size), float(gamma), float(min_lr),
                    float(peak_fraction))


@dataclasses.dataclass(frozen=True)
class ExponentialSweep:
    """The learning-rate range test's schedule (Smith 2015; fastai's lr_find):
    lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1)), from start_lr at step 0 to
    end_lr at step steps - 1 (and held there), evenly spaced on a log scale."""

    start_lr: float
    end_lr: float
    steps: int

    def __post_init__(self):
        if not 0 < self.start_lr < self.end_lr < math.inf:
            raise ValueError(f"lr sweep: needs 0 < start lr < end lr, got {self.start_lr} and {self.end_lr}")
        if operator.index(self.steps) < 2:
            raise ValueError(f"lr sweep: needs at least 2 steps, got {self.steps}")

    def __call__(self, step):
        t = min(operator.index(step), self.steps - 1) / (self.steps - 1)
        return self.start_lr * (self.end_lr / self.start_lr) ** t
