"""The training loop: steps, epochs, progress bars, metrics, checkpoints, resume.

Randomness is a pure function of (seed, epoch): the batch order and augmentation of an
epoch, the initial weights from the seed. So a run that stops after any step and resumes
from its checkpoint trains on exactly the batches it would have seen, and on NumPy ends
bit for bit where the straight run does.
"""
import contextlib
import json
import math
import signal
import time

import numpy
from tqdm import tqdm

from gpucnn import backend
from gpucnn.checkpoint import save_checkpoint
from gpucnn.data.batches import iterate, num_batches
from gpucnn.layers import SoftmaxCrossEntropy


class TrainingStopped(RuntimeError):
    """The loss went NaN/infinite; the message names the epoch and step."""


class TrainStep:
    """forward -> softmax cross-entropy -> backward -> optimiser update, no host sync.

    Returns (mean loss, number correct) as device scalars, so a CUDA graph can capture it.
    """

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.loss = SoftmaxCrossEntropy(dtype=_dtype(model))

    def __call__(self, x, y):
        logits = self.model.forward(x)
        # The class-index range check reads device memory; the data loader already
        # validated every label, so the hot path skips it.
        loss = self.loss.forward(logits, y, check=False)
        correct = (logits.argmax(axis=1) == y).sum()
        self.model.backward(self.loss.backward(), input_grad=False)
        self.optimizer.step()
        return loss, correct


def _dtype(model):
    """The float type the model computes in (its parameters'), float32 by default."""
    return next((p.value.dtype for p in model.parameters()), None)


def make_step(model, optimizer, use_graph):
    step = TrainStep(model, optimizer)
    if use_graph and backend.name() == "cupy":
        from gpucnn.graph import GraphedStep

        return GraphedStep(step)
    return step


def evaluate(model, x, y, mean, std, batch_size=1000, classes=None):
    """Mean loss, accuracy and per-class accuracy of `model` in eval mode."""
    xp = backend.xp
    was_training = model.training
    model.eval()
    loss_fn = SoftmaxCrossEntropy(dtype=_dtype(model))
    n_classes = classes or int(y.max()) + 1
    total_loss = xp.zeros((), dtype=xp.float64)
    hits = xp.zeros(n_classes, dtype=xp.int64)
    counts = xp.zeros(n_classes, dtype=xp.int64)
    for xb, yb in iterate(x, y, batch_size, shuffle=False, seed=0, epoch=0, mean=mean, std=std):
        logits = model.forward(xb)
        total_loss += loss_fn.forward(logits, yb, check=False) * len(yb)
        hits += xp.bincount(yb[logits.argmax(axis=1) == yb], minlength=n_classes)
        counts += xp.bincount(yb, minlength=n_classes)
    model.train(was_training)
    hits, counts = backend.to_numpy(hits), backend.to_numpy(counts)
    per_class = [float(h / c) if c else float("nan") for h, c in zip(hits, counts)]
    return float(total_loss) / len(y), float(hits.sum() / counts.sum()), per_class


