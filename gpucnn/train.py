"""The training loop: steps, epochs, progress bars, metrics, checkpoints, resume.

Randomness is a pure function of (seed, epoch): the batch order and augmentation of an
epoch, the initial weights from the seed. So a run that stops after any step and resumes
from its checkpoint trains on exactly the batches it would have seen, and on NumPy ends
bit for bit where the straight run does.
"""
import contextlib
import math
import os
import signal
import time
from functools import partial

import numpy
from tqdm import tqdm

from gpucnn import backend, distributed, evaluation
from gpucnn.checkpoint import save_checkpoint
from gpucnn.data.batches import iterate, num_batches, share
from gpucnn.graph import closed_after
from gpucnn.layers import SoftmaxCrossEntropy
from gpucnn.layers.dropout import set_draws
from gpucnn.sinks import Sinks, open_sinks


class TrainingStopped(RuntimeError):
    """The loss went NaN/infinite; the message names the epoch and step."""

    collective = True  # data-parallel: every rank reads the same summed loss after the same steps


class TrainStep:
    """forward -> softmax cross-entropy -> backward -> optimiser update, no host sync.

    Returns (mean loss, number correct) as device scalars, so a CUDA graph can capture it.
    With an `ema` (gpucnn.ema.EMA), its average is updated after the optimiser, in the step.
    """

    def __init__(self, model, optimizer, *, label_smoothing=0.0, ema=None, sync=None):
        self.model, self.optimizer, self.ema, self.sync = model, optimizer, ema, sync
        self.loss = SoftmaxCrossEntropy(label_smoothing, dtype=_dtype(model))

    def __call__(self, x, y):
        logits = self.model.forward(x)
        # The class-index range check reads device memory; the data loader already
        # validated every label, so the hot path skips it.
        loss = self.loss.forward(logits, y, check=False)
        correct = (logits.argmax(axis=1) == y).sum()
        if self.sync is None:
            self.model.backward(self.loss.backward(), input_grad=False)
        else:  # data-parallel: this rank's part of the global batch's mean loss, summed over ranks
            self.model.backward(self.loss.backward(self.sync.grad_scale), input_grad=False)
            loss, correct = self.sync(loss, correct, len(y))
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return loss, correct

    def release(self):
        """Drop the arrays the last step left in the model and the loss (graph.py calls
        this before capturing, so the eager step's memory is freed, not cached)."""
        self.model.release()
        self.loss.release()


def _dtype(model):
    """The float type the model computes in (its parameters'), float32 by default."""
    return next((p.value.dtype for p in model.parameters()), numpy.dtype(numpy.float32))


def make_step(model, optimizer, use_graph, *, label_smoothing=0.0, ema=None, sync=None):
    step = TrainStep(model, optimizer, label_smoothing=label_smoothing, ema=ema, sync=sync)
    if use_graph and backend.name() == "cupy":
        from gpucnn.graph import GraphedStep

        return GraphedStep(step)
    return step


def evaluate(model, x, y, mean, std, batch_size=1000, classes=None, tta=False, comm=None):
    """Mean loss (plain cross-entropy, no label smoothing), accuracy and per-class accuracy
    of `model` in eval mode; tta averages each image's logits with its mirror's (gpucnn.tta).
    With a communicator of several ranks, each evaluates its share of the set, once."""
    xp = backend.xp
    n_total, n_classes = len(y), classes or int(y.max()) + 1
    if comm is not None and comm.size > 1:
        lo, hi = share(n_total, comm.rank, comm.size)
        x, y = x[lo:hi], y[lo:hi]
    total_loss = xp.zeros((), dtype=xp.float64)
    hits = xp.zeros(n_classes, dtype=xp.int64)
    counts = xp.zeros(n_classes, dtype=xp.int64)
    for logits, yb, loss in evaluation.batches(model, x, y, mean, std, batch_size=batch_size, tta=tta):
        total_loss += loss
        hits += xp.bincount(yb[logits.argmax(axis=1) == yb], minlength=n_classes)
        counts += xp.bincount(yb, minlength=n_classes)
    hits, counts = backend.to_numpy(hits), backend.to_numpy(counts)
    if comm is not None and comm.size > 1:
        summed = comm.sum_host([float(total_loss), *hits, *counts])
        total_loss, hits, counts = summed[0], summed[1:1 + n_classes], summed[1 + n_classes:]
    per_class = [float(h / c) if c else float("nan") for h, c in zip(hits, counts)]
    return float(total_loss) / n_total, float(hits.sum() / counts.sum()), per_class


