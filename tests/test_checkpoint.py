"""Checkpoint files: round trip, atomic writes, clear errors for bad files and other models."""
import json
import os
import random
import zipfile

import numpy
import pytest
from numpy.testing import assert_array_equal

from gpucnn import checkpoint
from gpucnn.checkpoint import CheckpointError, check_model_state, load_checkpoint, save_checkpoint
from gpucnn.optim import make_optimizer


class FakeParam:
    def __init__(self, key, value, grad=None):
        self.key, self.value, self.grad = key, value, grad


def model_state():
    return {
        "0.weight": numpy.arange(24, dtype=numpy.float32).reshape(2, 3, 2, 2),
        "0.bias": numpy.array([0.5, -0.5], dtype=numpy.float32),
        "1.running_mean": numpy.zeros(2, dtype=numpy.float64),
        "1.num_batches_tracked": numpy.array(7, dtype=numpy.int64),  # 0-d
    }


def meta():
    rng = numpy.random.default_rng(2024)
    rng.standard_normal(3)
    return {
        "epoch": 3,
        "step": 17,
        "loss": 0.25,
        "config": {"model": "small", "lr": 1e-3, "betas": (0.9, 0.999), "augment": None, "name": "Ärger ✓"},
        "rng": rng.bit_generator.state,  # PCG64: 128-bit Python ints
        "mt19937": numpy.random.MT19937(5).state,  # holds a uint32 key array
        "python_random": random.Random(3).getstate(),  # nested tuples
        "numpy_scalars": [numpy.float32(1.5), numpy.int64(-4), numpy.bool_(True)],
        "history": [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.75}],
        "mask": numpy.array([True, False]),
    }