class _Interrupt:
    """First Ctrl-C: finish the current step, save, stop. Second: stop at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)
        return False


def fit(model, optimizer, schedule, data, config, *, start=None, save_path=None, metrics_path=None,
        log=print, progress=True, stop_after=None):
    """Train for config['epochs'] epochs; return the list of per-epoch metric dicts.

    `start` (from a checkpoint) holds epoch, step (batches done in that epoch) and the
    running sums of the unfinished epoch. `stop_after` ends the run after that epoch
    while the schedule still spans config['epochs'].
    """
    xp = backend.xp
    epochs, batch_size, seed = config["epochs"], config["batch_size"], config["seed"]
    augment, refresh = config.get("augment", False), max(1, config.get("refresh_every", 20))
    steps_per_epoch = num_batches(len(data.y_train), batch_size, drop_last=False)
    start = start or {"epoch": 0, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    step_fn = make_step(model, optimizer, config.get("graph", True))
    history = []
    model.train()

    def checkpoint(epoch, step, sums):
        if save_path is None:
            return
        meta = {"config": config, "epoch": epoch, "step": step, **sums, "global_step": epoch * steps_per_epoch + step,
                # eval must normalise new data exactly as training did
                "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std]}
        save_checkpoint(save_path, model_state=model.state_dict(), optim_state=optimizer.state_dict(), meta=meta)

    stream = getattr(step_fn, "stream", None)
    # A diverging run overflows inside NumPy; the loss check below reports it in words.
    with _Interrupt() as interrupt, (stream if stream is not None else contextlib.nullcontext()), \
            numpy.errstate(over="ignore", invalid="ignore"):
        for epoch in range(start["epoch"], min(epochs, stop_after or epochs)):
            first = start["step"] if epoch == start["epoch"] else 0
            resumed = epoch == start["epoch"]
            loss_sum = xp.asarray(start["loss_sum"] if resumed else 0.0, dtype=xp.float64)
            correct = xp.asarray(start["correct"] if resumed else 0, dtype=xp.int64)
            seen = start["seen"] if resumed else 0
            spent = start["seconds"] if resumed else 0.0
            batches = iterate(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed, epoch=epoch,
                              mean=data.mean, std=data.std, augment=augment, skip=first)
            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                       disable=not progress, dynamic_ncols=True, leave=False)
            t0 = time.perf_counter()
            for step, (xb, yb) in enumerate(batches, start=first):
                optimizer.lr = schedule(epoch * steps_per_epoch + step)
                loss, right = step_fn(xb, yb)
                # Accumulate on the device right away: graph outputs are overwritten by the next replay.
                loss_sum += loss * len(yb)
                correct += right
                seen += len(yb)
                last = step + 1 == steps_per_epoch
                if (step + 1) % refresh == 0 or last or xp is not backend.cupy_module() or interrupt.requested:
                    value = float(loss)  # the only read-back, at bar updates on the GPU
                    if not math.isfinite(value):
                        bar.close()
                        raise TrainingStopped(
                            f"loss became {value} at epoch {epoch + 1}, step {step + 1}; stopped "
                            f"(the last good checkpoint, if any, is kept: {save_path or 'none saved'})"
                        )
                    if (step + 1) % refresh == 0 or last:
                        elapsed = spent + time.perf_counter() - t0
                        bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.4f}",
                                        img_s=f"{seen / max(elapsed, 1e-9):,.0f}", refresh=False)
                bar.update(1)
                if interrupt.requested and not last:
                    bar.close()
                    checkpoint(epoch, step + 1, {"loss_sum": float(loss_sum), "correct": int(correct), "seen": seen,
                                                 "seconds": spent + time.perf_counter() - t0})
                    log(f"interrupted at epoch {epoch + 1}, step {step + 1}"
                        + (f"; checkpoint saved to {save_path} (continue with --resume {save_path})" if save_path else ""))
                    raise KeyboardInterrupt
            backend.synchronize()
            seconds = spent + time.perf_counter() - t0
            bar.close()
            test_loss, test_acc, _ = evaluate(model, data.x_test, data.y_test, data.mean, data.std, classes=len(data.classes))
            row = {
                "epoch": epoch + 1, "train_loss": float(loss_sum) / seen, "train_acc": int(correct) / seen,
                "test_loss": test_loss, "test_acc": test_acc, "seconds": round(seconds, 3),
                "images_per_s": round(seen / max(seconds, 1e-9), 1),
                "lr": optimizer.lr,
            }
            history.append(row)
            log(f"epoch {epoch + 1}/{epochs} - {seconds:.1f}s - loss {row['train_loss']:.4f} - acc {row['train_acc']:.4f}"
                f" - test_loss {test_loss:.4f} - test_acc {test_acc:.4f} - {row['images_per_s']:,.0f} img/s")
            if metrics_path:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            checkpoint(epoch + 1, 0, {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0})
    return history
