"""Where a run's metrics go: one small interface, the loop reports to it, each sink writes.

The loop calls `epoch(row, step)` once per finished epoch, with the whole epoch record
(every key it has, passed on untouched), and `step(step, train_loss=..., lr=...)` every
`every` steps, at steps for which `wants_step` is true; only then does it read the loss
back from the device. `step` numbers are global: batches done since the run began, so a
resumed run goes on counting where it stopped. Only rank 0 holds sinks; elsewhere the
set is empty and asks for nothing.

Sinks today: the --metrics-out JSON Lines file (gpucnn.metrics) and a TensorBoard log
(gpucnn.tensorboard_log).
"""
from gpucnn import metrics


class JsonlSink:
    """The --metrics-out file: one line per epoch. A new run's file starts empty (an
    earlier run's lines go); a resumed run appends."""

    def __init__(self, path, new_run):
        self.path = path
        if new_run:
            metrics.start(path)

    def epoch(self, row, step):
        metrics.append(self.path, row)

    def step(self, step, values):
        pass

    def close(self, finished):
        pass


class Sinks:
    """Every sink of this process, reported to as one; closed when its `with` ends
    (`finished`: the block ended without an exception)."""

    def __init__(self, sinks=(), every=None):
        self.sinks, self.every = list(sinks), every

    def wants_step(self, step):
        return bool(self.sinks) and self.every is not None and step % self.every == 0

    def step(self, step, **values):
        for sink in self.sinks:
            sink.step(step, values)

    def epoch(self, row, step):
        for sink in self.sinks:
            sink.epoch(row, step)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        for sink in self.sinks:
            sink.close(finished=kind is None)
        return False


def open_sinks(*, rank, metrics_path=None, tensorboard_dir=None, every=None, config=None, first_step=0,
               new_run=True):
    """The sinks of a run on this rank (none but on rank 0); tensorboard_dir and
    metrics_path were checked at start-up (tensorboard_log.check_directory, validate)."""
    if rank != 0:
        return Sinks()
    sinks = []
    if metrics_path:
        sinks.append(JsonlSink(metrics_path, new_run))
    if tensorboard_dir:
        from gpucnn.tensorboard_log import TensorBoardSink

        sinks.append(TensorBoardSink(tensorboard_dir, config or {}, first_step=first_step, resumed=not new_run))
    return Sinks(sinks, every if tensorboard_dir else None)
