"""A net with Dropout stopped mid-epoch and resumed through fit() ends bit for bit where the
straight run does: the resumed run sets each Dropout's draw number to the global step, so
it draws the straight run's masks. Checked by planting: a resumed run's draw number one
off (either way), or the epoch's start instead of the step, fails the weights' comparison."""
import numpy
import pytest

from gpucnn import init, train
from gpucnn.checkpoint import load_checkpoint
from gpucnn.data.datasets import Dataset
from gpucnn.layers import Conv2d, Dropout, Flatten, Linear, ReLU
from gpucnn.optim import SGD
from gpucnn.sequential import Sequential

CONFIG = {"epochs": 2, "batch_size": 8, "seed": 0, "graph": False}  # 5 steps an epoch


def _data():
    rng = numpy.random.default_rng(0)
    return Dataset("tiny", rng.integers(0, 256, (40, 1, 6, 6), dtype=numpy.uint8), rng.integers(0, 3, 40),
                   rng.integers(0, 256, (8, 1, 6, 6), dtype=numpy.uint8), rng.integers(0, 3, 8), ["a", "b", "c"])


def _build():
    """Weights and Dropout seeds from the seeded initialiser: the same net every time (the same
    operations in the same order, so float32 is bit for bit too)."""
    init.seed(0)
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), Dropout(0.3), Flatten(), Linear(4 * 6 * 6, 16), ReLU(),
                       Dropout(0.5), Linear(16, 3))
    return model, SGD(model.parameters(), lr=0.1, momentum=0.9)


def _fit(model, optimizer, **kw):
    return train.fit(model, optimizer, lambda step: 0.1, _data(), CONFIG, log=lambda *_: None, progress=False, **kw)


def test_resumed_mid_epoch_with_dropout_equals_the_straight_run(tmp_path, monkeypatch):
    model, optimizer = _build()
    straight = _fit(model, optimizer)
    expected = model.state_dict()

    stop_at, steps = 7, [0]  # epoch 2, step 2: the draw number is neither 0 nor an epoch's start
    real_step = train.TrainStep.__call__

    def counted(self, x, y):
        steps[0] += 1
        return real_step(self, x, y)

    class CtrlC(train._Interrupt):
        requested = property(lambda self: steps[0] >= stop_at, lambda self, value: None)

    monkeypatch.setattr(train.TrainStep, "__call__", counted)
    monkeypatch.setattr(train, "_Interrupt", CtrlC)
    model, optimizer = _build()
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(train._StopRequested):
        _fit(model, optimizer, save_path=str(ckpt))
    monkeypatch.undo()

    saved = load_checkpoint(ckpt)
    meta = saved["meta"]
    assert (meta["epoch"], meta["step"]) == (1, 2)
    model, optimizer = _build()
    model.load_state_dict(saved["model_state"])
    optimizer.load_state_dict(saved["optim_state"])
    start = {k: meta[k] for k in ("epoch", "step", "loss_sum", "correct", "seen", "seconds")}
    resumed = _fit(model, optimizer, start=start)
    for key, value in expected.items():
        numpy.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    assert resumed[-1]["train_loss"] == straight[-1]["train_loss"]
    assert [int(d.draws) for d in model.leaves() if isinstance(d, Dropout)] == [10, 10]  # one draw a step
