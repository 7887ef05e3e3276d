"""--save-best and --early-stop: watch the validation accuracy epoch by epoch.

Both monitor val_acc (of --val-split's held-out part, which they require): an epoch
improves when its val_acc is strictly higher than every earlier one's (Keras'
ModelCheckpoint(monitor="val_acc", save_best_only=True) and EarlyStopping(patience=N)
with min_delta 0). The monitor's state rides in each checkpoint (meta["monitor"]), so a
resumed run keeps the best value and the count of epochs without improvement. Under
mpirun, rank 0's verdicts (improved, stopped) are given to every rank, so all of them stop
after the same epoch; the ranks' resumed monitor states are compared first (same_run).
"""
import os

from gpucnn.errors import GpucnnError


def best_path(save):
    """Where --save-best keeps the best checkpoint: runs/last.ckpt -> runs/last.best.ckpt."""
    stem, ext = os.path.splitext(save)
    return f"{stem}.best{ext or '.ckpt'}"


def check_outputs(config, save, args):
    """Before training: GpucnnError for --save-best or --early-stop without what they need;
    the best checkpoint's path checked by the outputs guard. Returns that path, or None."""
    for key in ("save_best", "early_stop"):
        if config.get(key) and not config.get("val_split"):
            flag = "--" + key.replace("_", "-")
            raise GpucnnError(f"{flag} watches the validation accuracy: give --val-split FRACTION too")
    if config.get("early_stop") is not None and config["early_stop"] < 1:
        raise GpucnnError(f"--early-stop must be at least 1 epoch, got {config['early_stop']}")
    if config.get("save_best") and not save:
        raise GpucnnError("--save-best keeps a checkpoint beside --save's: drop --no-save")
    if not config.get("save_best"):
        return None
    from gpucnn.checkpoint import is_checkpoint
    from gpucnn.outputs import check_distinct, check_output

    path = best_path(save)
    check_distinct(**{"--save": save, "--save-best": path, "--metrics-out": args.metrics_out})
    check_output(path, what="checkpoint", is_ours=is_checkpoint)
    return path


def stopped_early(ckpt, path, config):
    """The line to print when a resumed run had already stopped early and --epochs does not
    extend it, else None."""
    state = ckpt["meta"].get("monitor") if ckpt is not None else None
    if isinstance(state, dict) and state.get("stopped") is True and not _extended(ckpt, config):
        return (f"{path}: the run stopped early at epoch {ckpt['meta']['epoch']} (--early-stop; best val_acc "
                f"{_fraction(state.get('best'))} at epoch {state.get('best_epoch')}); nothing to train (a larger --epochs "
                f"continues it, with the patience count started afresh)")
    return None


def _fraction(value):
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _extended(ckpt, config):
    """Whether this resume asks for more epochs than the checkpoint's run had: as in Keras, an
    early-stopped run then trains on, its patience counted afresh from the resumed epoch."""
    return config["epochs"] > ckpt["meta"]["config"]["epochs"]


class Monitor:
    """The best val_acc so far, its epoch, and how many epochs since it improved."""

    def __init__(self, patience=None, state=None):
        self.patience = patience
        state = state or {}
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.waited = int(state.get("waited", 0))
        self.stopped = bool(state.get("stopped", False))

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "waited": self.waited, "stopped": self.stopped}

    def update(self, epoch, val_acc, comm=None):
        """Record epoch `epoch` (1-based); return whether it improved. With a communicator,
        every rank calls this and takes rank 0's verdicts, improved and stopped (one
        allgather, on every rank)."""
        improved = self.best is None or val_acc > self.best
        stopped = self._stops(0 if improved else self.waited + 1)
        if comm is not None and comm.size > 1:  # rank 0's verdict: no rank stops on its own
            improved, stopped = map(bool, comm.allgather_object((improved, stopped))[0])
        if improved:
            self.best, self.best_epoch, self.waited = float(val_acc), epoch, 0
        else:
            self.waited += 1
        self.stopped = stopped
        return improved

    def _stops(self, waited):
        return self.patience is not None and waited >= self.patience

    def reason(self):
        return (f"early stop: val_acc has not improved for {self.waited} epoch(s) "
                f"(best {self.best:.4f} at epoch {self.best_epoch})")


def from_checkpoint(ckpt, config, path):
    """The Monitor a run starts with: fresh, or the one saved in the resumed checkpoint."""
    state = None
    if ckpt is not None:
        state = ckpt["meta"].get("monitor")
        if state is not None and not (isinstance(state, dict) and _valid(state)):
            from gpucnn.checkpoint import CheckpointError

            raise CheckpointError(f"{path}: its saved run is damaged (monitor is {str(state)[:60]}); "
                                  f"the checkpoint cannot be used")
        if state is not None and state.get("stopped") and _extended(ckpt, config):
            state = {**state, "waited": 0, "stopped": False}
    return Monitor(config.get("early_stop"), state)


def _valid(state):
    best, epoch, waited = state.get("best"), state.get("best_epoch"), state.get("waited", 0)
    number = isinstance(best, (int, float)) and not isinstance(best, bool)
    return ((best is None and epoch is None) or (number and 0 <= best <= 1 and type(epoch) is int and epoch >= 1)) \
        and type(waited) is int and waited >= 0 and isinstance(state.get("stopped", False), bool)
