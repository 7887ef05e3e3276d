"""`gpucnn train` as each rank of the distributed tests runs it, with two test-only twists
from the environment (the code under test is unchanged):

    GPUCNN_TEST_TINY_VGG=1        --model vgg_bn is the same net with widths (4, 8)
    GPUCNN_TEST_FAIL=RANK,STEP    that rank raises RuntimeError at its STEP-th training step
    GPUCNN_TEST_PIDS=DIR          each rank writes its process id to DIR/rank<r>.pid
    GPUCNN_TEST_SIGINT=RANK,STEP  that rank sends itself SIGINT just before its STEP-th step
    GPUCNN_TEST_BACKEND=RANK,NAME that rank's backend says it is NAME (a GPU one rank lacks)
"""
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpucnn import cli, models  # noqa: E402  (after the path is set)

if os.environ.get("GPUCNN_TEST_TINY_VGG"):
    models.MODELS["vgg_bn"] = functools.partial(models.vgg_bn, widths=(4, 8))

def at_step(variable, action):
    """Run action() on rank R during its N-th training step, R,N from the environment variable."""
    from gpucnn import train

    rank, at = map(int, os.environ[variable].split(","))
    step, calls = train.TrainStep.__call__, [0]

    def hooked(self, x, y):
        calls[0] += 1
        if int(os.environ.get("PMI_RANK", "0")) == rank and calls[0] == at:
            action(at)
        return step(self, x, y)

    train.TrainStep.__call__ = hooked


def fail(at):
    raise RuntimeError(f"injected failure at step {at}, time {time.time():.3f}")


def interrupt(at):
    import signal

    os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag; the step goes on


if os.environ.get("GPUCNN_TEST_FAIL"):
    at_step("GPUCNN_TEST_FAIL", fail)
if os.environ.get("GPUCNN_TEST_SIGINT"):
    at_step("GPUCNN_TEST_SIGINT", interrupt)

if os.environ.get("GPUCNN_TEST_BACKEND"):
    rank, name = os.environ["GPUCNN_TEST_BACKEND"].split(",")
    if os.environ.get("PMI_RANK", "0") == rank:
        from gpucnn import backend

        backend.name = lambda: name

if os.environ.get("GPUCNN_TEST_PIDS"):
    with open(os.path.join(os.environ["GPUCNN_TEST_PIDS"], f"rank{os.environ.get('PMI_RANK', '0')}.pid"), "w") as f:
        f.write(str(os.getpid()))

sys.exit(cli.main(sys.argv[1:]))
