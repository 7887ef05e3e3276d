"""Property: any corruption of a valid file is either loaded or refused with gpucnn's own error.

Seeded random damage (bytes flipped, runs overwritten, cut short, bytes inserted or deleted)
to a valid dataset .npz, IDX files (raw and gzipped), a checkpoint and a metrics file, fed to
the loaders the command line uses (and to is_checkpoint, which must answer, never raise). A bounded number of cases per file keeps it to a few seconds.
"""
import gzip
import io

import numpy
import pytest

from reliability_helpers import idx_bytes, tiny_arrays

from gpucnn import metrics, validate
from gpucnn.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from gpucnn.metrics import encode
from gpucnn.data import idx, npz
from gpucnn.errors import GpucnnError

CASES = 150


def corrupt(data, rng):
    data = bytearray(data)
    kind = rng.integers(6)
    if kind == 0:  # flip a few bits
        for i in rng.integers(0, len(data), rng.integers(1, 9)):
            data[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # overwrite a run with one value
        i = int(rng.integers(len(data)))
        data[i:i + int(rng.integers(1, 64))] = bytes([int(rng.integers(256))]) * len(data[i:i + 64])
    elif kind == 2:  # cut short
        data = data[:int(rng.integers(len(data)))]
    elif kind == 3:  # insert random bytes
        i = int(rng.integers(len(data)))
        data[i:i] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=numpy.uint8).tobytes()
    elif kind == 4:  # delete a run
        i = int(rng.integers(len(data)))
        del data[i:i + int(rng.integers(1, 32))]
    else:  # random bytes in the first 128: headers
        for i in rng.integers(0, min(128, len(data)), 4):
            data[i] = int(rng.integers(256))
    return bytes(data)


def npz_file():
    f = io.BytesIO()
    numpy.savez(f, **tiny_arrays(n_train=6, n_test=3), classes=numpy.array(["a", "b", "c"]))
    return f.getvalue()


def checkpoint_file(tmp_path):
    state = {"0.weight": numpy.ones((2, 1, 3, 3), numpy.float32), "0.bias": numpy.zeros(2, numpy.float32)}
    optim = {"type": "SGD", "lr": 0.1, "state": {"0.weight": {"momentum": numpy.zeros((2, 1, 3, 3), numpy.float32)}}}
    meta = {"config": {"model": "small", "dataset": "digits", "epochs": 2, "batch_size": 4, "optimizer": "sgd",
                       "lr": 0.1, "schedule": "constant", "seed": 0},
            "epoch": 1, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0,
            "mean": [0.5], "std": [0.25], "rng": (1, 2, [3, 4])}
    save_checkpoint(tmp_path / "good.ckpt", model_state=state, optim_state=optim, meta=meta)
    return (tmp_path / "good.ckpt").read_bytes()


def load_whole_checkpoint(path):
    ckpt = load_checkpoint(path)
    validate.check_saved_run(ckpt, path, for_resume=True)
    return ckpt


def marker(path):
    """is_checkpoint never raises: a bool for any file."""
    if not is_checkpoint(path):
        raise GpucnnError(f"{path}: not a checkpoint")


METRICS = b"".join(encode({"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "test_loss": 0.9, "test_acc": 0.6,
                           "lr": 0.01}).encode() for e in (1, 2, 3))

IMAGES = idx_bytes(2051, (5, 6, 7), numpy.arange(210, dtype=numpy.uint8).tobytes())
LABELS = idx_bytes(2049, (5,), bytes([0, 1, 2, 3, 9]))

FILES = {
    "npz": (lambda tmp: npz_file(), npz.load),
    "idx images": (lambda tmp: IMAGES, idx.read_images),
    "idx images gz": (lambda tmp: gzip.compress(IMAGES), idx.read_images),
    "idx labels gz": (lambda tmp: gzip.compress(LABELS), lambda p: idx.read_labels(p, 10)),
    "checkpoint": (checkpoint_file, load_whole_checkpoint),
    "checkpoint marker": (checkpoint_file, marker),
    "metrics": (lambda tmp: METRICS, metrics.read),
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_random_corruptions_are_loaded_or_refused_cleanly(tmp_path, kind):
    make, load = FILES[kind]
    good = make(tmp_path)
    load_path = tmp_path / "f"
    load_path.write_bytes(good)
    load(str(load_path))  # the undamaged file loads
    rng = numpy.random.default_rng(sum(map(ord, kind)))
    outcomes = {"loaded": 0, "refused": 0}
    for n in range(CASES):
        damaged = corrupt(good, rng)
        load_path.write_bytes(damaged)
        try:
            load(str(load_path))
            outcomes["loaded"] += 1
        except GpucnnError as e:
            assert str(load_path) in str(e), e
            outcomes["refused"] += 1
        except Exception as e:  # anything else is a bug: say which damage found it
            pytest.fail(f"case {n} ({kind}): {type(e).__name__}: {e}")
    assert outcomes["refused"] > CASES // 4, outcomes  # the damage is real damage
