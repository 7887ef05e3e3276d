"""Fail before the first step, survive SIGTERM, resume only what can be resumed, and every
command (train, eval, plot) refuses bad input with one line: through the real command line."""
import json
import os
import signal

import pytest

from reliability_helpers import (ROOT, TRAIN, edit_checkpoint, forge_shape, gpucnn, npz_entries, refused,
                                 signal_after_first_checkpoint, snapshot, tiny_npz, train_tiny, write_zip)

from gpucnn.checkpoint import load_checkpoint


# --- settings refused at start-up ---------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--batch-size", "-1"], "--batch-size must be at least 1, got -1"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--epochs", "-2"], "--epochs must be at least 1, got -2"),
    (["--stop-after", "-1"], "--stop-after must be at least 1"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--seed", str(2**70)], "--seed must be below 2**63"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--momentum", "inf"], "--momentum must be a finite number"),
])
def test_bad_settings_fail_before_the_data_is_loaded(tmp_path, args, words):
    # the dataset does not exist: a refusal that names the setting was made before loading it
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", tmp_path / "absent.npz", *TRAIN, *args, "--save", tmp_path / "c.ckpt"), words)
    assert snapshot(tmp_path) == before


def test_outputs_are_checked_before_the_data_is_loaded(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", tmp_path / "absent.npz", *TRAIN, "--save", tmp_path / "notes.txt"),
            "not a gpucnn checkpoint")
    assert snapshot(tmp_path) == before


