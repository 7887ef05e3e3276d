"""Prefetch: the same batches as without it, errors raised where they happen, the thread
stopped on every way out, memory-mapped images, and (with a stand-in for CuPy) the order of
the copy stream, its event and the caller's stream."""
import threading
import time
import types

import numpy
import pytest

from gpucnn.data import batches as batches_module
from gpucnn.data import prefetch
from gpucnn.data.batches import iterate


def images(rng, n=53):
    return rng.integers(0, 256, size=(n, 3, 6, 5), dtype=numpy.uint8), rng.integers(0, 4, size=n)


def run(x, y, prefetched, **kw):
    args = dict(shuffle=True, seed=3, epoch=2, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], **kw)
    return list(iterate(x, y, 8, prefetch=prefetched, **args))


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "gpucnn-prefetch"]


@pytest.mark.parametrize("augment", [False, "crop-flip", "rrc-flip"])
@pytest.mark.parametrize("shard", [None, (1, 3)])
def test_prefetched_batches_are_bit_identical(rng, augment, shard):
    x, y = images(rng)
    plain = run(x, y, False, augment=augment, skip=2, shard=shard)
    ahead = run(x, y, True, augment=augment, skip=2, shard=shard)
    assert len(plain) == len(ahead) == 5
    for (a, ya), (b, yb) in zip(plain, ahead):
        assert a.dtype == b.dtype == numpy.float32
        numpy.testing.assert_array_equal(a, b)
        numpy.testing.assert_array_equal(ya, yb)
    assert not prefetch_threads()


def test_gathers_from_a_memory_map(tmp_path, rng):
    x, y = images(rng)
    numpy.save(tmp_path / "x.npy", x)
    mapped = numpy.load(tmp_path / "x.npy", mmap_mode="r")
    for (a, _), (b, _) in zip(run(x, y, False, augment=True), run(mapped, y, True, augment=True)):
        numpy.testing.assert_array_equal(a, b)


def test_an_error_while_gathering_is_raised_in_the_caller_at_its_batch(rng):
    x, y = images(rng)

    class Failing:
        shape, dtype = x.shape, x.dtype

        def __len__(self):
            return len(x)

        def __getitem__(self, idx):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 3:
                raise OSError("disk went away")
            return x[idx]

    got = iterate(Failing(), y, 8, shuffle=False, seed=0, epoch=0, mean=0, std=1, prefetch=True)
    assert len([next(got), next(got)]) == 2
    with pytest.raises(OSError, match="disk went away"):
        next(got)
    _wait_for_no_thread()


def _wait_for_no_thread():
    for _ in range(50):
        if not prefetch_threads():
            return
        time.sleep(0.05)
    raise AssertionError("the prefetch thread is still running")


def test_leaving_early_stops_the_thread(rng):
    x, y = images(rng, n=400)
    got = iterate(x, y, 8, shuffle=True, seed=0, epoch=0, mean=0, std=1, prefetch=True)
    next(got)
    assert len(prefetch_threads()) == 1
    got.close()  # what fit's contextlib.closing does on Ctrl-C, SIGTERM or an error
    assert not prefetch_threads()


def test_the_queue_is_bounded(rng, monkeypatch):
    x, y = images(rng, n=400)
    made = []
    real = batches_module.HostBatch
    monkeypatch.setattr(batches_module, "HostBatch", lambda *a: made.append(1) or real(*a))
    got = iterate(x, y, 8, shuffle=True, seed=0, epoch=0, mean=0, std=1, prefetch=True)
    next(got)
    time.sleep(0.3)
    # one handed out, DEPTH in the queue, one made and waiting for room
    assert len(made) <= prefetch.DEPTH + 2
    got.close()


def test_fit_with_and_without_prefetch_ends_with_the_same_weights(tmp_path):
    pytest.importorskip("sklearn")
    from gpucnn import cli
    from gpucnn.checkpoint import load_checkpoint

    common = ["train", "--no-progress", "--batch-size", "64", "--epochs", "2", "--augment", "--augmentation", "rrc-flip"]
    assert cli.main([*common, "--no-prefetch", "--save", str(tmp_path / "a.ckpt")]) == 0
    assert cli.main([*common, "--prefetch", "--save", str(tmp_path / "b.ckpt")]) == 0
    a, b = (load_checkpoint(tmp_path / f)["model_state"] for f in ("a.ckpt", "b.ckpt"))
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not prefetch_threads()


# --- the CuPy path, on a stand-in -------------------------------------------------------
class Log(list):
    pass


class FakeEvent:
    def __init__(self, log, stream, n):
        self.log, self.stream, self.n = log, stream, n

    def synchronize(self):
        self.log.append(("host waits", self.stream.name, self.n))


class FakeStream:
    def __init__(self, log, name):
        self.log, self.name, self.events = log, name, 0

    def synchronize(self):
        self.log.append(("host waits for", self.name))

    def record(self):
        self.events += 1
        self.log.append(("record", self.name, self.events))
        return FakeEvent(self.log, self, self.events)

    def wait_event(self, event):
        self.log.append(("wait", self.name, event.stream.name, event.n))


