"""`gpucnn lr-find`: the learning-rate range test (Smith 2015; fastai's lr_find, Lightning's
Tuner.lr_find).

A fresh net (the run's model, data, optimiser and seed) trains for up to --steps steps while
the learning rate grows exponentially from --start-lr to --end-lr. The sweep is a schedule
(optim.schedules.ExponentialSweep) run by the loop's own epoch and step (train._Epoch and
TrainStep); this module only watches the losses go by. It stops early when the smoothed
loss diverges, fastai's rule: more than 4 times its minimum (or not finite).

Smoothing: the bias-corrected exponential moving average fastai and Lightning use,
    avg_i = 0.98 * avg_(i-1) + 0.02 * loss_i,   smoothed_i = avg_i / (1 - 0.98^(i+1)).

Suggested rate: the rate of the lowest smoothed loss divided by 10 (fastai 1's rule). Also
printed: where the smoothed loss falls fastest against log(lr), Lightning's rule (the most
negative np.gradient of the smoothed losses, the first 10 and last step left out). With
fastai's smoothing over a 100-step sweep the smoothed curve lags the raw one by tens of
steps, which pushes the steepest point towards the divergence: LeNet on MNIST with Adam,
one epoch at constant lr, reaches 0.980 test accuracy at min/10 (0.0026) and 0.939 at the
steepest point (0.0215), so min/10 is the one suggested. Nothing is saved but the plot.
"""
import dataclasses
import itertools
import math

import numpy

BETA = 0.98  # smoothing of the loss, fastai's and Lightning's
DIVERGED = 4.0  # stop once the smoothed loss exceeds this times its minimum (fastai)
SKIP_BEGIN, SKIP_END = 10, 1  # Lightning's steepest-descent rule leaves these out


class _Diverged(Exception):
    pass


@dataclasses.dataclass
class Sweep:
    lrs: list  # the rate of each step taken
    losses: list  # each step's training loss
    smoothed: list
    stopped: tuple | None  # (step, lr) where the loss diverged, counting steps from 1; None if it never did
    interrupted: int | None = None  # the signal (Ctrl-C, SIGTERM) that ended the sweep early

    def steepest(self):
        """Rate where the smoothed loss falls fastest (Lightning's rule), or None if the sweep
        is too short to say (fewer than SKIP_BEGIN + SKIP_END + 2 steps)."""
        s = numpy.asarray(self.smoothed[SKIP_BEGIN:len(self.smoothed) - SKIP_END])
        if len(s) < 2:
            return None
        return self.lrs[SKIP_BEGIN + int(numpy.gradient(s, numpy.log(self.lrs[SKIP_BEGIN:SKIP_BEGIN + len(s)])).argmin())]

    def min_over_10(self):
        """The rate of the lowest smoothed loss, divided by 10 (fastai 1's rule)."""
        return self.lrs[int(numpy.argmin(self.smoothed))] / 10


class _Watch:
    """The loop's step, watched: each step's loss read back (one host sync a step) and
    smoothed; _Diverged once the smoothed loss runs away."""

    def __init__(self, step_fn, optimizer):
        self.step_fn, self.optimizer = step_fn, optimizer
        self.lrs, self.losses, self.smoothed = [], [], []
        self.avg, self.best = 0.0, math.inf
        self.stopped = None

    def __call__(self, x, y):
        loss, correct = self.step_fn(x, y)
        value = float(loss)
        if not math.isfinite(value):
            self.stopped = (len(self.losses) + 1, self.optimizer.lr)
            raise _Diverged
        self.avg = BETA * self.avg + (1 - BETA) * value
        smooth = self.avg / (1 - BETA ** (len(self.losses) + 1))
        self.lrs.append(self.optimizer.lr)
        self.losses.append(value)
        self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        if smooth > DIVERGED * self.best:
            self.stopped = (len(self.losses), self.optimizer.lr)
            raise _Diverged
        return loss, correct


def sweep(model, optimizer, schedule, data, config, progress=True):
    """Train `model` under the sweep `schedule` for schedule.steps steps or until the loss
    diverges; returns the Sweep. Batches are the training loop's (shuffled by seed and epoch,
    over as many epochs as the steps need)."""
    from gpucnn.data.batches import iterate, num_batches
    from gpucnn.layers.dropout import set_draws
    from gpucnn.train import _ZERO_SUMS, _dtype, _Epoch, _Interrupt, _StopRequested, make_step

    watch = _Watch(make_step(model, optimizer, False, label_smoothing=config.get("label_smoothing", 0.0)), optimizer)
    set_draws(model.leaves(), 0)
    model.train()
    batches = itertools.islice(itertools.chain.from_iterable(
        iterate(data.x_train, data.y_train, config["batch_size"], shuffle=True, seed=config["seed"], epoch=epoch,
                mean=data.mean, std=data.std, augment=config.get("augment", False) and config.get("augmentation", "crop-flip"),
                dtype=_dtype(model))
        for epoch in itertools.count()), schedule.steps)
    n, size = len(data.y_train), config["batch_size"]
    sizes = [min(size, n - k * size) for k in range(num_batches(n, size))]  # an epoch's batches, the last short
    run = _Epoch(watch, optimizer, schedule, 0, schedule.steps, dict(_ZERO_SUMS), {"epochs": 1}, progress,
                 images=sum(sizes[k % len(sizes)] for k in range(schedule.steps)))
    run.bar.set_description("lr-find")
    interrupted = None
    with _Interrupt() as interrupt, numpy.errstate(over="ignore", invalid="ignore"):
        try:
            run.run(batches, 0, interrupt, None)
        except _Diverged:
            pass
        except _StopRequested as e:  # after a whole step: the sweep so far is still worth a look
            interrupted = int(e.signum)
    return Sweep(watch.lrs, watch.losses, watch.smoothed, watch.stopped, interrupted)


