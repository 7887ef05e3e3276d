"""The --tensorboard DIR sink: scalars per epoch and every N steps, and the run's
configuration as hparams, written with tensorboardX's SummaryWriter (no torch needed).

Tags: `epoch/<key>` for every number of the epoch record (train_loss, test_acc, lr,
images_per_s, ema_test_acc, ... whatever the loop puts in it), `step/train_loss` and
`step/lr` every N steps; all at the global step (batches since the run began). A resumed
run writes a new event file into the same directory with `purge_step` just past the step
it resumes from, so TensorBoard drops anything a crashed run logged past its checkpoint
and the curves go on where they stopped. A new run refuses a directory that already holds
event files: two runs in one directory draw over each other, and nothing a user has is
ever deleted.
"""
import glob
import os

from gpucnn.errors import GpucnnError
from gpucnn.install_hint import require
from gpucnn.outputs import check_output_directory

EVENTS = "*tfevents*"
# The hparams dashboard's metric columns (tags written every epoch).
HPARAM_METRICS = ("epoch/test_acc", "epoch/test_loss", "epoch/train_acc", "epoch/train_loss", "epoch/val_acc",
                  "epoch/val_loss")


def check_directory(path, every, *, resumed):
    """Start-up check of --tensorboard DIR and --tensorboard-every; returns the real path.
    A missing tensorboardX is told here, before any work."""
    if every < 1:
        raise GpucnnError(f"--tensorboard-every must be at least 1, got {every}")
    require("tensorboardX", "tensorboard", "TensorBoard logging needs tensorboardX")

    def problem(real):
        # Only DIR itself: TensorBoard shows each sub-directory as a run of its own.
        if not resumed and glob.glob(os.path.join(glob.escape(real), EVENTS)):
            return ("already holds TensorBoard event files of another run; give a new directory "
                    "(or --resume the run that wrote them)")
        return None

    return check_output_directory(path, what="TensorBoard log", problem=problem)


def hparams_of(config):
    """The configuration as the types hparams take: bool, int, float, str (None: 'none')."""
    return {k: v if isinstance(v, (bool, int, float, str)) else "none" if v is None else str(v)
            for k, v in sorted(config.items())}


class TensorBoardSink:
    def __init__(self, directory, config, *, first_step, resumed):
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        # Events past the checkpoint resumed from (a crash's) are hidden; those at its step are
        # of steps done. The suffix orders this file after the earlier ones, even in the same second.
        self.writer = SummaryWriter(directory, purge_step=first_step + 1 if resumed else None, flush_secs=10,
                                    filename_suffix=f".{first_step:012d}.{os.getpid()}")
        experiment, start, self._end = hparams(hparams_of(config), {tag: 0.0 for tag in HPARAM_METRICS})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def step(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(f"step/{key}", float(value), step)

    def epoch(self, row, step):
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", float(value), step)

    def close(self, finished):
        if finished:
            self.writer.file_writer.add_summary(self._end)
        self.writer.close()
