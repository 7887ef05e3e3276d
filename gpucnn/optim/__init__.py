"""Optimisers (SGD, Adam, AdamW) matching torch.optim's update formulas, and stateless
learning-rate schedules.

The learning rate and step count live on the device and every buffer is updated in
place, so `step()` can be captured in a CUDA graph: set `optimizer.lr = schedule(step)`
before each step, and the replayed graph reads the new value.
"""
from gpucnn.optim.adam import Adam, AdamW
from gpucnn.optim.base import Optimizer
from gpucnn.optim.schedules import (SCHEDULES, Schedule, constant_lr, cosine_lr, make_schedule, onecycle_lr, step_lr,
                                    warmup_lr)
from gpucnn.optim.sgd import SGD

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(name, params, lr, momentum=0.0, weight_decay=None, nesterov=False, betas=(0.9, 0.999), eps=1e-8,
                   fused=None):
    """The optimiser called `name` ("sgd", "adam", "adamw") over `params`.

    momentum and nesterov are SGD's (ignored by Adam/AdamW, except that nesterov=True
    with them is an error); betas and eps are Adam's. weight_decay=None means the
    optimiser's default (0 for SGD and Adam, 0.01 for AdamW).
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    wd = {} if weight_decay is None else {"weight_decay": weight_decay}
    if key == "sgd":
        return SGD(params, lr, momentum=momentum, nesterov=nesterov, fused=fused, **wd)
    if nesterov:
        raise ValueError(f"nesterov momentum is an SGD option, not {OPTIMIZERS[key].__name__}'s")
    return OPTIMIZERS[key](params, lr, betas=betas, eps=eps, fused=fused, **wd)


__all__ = ["OPTIMIZERS", "SCHEDULES", "SGD", "Adam", "AdamW", "Optimizer", "Schedule", "constant_lr", "cosine_lr",
           "make_optimizer", "make_schedule", "onecycle_lr", "step_lr", "warmup_lr"]