def draw(result, out_path, fmt, title):
    from gpucnn.plot import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label=f"smoothed (EMA {BETA})")
    for lr, colour, what in ((result.min_over_10(), "C2", "suggested: min / 10"), (result.steepest(), "C3", "steepest descent")):
        if lr is not None:
            ax.axvline(lr, color=colour, ls="--", label=f"{what}: {lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    top = max(result.smoothed[0], min(result.smoothed)) * 1.5  # a diverging tail would hide the valley
    ax.set_ylim(min(result.losses) * 0.9, max(top, min(result.losses) * 1.1))
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out_path, fmt)


def run(args):
    from gpucnn import backend, init, models, validate
    from gpucnn.cli import _config, _folder_options
    from gpucnn.data import load
    from gpucnn.errors import GpucnnError
    from gpucnn.optim import make_optimizer
    from gpucnn.optim.schedules import ExponentialSweep
    from gpucnn.plot import check_image_output, pyplot

    config, _, _ = _config(args)
    validate.check_train_settings(config)
    try:
        schedule = ExponentialSweep(args.start_lr, args.end_lr, args.steps)
    except ValueError as e:
        raise GpucnnError(str(e).replace("start lr", "--start-lr").replace("end lr", "--end-lr")
                          .replace("steps", "--steps", 1)) from None
    out_path, fmt = check_image_output(args.output, "-o", **{"--dataset": config["dataset"] if config["dataset"].endswith(".npz") else None})
    pyplot()  # a missing matplotlib is told before the sweep
    data = load(config["dataset"], data_dir=config["data_dir"], download=args.download, cache_dir=args.cache_dir,
                folder_options=_folder_options(args, config))
    validate.check_splits(data, ("train",))
    init.seed(config["seed"])
    try:
        model = models.build(config["model"], data.x_train.shape[1:], len(data.classes), dtype=config["dtype"])
        optimizer = make_optimizer(config["optimizer"], model.parameters(), lr=args.start_lr,
                                   momentum=config["momentum"], nesterov=config["nesterov"],
                                   weight_decay=config["weight_decay"])
    except ValueError as e:
        raise GpucnnError(str(e)) from None
    print(f"gpucnn lr-find: {config['model']} on {data.name}, {config['optimizer']}, batch {config['batch_size']}, "
          f"lr {args.start_lr:g} to {args.end_lr:g} over {args.steps} steps, backend {backend.name()}")
    result = sweep(model, optimizer, schedule, data, config, progress=not args.no_progress)
    if len(result.losses) < 2:
        if result.interrupted:
            print(f"interrupted at step {len(result.losses)}: too few steps to suggest a rate")
            return 128 + result.interrupted
        step, lr = result.stopped
        raise GpucnnError(f"the loss diverged at step {step} (lr {lr:.3g}); start lower (--start-lr)")
    ended = (f"interrupted at step {len(result.losses)} of {args.steps}, lr {result.lrs[-1]:.3g}; "
             f"what follows is from the steps taken" if result.interrupted else
             f"stopped at step {result.stopped[0]} of {args.steps}, lr {result.stopped[1]:.3g}: the smoothed loss "
             f"passed {DIVERGED:g}x its minimum, or a loss was not finite" if result.stopped
             else f"ran all {args.steps} steps without diverging (raise --end-lr to see where it does)")
    print(ended)
    steepest, tenth = result.steepest(), result.min_over_10()
    print(f"suggested lr: {tenth:.3g} (lowest smoothed loss / 10, fastai 1's rule); steepest descent of the smoothed "
          f"loss against log lr (Lightning's rule): "
          + ("too few steps to say" if steepest is None else f"{steepest:.3g}"))
    title = f"lr-find: {config['model']} on {data.name}, {config['optimizer']}, batch {config['batch_size']}"
    draw(result, out_path, fmt, title)
    print(f"wrote {out_path}")
    return 128 + result.interrupted if result.interrupted else 0