class _StopRequested(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) seen and the current step finished: the state is whole and can be
    saved. `signum` says which signal, so the command exits 128 + signum like the shell does."""

    collective = True  # data-parallel: every rank stops after the same step

    def __init__(self, signum=signal.SIGINT):
        super().__init__()
        self.signum = signum


class _StopNow(KeyboardInterrupt):
    """A second signal: stop at once, without saving."""

    def __init__(self, signum):
        super().__init__()
        self.signum = signum


class _Interrupt:
    """First Ctrl-C or SIGTERM (what Slurm and Kubernetes send before a kill): finish the
    current step, save, stop. Second: stop at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    signum = signal.SIGINT

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise _StopNow(signum)
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False


def fit(model, optimizer, schedule, data, config, *, start=None, save_path=None, metrics_path=None,
        log=print, progress=True, stop_after=None, comm=None, ema=None, sinks=None, monitor=None, best_path=None):
    """Train for config['epochs'] epochs; return the list of per-epoch metric dicts.

    `start` (from a checkpoint) holds epoch, step (batches done in that epoch) and the
    running sums of the unfinished epoch. `stop_after` ends the run after that epoch
    while the schedule still spans config['epochs']. `ema` (gpucnn.ema.EMA) is updated in
    every step, evaluated after every epoch and saved in the checkpoint's meta["ema"].

    `comm` (gpucnn.distributed) of several ranks: data-parallel. Each rank steps on its
    share of every global batch; only rank 0 writes the checkpoint and metrics.

    `sinks` (gpucnn.sinks.Sinks) get every epoch's record and, every N steps, the step's
    loss and learning rate; fit closes them. Without it, rank 0 appends to `metrics_path`.

    `data` with a validation part (gpucnn.data.split): each epoch is scored on it, and the
    test split only after the run's last epoch. `monitor` (gpucnn.best.Monitor) watches its
    val_acc: saved in every checkpoint; an improvement writes `best_path` first; its
    patience running out ends the run early.
    """
    epochs = config["epochs"]
    steps_per_epoch = num_batches(len(data.y_train), config["batch_size"], drop_last=False)
    start = start or {"epoch": 0, "step": 0, **_ZERO_SUMS}
    comm = comm or distributed.Single()
    if sinks is None:
        sinks = open_sinks(rank=comm.rank, metrics_path=metrics_path, new_run=False)
    sync = distributed.GradientSync(comm, model, backend.xp) if comm.size > 1 else None
    step_fn = make_step(model, optimizer, config.get("graph", True), label_smoothing=config.get("label_smoothing", 0.0),
                        ema=ema, sync=sync)
    history = []
    model.train()

    written = []  # the positions this run saved at
    fingerprint = data.fingerprint()  # what a resume checks it trains on (labels hashed once, not per save)

    def checkpoint(epoch, step, sums, path=save_path):
        if path is None:
            return
        if comm.rank == 0:  # rank 0 writes; the others wait at the barrier until the file is whole
            _save(epoch, step, sums, path)
        comm.barrier()
        if path == save_path:
            written.append(epoch * steps_per_epoch + step)

    def _save(epoch, step, sums, path):
        meta = {"config": config, "epoch": epoch, "step": step, **sums, "global_step": epoch * steps_per_epoch + step,
                # what eval checks a dataset against before building the net
                "input_shape": [int(d) for d in data.x_train.shape[1:]], "num_classes": len(data.classes),
                # eval must normalise new data exactly as training did
                "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
                # predict and export rebuild the net and label its outputs without the dataset
                "classes": [str(c) for c in data.classes],
                # a resume checks it trains on the same images (a folder may have changed since)
                "data": fingerprint}
        if ema is not None:
            meta["ema"] = ema.state_dict()
        if monitor is not None:
            meta["monitor"] = monitor.state_dict()
        save_checkpoint(path, model_state=model.state_dict(), optim_state=optimizer.state_dict(), meta=meta)

    stream = getattr(step_fn, "stream", None)
    # A diverging run overflows inside NumPy; the loss check reports it in words.
    # The graphs go when the loop ends, before the communicator (gpucnn.graph.closed_after).
    with _Interrupt() as interrupt, closed_after(step_fn, comm), \
            (stream if stream is not None else contextlib.nullcontext()), \
            numpy.errstate(over="ignore", invalid="ignore"), sinks:
        # Dropout masks are a function of the global step: a resumed run draws the straight run's.
        # Written on the step's stream, which waited for the null stream only when it was made.
        set_draws(model.leaves(), start["epoch"] * steps_per_epoch + start["step"])
        for epoch in range(start["epoch"], min(epochs, stop_after or epochs)):
            resumed = epoch == start["epoch"]
            first = start["step"] if resumed else 0
            sums = {k: start[k] for k in _ZERO_SUMS} if resumed else dict(_ZERO_SUMS)
            epoch_run = _Epoch(step_fn, optimizer, schedule, epoch, steps_per_epoch, sums, config, progress, sync, sinks,
                               images=len(data.y_train))
            augment = config.get("augment", False) and config.get("augmentation", "crop-flip")
            batches = iterate(data.x_train, data.y_train, config["batch_size"], shuffle=True, seed=config["seed"],
                              epoch=epoch, mean=data.mean, std=data.std, augment=augment,
                              skip=first, shard=(comm.rank, comm.size) if sync else None, dtype=_dtype(model),
                              prefetch=config.get("prefetch", True))
            if sync:
                batches = sync.announce(batches, len(data.y_train), config["batch_size"], first, interrupt)
            try:
                # A divergence names the checkpoint only if it is this run's: written by it, or resumed from.
                kept = save_path if written or start["epoch"] or start["step"] else None
                with contextlib.closing(batches):  # an early exit stops the prefetch thread too
                    sums = epoch_run.run(batches, first, interrupt, kept)
            except _StopRequested:  # after a whole step; a second Ctrl-C stops without saving
                step, sums = epoch_run.position()
                _average_buffers(comm, model, ema)
                checkpoint(epoch, step, sums)
                log(f"interrupted at epoch {epoch + 1}, step {step}"
                    + (f"; checkpoint saved to {save_path} (continue with --resume {save_path})" if save_path else ""))
                raise
            _average_buffers(comm, model, ema)  # one model is evaluated and saved
            row = {
                "epoch": epoch + 1, "train_loss": sums["loss_sum"] / sums["seen"],
                "train_acc": sums["correct"] / sums["seen"], "test_loss": None, "test_acc": None,
                "seconds": round(sums["seconds"], 3), "images_per_s": round(sums["seen"] / max(sums["seconds"], 1e-9), 1),
                "lr": optimizer.lr,
            }
            held = getattr(data, "x_val", None) is not None
            scored = partial(_scores, model, config, comm, ema, len(data.classes), data.mean, data.std)
            row.update(scored("val", data.x_val, data.y_val) if held else scored("test", data.x_test, data.y_test))
            improved = monitor is not None and monitor.update(epoch + 1, row["val_acc"], comm)
            end = epoch + 1 == min(epochs, stop_after or epochs) or (monitor is not None and monitor.stopped)
            if held and end:  # the test split is scored once, after the run's last epoch
                row.update({k.replace("val", "test"): v for k, v in row.items() if "val_" in k} if data.val_is_test
                           else scored("test", data.x_test, data.y_test))
            history.append(row)
            log(epoch_line(row, epochs, sums["seconds"], held and end and data.val_is_test))
            if improved and best_path:  # before the last checkpoint, which records it as written
                checkpoint(epoch + 1, 0, dict(_ZERO_SUMS), best_path)
            checkpoint(epoch + 1, 0, dict(_ZERO_SUMS))  # first: a failing metrics write must not cost it
            sinks.epoch(row, step=(epoch + 1) * steps_per_epoch)
            if monitor is not None and monitor.stopped:
                log(monitor.reason())
                break
    return history