def test_checkpoint_is_written_before_the_metrics(tmp_path, monkeypatch, capsys):
    """A metrics write that fails after an epoch (its disk filled, its directory removed) must
    not cost the epoch's checkpoint: it is already on disk, and the message is one line."""
    from gpucnn import cli, metrics
    from gpucnn.outputs import OutputWriteError

    def disk_full(path, row):
        raise OutputWriteError(f"{path}: cannot write the metrics file: No space left on device")

    monkeypatch.setattr(metrics, "append", disk_full)
    d, ckpt = tiny_npz(tmp_path / "d.npz"), tmp_path / "c.ckpt"
    assert cli.main(["train", "--dataset", d, *TRAIN, "--save", str(ckpt), "--metrics-out", str(tmp_path / "m.jsonl")]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 1


# --- signals ----------------------------------------------------------------------------------
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    d, ckpt = tiny_npz(tmp_path / "d.npz", n_train=64), tmp_path / "c.ckpt"
    env = {**os.environ, "PYTHONPATH": ROOT, "GPUCNN_BACKEND": "numpy"}
    rc, out, err = signal_after_first_checkpoint(["--dataset", d, "--model", "small", "--batch-size", "2", "--epochs",
                                                  "100000", "--no-progress", "--save", ckpt], ckpt, signal.SIGTERM, env)
    assert rc == 143, err
    assert "interrupted at epoch" in out and f"checkpoint saved to {ckpt} (continue with --resume {ckpt})" in out
    assert "Traceback" not in err
    meta = load_checkpoint(ckpt)["meta"]
    assert meta["epoch"] >= 1 and meta["config"]["epochs"] == 100000


# --- resume -----------------------------------------------------------------------------------
def test_resuming_a_finished_run_says_so(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    d = train_tiny(tmp_path, ckpt)
    before = snapshot(tmp_path)
    r = gpucnn("train", "--resume", ckpt, "--save", ckpt, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "already finished (1 of 1 epochs)" in r.stdout and "checkpoint:" not in r.stdout
    assert snapshot(tmp_path) == before
    assert d


def test_resuming_at_or_past_stop_after_says_so(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    train_tiny(tmp_path, ckpt, "--epochs", "3", "--stop-after", "2")
    before = snapshot(tmp_path)
    for n in ("1", "2"):
        r = gpucnn("train", "--resume", ckpt, "--save", ckpt, "--stop-after", n, "--no-progress")
        assert r.returncode == 0, r.stderr
        assert f"at or past --stop-after {n}" in r.stdout and "checkpoint:" not in r.stdout
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("existing", [False, True])
def test_divergence_names_the_kept_checkpoint_only_when_there_is_one(tmp_path, existing):
    ckpt = tmp_path / "c.ckpt"
    d = tiny_npz(tmp_path / "d.npz", n_train=32)
    if existing:
        train_tiny(tmp_path, ckpt, dataset=d)
    before = snapshot(tmp_path)
    r = gpucnn("train", "--dataset", d, "--model", "small", "--batch-size", "2", "--epochs", "1", "--no-progress",
               "--optimizer", "sgd", "--lr", "1e30", "--save", ckpt)
    assert r.returncode == 1 and "loss became" in r.stderr and "Traceback" not in r.stderr
    # an earlier run's checkpoint at --save is kept, but not named as this run's last good one
    assert "the last good checkpoint is kept" not in r.stderr and "no checkpoint was saved" in r.stderr
    assert snapshot(tmp_path) == before


def _set(path, value):
    def edit(tree):
        node = tree
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


DAMAGE = {
    "wrong type": (_set(["meta", "config", "batch_size"], "64"), "batch_size must be an integer"),
    "bool for an int": (_set(["meta", "config", "epochs"], True), "epochs must be an integer"),
    "missing key": (_set(["meta", "config", "model"], KeyError), "configuration lacks model"),
    "no config": (_set(["meta", "config"], KeyError), "no configuration"),
    "absurd epochs": (_set(["meta", "config", "epochs"], -3), "epochs must be at least 1"),
    "absurd seed": (_set(["meta", "config", "seed"], 10**30), "seed must be below 2**63"),
    "negative step": (_set(["meta", "step"], -1), "step is -1"),
    "position past the run": (_set(["meta", "epoch"], 7), "at epoch 7, step 0 of a 2-epoch run"),
    "std of zero": (_set(["meta", "std"], [0.0]), "std is [0.0]"),
    "absurd class count": (_set(["meta", "num_classes"], 10**9), "num_classes is 1000000000"),
    "absurd image size": (_set(["meta", "input_shape"], [1, 8, 10**7]), "input_shape is [1, 8, 10000000]"),
    "dtype not a name": (_set(["meta", "config", "dtype"], 7), "dtype must be a non-empty string, got 7"),
    "integer dtype": (_set(["meta", "config", "dtype"], "int64"), "dtype must be one of float32, float64, got 'int64'"),
    "half precision": (_set(["meta", "config", "dtype"], "float16"), "dtype must be one of float32, float64"),
    "tuple of a number": (_set(["meta", "config"], {"__tuple__": 5}), "not a list"),
}


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """The bytes of a checkpoint after epoch 1 of a 2-epoch run on tiny data (trained once)."""
    root = tmp_path_factory.mktemp("half")
    train_tiny(root, root / "c.ckpt", "--epochs", "2", "--stop-after", "1")
    return root


@pytest.fixture
def ckpt(tmp_path, half_run):
    """A private copy of half_run's checkpoint and dataset, for a test to damage."""
    import shutil

    for name in os.listdir(half_run):
        shutil.copy(half_run / name, tmp_path / name)
    return tmp_path / "c.ckpt"


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_checkpoint_configuration_is_refused(tmp_path, ckpt, case):
    edit, words = DAMAGE[case]
    edit_checkpoint(ckpt, edit)
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--resume", ckpt, "--save", ckpt, "--no-progress"), str(ckpt), words)
    if case not in ("negative step", "position past the run"):  # eval needs no position
        refused(gpucnn("eval", "--checkpoint", ckpt), str(ckpt), words)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("raw, words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"format": "gpucnn-checkpoint", "version": 1, "model": {}, "meta": ' + "[" * 200 + "]" * 200 + "}",
     "nests more than 64 levels"),
    ('{"format": "gpucnn-checkpoint", "version": 1, "model": {}, "meta": {"config": {"lr": NaN}}}', "lr must be a finite"),
])
def test_a_deeply_nested_or_non_finite_configuration_is_refused(tmp_path, ckpt, raw, words):
    edit_checkpoint(ckpt, None, raw=raw)
    before = snapshot(tmp_path)
    refused(gpucnn("eval", "--checkpoint", ckpt), str(ckpt))
    refused(gpucnn("train", "--resume", ckpt, "--save", ckpt, "--no-progress"), str(ckpt))
    if "lr" not in words:
        refused(gpucnn("eval", "--checkpoint", ckpt), words)
    assert snapshot(tmp_path) == before


def test_resume_whose_data_no_longer_has_the_saved_step(tmp_path):
    """Stopped at step 5 of an epoch of 8 steps; the file now holds 2 steps' worth of images.
    (A checkpoint of today records its data and is refused earlier, as changed data: this one
    is made to look like one written before that, without the record.)"""
    ckpt, d = tmp_path / "c.ckpt", tiny_npz(tmp_path / "d.npz", n_train=32)
    r = gpucnn("train", "--dataset", d, "--model", "small", "--batch-size", "4", "--epochs", "2", "--stop-after", "1",
               "--no-progress", "--save", ckpt)
    assert r.returncode == 0, r.stderr
    edit_checkpoint(ckpt, _set(["meta", "step"], 5))
    edit_checkpoint(ckpt, _set(["meta", "data"], None))
    tiny_npz(tmp_path / "d.npz", n_train=8)
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--resume", ckpt, "--save", ckpt, "--no-progress"),
            "stopped at step 5 of its epoch", "only 2 steps per epoch")
    assert snapshot(tmp_path) == before