class FakeDevice:
    """A device buffer: NumPy underneath; set() logs the stream it was given."""

    def __init__(self, log, array):
        self.log, self.array = log, array

    def __getitem__(self, key):
        return FakeDevice(self.log, self.array[key])

    def set(self, host, stream=None):
        self.log.append(("copy", stream.name, int(host[0, 0, 0, 0])))
        self.array[...] = host


def fake_cupy(monkeypatch, log):
    import sys

    caller = FakeStream(log, "caller")
    cupy = types.ModuleType("cupy")
    cupy.ndarray = FakeDevice
    cupy.empty = lambda shape, dtype: FakeDevice(log, numpy.empty(shape, dtype))
    cupy.cuda = types.SimpleNamespace(Stream=lambda non_blocking=False: FakeStream(log, "copy"),
                                      get_current_stream=lambda: caller)
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = numpy.empty
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)


def test_cupy_path_copies_ahead_on_its_stream_and_orders_by_events(monkeypatch):
    log = Log()
    fake_cupy(monkeypatch, log)
    x = numpy.arange(5, dtype=numpy.uint8).reshape(5, 1, 1, 1).repeat(2, axis=1)  # image k holds k
    y = numpy.arange(5)
    host = batches_module.gather(x, y, batches_module.epoch_plan(5, shuffle=False, seed=0, epoch=0), 1)

    def finish(xb, hb):
        log.append(("finish", int(xb.array[0, 0, 0, 0])))
        return xb.array.copy(), hb.y

    out = []
    for xb, yb in prefetch._on_cupy(host, finish, depth=2):
        log.append(("step", int(yb[0])))
        out.append(int(xb[0, 0, 0, 0]))
    assert out == [0, 1, 2, 3, 4]
    assert log[-1] == ("host waits for", "copy")  # nothing in flight when the buffers are freed
    where = {e: i for i, e in enumerate(log)}
    for k in range(5):
        copy = where[("copy", "copy", k)]
        sent = log[copy + 1]
        assert sent[:2] == ("record", "copy")                      # the copy's event
        waits = where[("wait", "caller", "copy", sent[2])]
        assert copy < waits < where[("finish", k)] < where[("step", k)]  # the caller waits for the copy
        if k + 1 < 5:
            assert where[("copy", "copy", k + 1)] < where[("step", k)]   # the next copy is queued first
        if k < 2:  # a new buffer: the copy waits for the caller's stream's work queued before it
            assert log[copy - 2][:2] == ("record", "caller") and log[copy - 1] == ("wait", "copy", "caller",
                                                                                   log[copy - 2][2])
        if k >= 2:  # slot reuse: the copy stream waits for the caller's reads of batch k - 2
            read = [e for e in log[:copy] if e[:2] == ("record", "caller")][k - 2]
            assert ("wait", "copy", "caller", read[2]) in log[:copy]
            assert ("host waits", "copy", where_sent(log, k - 2)) in log[:copy]


def where_sent(log, k):
    copy = log.index(("copy", "copy", k))
    return log[copy + 1][2]


@pytest.mark.gpu
@pytest.mark.parametrize("augment", [False, "crop-flip", "rrc-flip"])
def test_cupy_prefetch_gives_the_same_batches_on_the_callers_stream(on_cupy, rng, augment):
    """On a real GPU, inside a non-blocking stream as fit() runs the graphed step."""
    x, y = images(rng, n=300)
    with on_cupy.cuda.Stream(non_blocking=True):
        plain = [(on_cupy.asnumpy(a), on_cupy.asnumpy(b)) for a, b in run(x, y, False, augment=augment)]
        ahead = [(on_cupy.asnumpy(a), on_cupy.asnumpy(b)) for a, b in run(x, y, True, augment=augment)]
    assert len(plain) == len(ahead)
    for (a, ya), (b, yb) in zip(plain, ahead):
        numpy.testing.assert_array_equal(a, b)
        numpy.testing.assert_array_equal(ya, yb)
    assert not prefetch_threads()


@pytest.mark.parametrize("how", ["error", "sigterm"])
def test_a_run_that_ends_mid_epoch_leaves_no_prefetch_thread(tmp_path, monkeypatch, how):
    pytest.importorskip("sklearn")
    import os
    import signal

    from gpucnn import cli, train

    real, calls = train.TrainStep.__call__, [0]

    def step(self, x, y):
        calls[0] += 1
        if calls[0] == 3:
            if how == "error":
                raise RuntimeError("a step failed")
            os.kill(os.getpid(), signal.SIGTERM)  # handled after this step: save, stop, exit 143
        return real(self, x, y)

    monkeypatch.setattr(train.TrainStep, "__call__", step)
    args = ["train", "--no-progress", "--batch-size", "16", "--epochs", "1", "--save", str(tmp_path / "c.ckpt")]
    if how == "error":
        try:
            cli.main(args)
        except RuntimeError as e:  # while its traceback (which holds the loop's frames) is alive
            assert str(e) == "a step failed"
            assert not prefetch_threads()
        else:
            raise AssertionError("the step's error was not raised")
    else:
        assert cli.main(args) == 143
        assert not prefetch_threads()