def _scores(model, config, comm, ema, classes, mean, std, split, x, y):
    """{split}_loss and {split}_acc of the model (and ema_{split}_... of its average) on x, y."""
    tta = config.get("tta", False)
    loss, acc, _ = evaluate(model, x, y, mean, std, classes=classes, tta=tta, comm=comm)
    out = {f"{split}_loss": loss, f"{split}_acc": acc}
    if ema is not None:
        with ema.swapped():
            out[f"ema_{split}_loss"], out[f"ema_{split}_acc"], _ = evaluate(model, x, y, mean, std, classes=classes,
                                                                           tta=tta, comm=comm)
    return out


def epoch_line(row, epochs, seconds, val_is_test=False):
    """The line printed after an epoch, from its metrics row (scores it lacks are left out)."""
    scores = " - ".join(f"{k} {row[k]:.4f}" for k in ("val_loss", "val_acc", "test_loss", "test_acc",
                                                      "ema_val_acc", "ema_test_acc") if row.get(k) is not None)
    return (f"epoch {row['epoch']}/{epochs} - {seconds:.1f}s - loss {row['train_loss']:.4f} - acc "
            f"{row['train_acc']:.4f} - {scores} - "
            + ("(test = the held-out part: the dataset has no test split) - " if val_is_test else "")
            + f"{row['images_per_s']:,.0f} img/s")