# --- eval on every kind of bad checkpoint --------------------------------------------------------
def _bad_checkpoints(tmp_path):
    ckpt = tmp_path / "good.ckpt"
    train_tiny(tmp_path, ckpt)
    good = ckpt.read_bytes()
    entries = npz_entries(ckpt)
    big = dict(entries)
    big["model/0.weight.npy"] = forge_shape(entries["model/0.weight.npy"], (10**9, 10**3))
    cases = {"empty": b"", "junk": b"hello" * 100, "truncated": good[: len(good) // 2],
             "pickle": b"\x80\x04\x95\x00\x00", "dataset": open(tiny_npz(tmp_path / "d.npz"), "rb").read()}
    for name, data in cases.items():
        (tmp_path / f"{name}.ckpt").write_bytes(data)
    write_zip(tmp_path / "huge-entry.ckpt", big)
    os.remove(ckpt)
    return {"empty": "empty file", "junk": "not an .npz", "truncated": "truncated or corrupt",
            "pickle": "not an .npz", "dataset": "without a '__checkpoint__' entry",
            "huge-entry": "declares a float32 array of shape (1000000000, 1000)"}


def test_eval_refuses_every_bad_checkpoint(tmp_path):
    expected = _bad_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    for name, words in expected.items():
        refused(gpucnn("eval", "--checkpoint", tmp_path / f"{name}.ckpt"), f"{name}.ckpt", words)
        refused(gpucnn("train", "--resume", tmp_path / f"{name}.ckpt", "--no-save"), words)
    refused(gpucnn("eval", "--checkpoint", tmp_path / "absent.ckpt"), "no such checkpoint file")
    refused(gpucnn("eval", "--checkpoint", tmp_path), "is a directory")
    assert snapshot(tmp_path) == before


# --- plot on malformed metrics ----------------------------------------------------------------
GOOD_ROW = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.1, "test_acc": 0.4}