def assert_same(a, b):
    """Deep equality, arrays compared by value, dtype and shape."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, numpy.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert_array_equal(a, b)
    else:
        assert a == b


def optim_state():
    params = [FakeParam("0.weight", numpy.ones((2, 2))), FakeParam("0.bias", numpy.zeros(2))]
    opt = make_optimizer("adam", params, lr=0.01, weight_decay=0.1)
    for _ in range(3):
        for p in params:
            p.grad = numpy.full_like(p.value, 0.5)
        opt.step()
    return opt.state_dict()


def test_round_trip(tmp_path):
    path = tmp_path / "run.ckpt"
    m, o, x = model_state(), optim_state(), meta()
    save_checkpoint(path, model_state=m, optim_state=o, meta=x)
    assert os.listdir(tmp_path) == ["run.ckpt"]  # the exact name: no ".npz" added, no temp left
    loaded = load_checkpoint(path)
    assert set(loaded) == {"model_state", "optim_state", "meta"}
    assert_same(loaded["model_state"], m)
    assert_same(loaded["optim_state"], o)
    expected = dict(x, numpy_scalars=[1.5, -4, True])  # numpy scalars come back as Python numbers
    assert_same(loaded["meta"], expected)
    # The restored RNG state continues the same stream.
    rng = numpy.random.default_rng()
    rng.bit_generator.state = loaded["meta"]["rng"]
    original = numpy.random.default_rng(2024)
    original.standard_normal(3)
    assert_array_equal(rng.standard_normal(4), original.standard_normal(4))
    r = random.Random()
    r.setstate(loaded["meta"]["python_random"])
    assert r.random() == random.Random(3).random()


def test_file_layout_is_plain_npz(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model_state=model_state(), optim_state=optim_state(), meta={"epoch": 1})
    with numpy.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        tree = json.loads(str(npz["__checkpoint__"]))
    assert {"model/0.weight", "model/0.bias", "optim/state/0.weight/exp_avg", "__checkpoint__"} <= names
    assert tree["format"] == "gpucnn-checkpoint" and tree["version"] == checkpoint.VERSION
    assert tree["optim"]["step"] == 3 and tree["meta"] == {"epoch": 1}


def test_optimizer_resumes_from_a_checkpoint(tmp_path, rng):
    shapes = [(3, 2), (2,)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(5)]
    a_params = [FakeParam(f"{i}.w", rng.standard_normal(s)) for i, s in enumerate(shapes)]
    a = make_optimizer("sgd", a_params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)

    def run(opt, params, gs):
        for g in gs:
            for p, gi in zip(params, g):
                p.grad = gi
            opt.step()

    run(a, a_params, grads[:3])
    save_checkpoint(tmp_path / "c", model_state={p.key: p.value for p in a_params}, optim_state=a.state_dict(), meta={})
    ckpt = load_checkpoint(tmp_path / "c")
    b_params = [FakeParam(k, v.copy()) for k, v in ckpt["model_state"].items()]
    b = make_optimizer("sgd", b_params, lr=1.0, momentum=0.9, nesterov=True, weight_decay=0.01)
    b.load_state_dict(ckpt["optim_state"])
    run(a, a_params, grads[3:])
    run(b, b_params, grads[3:])
    for pa, pb in zip(a_params, b_params):
        assert_array_equal(pa.value, pb.value)


def test_overwrites_the_previous_checkpoint(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model_state=model_state(), meta={"epoch": 1})
    save_checkpoint(path, model_state=model_state(), meta={"epoch": 2})
    assert load_checkpoint(path)["meta"]["epoch"] == 2
    assert os.listdir(tmp_path) == ["c.ckpt"]


# --- atomic writes ---------------------------------------------------------------------
def failing_savez(file, **arrays):
    file.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("disk full")


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model_state=model_state(), meta={"epoch": 1})
    monkeypatch.setattr(numpy, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model_state=model_state(), meta={"epoch": 2})
    assert os.listdir(tmp_path) == ["c.ckpt"]  # no temporary file left behind
    assert load_checkpoint(path)["meta"]["epoch"] == 1


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(numpy, "savez", failing_savez)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.ckpt", model_state=model_state())
    assert os.listdir(tmp_path) == []


def test_interrupt_during_fsync_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model_state=model_state(), meta={"epoch": 1})

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model_state=model_state(), meta={"epoch": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.ckpt"]
    assert load_checkpoint(path)["meta"]["epoch"] == 1


@pytest.mark.parametrize("bad, match", [
    (dict(model_state={"w": [1, 2]}), "model_state"),
    (dict(model_state={}, meta={1: "int key"}), "not a str"),
    (dict(model_state={}, meta={"f": print}), "meta/f"),
    (dict(model_state={}, meta={"o": numpy.array([None])}), "object array"),
    (dict(model_state={}, meta={"x": {"__array__": "model/w"}}), "reserved"),
])
def test_unsaveable_values_are_refused_before_writing(tmp_path, bad, match):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model_state=model_state(), meta={"epoch": 1})
    with pytest.raises(TypeError, match=match):
        save_checkpoint(path, **bad)
    assert os.listdir(tmp_path) == ["c.ckpt"]
    assert load_checkpoint(path)["meta"]["epoch"] == 1


# --- bad files -------------------------------------------------------------------------------
def good_bytes(tmp_path):
    path = tmp_path / "good.ckpt"
    save_checkpoint(path, model_state=model_state(), optim_state=optim_state(), meta=meta())
    return path.read_bytes()


def assert_refused(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.ckpt", "no such checkpoint file")


def test_directory(tmp_path):
    assert_refused(tmp_path, "directory")


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (bytes(numpy.random.default_rng(0).integers(0, 256, 5000, dtype=numpy.uint8)), "not an .npz"),
    (b"\x80\x04\x95 a pickle, which is never loaded", "not an .npz"),
])
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "c.ckpt"
    path.write_bytes(content)
    assert_refused(path, match)


def test_a_plain_npy_file(tmp_path):
    path = tmp_path / "c.npy"
    numpy.save(path, numpy.ones(3))
    assert_refused(path, "not an .npz")


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.95, 0.999])
def test_truncated(tmp_path, fraction):
    data = good_bytes(tmp_path)
    path = tmp_path / "c.ckpt"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_refused(path, "truncated or corrupt")


def test_corrupted_array_bytes(tmp_path):
    data = bytearray(good_bytes(tmp_path))
    start = data.index(b"\x93NUMPY", 100)  # inside an archive member; flip its last data byte
    end = data.index(b"PK\x03\x04", start)
    data[end - 1] ^= 0xFF
    path = tmp_path / "c.ckpt"
    path.write_bytes(bytes(data))
    assert_refused(path, "truncated or corrupt")


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        numpy.savez(f, **arrays)


def test_an_npz_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npz"
    write_npz(path, w=numpy.ones(3))
    assert_refused(path, "without a '__checkpoint__' entry")


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "something-else", "version": 1}), "not a gpucnn checkpoint"),
    (json.dumps({"format": "gpucnn-checkpoint", "version": 99, "model": {}}), "version 99"),
    (json.dumps({"format": "gpucnn-checkpoint", "version": 1, "model": {"w": {"__array__": "model/w"}}}),
     "'model/w' is missing"),
])
def test_bad_structure(tmp_path, text, match):
    path = tmp_path / "c.ckpt"
    write_npz(path, __checkpoint__=numpy.array(text))
    assert_refused(path, match)


def test_is_a_zip_but_not_npz(tmp_path):
    path = tmp_path / "c.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


# --- a checkpoint from a different model ------------------------------------------------------
def test_check_model_state_accepts_the_same_model():
    check_model_state(model_state(), model_state(), "c.ckpt")


def test_check_model_state_names_what_differs():
    saved = model_state()
    saved["0.weight"] = numpy.zeros((4, 3, 2, 2))
    saved["2.weight"] = numpy.zeros(3)
    del saved["0.bias"]
    with pytest.raises(CheckpointError) as info:
        check_model_state(saved, model_state(), "runs/old.ckpt")
    message = str(info.value)
    assert message.startswith("runs/old.ckpt: is from a different model")
    assert "missing keys [0.bias]" in message
    assert "unexpected keys [2.weight]" in message
    assert "0.weight is (4, 3, 2, 2) in the checkpoint, (2, 3, 2, 2) in the model" in message


def test_check_model_state_clips_long_lists():
    many = {f"{i}.weight": numpy.zeros(1) for i in range(20)}
    with pytest.raises(CheckpointError, match=r"\.\.\. \(12 more\)"):
        check_model_state({}, many)


def test_checkpoint_gets_the_usual_file_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        path = tmp_path / "c.ckpt"
        save_checkpoint(path, model_state={"0.weight": numpy.zeros(2)})
        assert (path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(mask)