def _average_buffers(comm, model, ema):
    """BatchNorm statistics averaged over ranks, in the net and in the EMA's copy of them
    (copied each step from this rank's own: evaluated and saved, they must be the job's)."""
    distributed.average_buffers(comm, model)
    if ema is not None and comm.size > 1:
        ema.copy_buffers()


# What a checkpoint keeps of an unfinished epoch, so its metrics survive a resume.
_ZERO_SUMS = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


class _Epoch:
    """One epoch's steps: progress bar, running sums kept on the device, NaN check, Ctrl-C."""

    def __init__(self, step_fn, optimizer, schedule, epoch, steps_per_epoch, sums, config, progress, sync=None,
                 sinks=None, images=None):
        xp = backend.xp
        self.step_fn, self.optimizer, self.schedule, self.sync = step_fn, optimizer, schedule, sync
        self.sinks = sinks or Sinks()
        self.epoch, self.steps = epoch, steps_per_epoch
        self.on_gpu = xp is backend.cupy_module()
        self.refresh = max(1, config.get("refresh_every", 20))
        # Device accumulators: adding to them needs no host sync.
        self.loss_sum = xp.asarray(sums["loss_sum"], dtype=xp.float64)
        self.correct = xp.asarray(sums["correct"], dtype=xp.int64)
        self.seen, self.spent = sums["seen"], sums["seconds"]
        # Counted in images, so tqdm's own rate is img/s, the unit of the epoch's summary line.
        self.bar = tqdm(total=images, desc=f"epoch {epoch + 1}/{config['epochs']}", unit="img", unit_scale=True,
                        disable=not progress, dynamic_ncols=True, leave=False)
        self.done = 0
        self.t0 = time.perf_counter()

    def position(self):
        """(steps done in this epoch, running sums as plain numbers)."""
        return self.done, {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen,
                           "seconds": self.spent + time.perf_counter() - self.t0}

    def run(self, batches, first, interrupt, save_path):
        self.done = first
        self.bar.update(self.seen)  # the images of the steps a resumed epoch already ran
        try:
            for step, (xb, yb) in enumerate(batches, start=first):
                self.optimizer.lr = self.schedule(self.epoch * self.steps + step)
                loss, right = self.step_fn(xb, yb)
                # Accumulate right away: graph outputs are overwritten by the next replay.
                count = len(yb) if self.sync is None else self.sync.global_count(yb)
                self.loss_sum += loss * count
                self.correct += right
                self.seen += count
                self.done = step + 1
                at = self.epoch * self.steps + self.done
                if self.sinks.wants_step(at):  # every N steps: the only other read-back of the loss
                    self.sinks.step(at, train_loss=float(loss), lr=self.optimizer.lr)
                last = self.done == self.steps
                # Data-parallel, a rank's own Ctrl-C must not change which steps read back:
                # every rank reads the job's stop flag after the same steps.
                checked = not self.on_gpu or self.done % self.refresh == 0 or last
                if checked or (interrupt.requested and self.sync is None):
                    self._check(float(loss), save_path)  # on the GPU, the only read-back
                if self.done % self.refresh == 0 or last:
                    self._show()
                self.bar.update(count)
                stop = interrupt.requested if self.sync is None else checked and self.sync.stop_seen()
                if stop and not last:
                    raise _StopRequested(interrupt.signum)
            backend.synchronize()
        finally:
            self.bar.close()
        return self.position()[1]

    def _check(self, value, save_path):
        if not math.isfinite(value):
            kept = (f"the last good checkpoint is kept: {save_path}" if save_path and os.path.exists(save_path)
                    else "no checkpoint was saved")
            raise TrainingStopped(f"loss became {value} at epoch {self.epoch + 1}, step {self.done}; stopped ({kept})")

    def _show(self):
        self.bar.set_postfix(loss=f"{float(self.loss_sum) / self.seen:.4f}", acc=f"{int(self.correct) / self.seen:.4f}",
                             refresh=False)