@pytest.mark.parametrize("content, words", [
    (b"3\n", "line 1: not a JSON object (a number)"),
    (b"null\n", "line 1: not a JSON object (a null)"),
    (b'"text"\n', "not a JSON object (a string)"),
    (json.dumps({**GOOD_ROW, "train_loss": "abc"}).encode() + b"\n", 'line 1: train_loss is "abc", not a number'),
    (json.dumps(GOOD_ROW).encode() + b"\n" + json.dumps({**GOOD_ROW, "test_acc": [1]}).encode(), "line 2: test_acc is [1]"),
    (json.dumps({**GOOD_ROW, "epoch": True}).encode(), "epoch is true, not a number"),
    (json.dumps({**GOOD_ROW, "epoch": None}).encode(), "epoch is null, not a number"),
    (b"\xff\xfe\x00{bad}\n", "line 1: not UTF-8 text (byte 0xff"),
    (b"[" * 100_000, "line 1: not a JSON object"),
    (b"{\"epoch\": 1}\n", "line 1: missing train_loss"),
    (b"\n\n", "holds no epochs"),
])
def test_plot_refuses_malformed_metrics(tmp_path, content, words):
    pytest.importorskip("matplotlib")
    m = tmp_path / "m.jsonl"
    m.write_bytes(content)
    before = snapshot(tmp_path)
    refused(gpucnn("plot", m, "-o", tmp_path / "c.png"), str(m), words)
    assert snapshot(tmp_path) == before


def test_plot_of_a_missing_metrics_file(tmp_path):
    before = snapshot(tmp_path)
    refused(gpucnn("plot", tmp_path / "absent.jsonl", "-o", tmp_path / "c.png"), "cannot read metrics file")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_as_an_input_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(gpucnn("plot", fifo, "-o", tmp_path / "c.png", timeout=60), "not a regular file")
    refused(gpucnn("eval", "--checkpoint", fifo, timeout=60), "not a regular file")
    refused(gpucnn("train", "--resume", fifo, "--no-save", timeout=60), "not a regular file")
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


def test_weights_that_are_not_numbers_are_refused(tmp_path, ckpt):
    import numpy

    with numpy.load(ckpt) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["model/0.weight"] = numpy.full(arrays["model/0.weight"].shape, "w")
    with open(ckpt, "wb") as f:
        numpy.savez(f, **arrays)
    before = snapshot(tmp_path)
    refused(gpucnn("eval", "--checkpoint", ckpt), "0.weight holds <U1 values, not numbers")
    refused(gpucnn("train", "--resume", ckpt, "--epochs", "2", "--save", ckpt, "--no-progress"), "0.weight holds <U1")
    assert snapshot(tmp_path) == before


def test_eval_on_data_whose_classes_mean_something_else_is_refused(tmp_path):
    """A net's class k scored against another dataset's class k would print a meaningless
    accuracy: refused, naming both lists. The same classes by another file, or fewer of them, pass."""
    import numpy

    ckpt = tmp_path / "run.ckpt"
    train_tiny(tmp_path, ckpt, dataset=tiny_npz(tmp_path / "pets.npz", classes=numpy.array(["cat", "dog", "fox"])))
    other = tiny_npz(tmp_path / "other.npz", classes=numpy.array(["car", "bus", "van"]))
    refused(gpucnn("eval", "--checkpoint", ckpt, "--dataset", other), "cat, dog, fox", "car, bus, van")
    same = tiny_npz(tmp_path / "same.npz", seed=7, classes=numpy.array(["cat", "dog", "fox"]))
    r = gpucnn("eval", "--checkpoint", ckpt, "--dataset", same)
    assert r.returncode == 0, r.stderr


def test_resume_on_data_that_changed_since_is_refused(tmp_path):
    """A dataset that gained images since the run was saved would redraw its split and
    statistics under the resumed weights: refused before the data is trained on."""
    ckpt = tmp_path / "run.ckpt"
    data = tmp_path / "d.npz"
    train_tiny(tmp_path, ckpt, "--epochs", "2", "--stop-after", "1", dataset=tiny_npz(data))
    tiny_npz(data, n_train=12)
    refused(gpucnn("train", "--resume", ckpt, "--no-progress"), "the data changed", "8 training images then, 12 now")
    tiny_npz(data)
    r = gpucnn("train", "--resume", ckpt, "--no-progress")
    assert r.returncode == 0, r.stderr
