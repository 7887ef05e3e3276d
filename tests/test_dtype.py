"""train --dtype: the float type a run computes in, saved in its configuration and kept on resume
(the multi-rank equivalence tests run in float64, where rounding does not depend on the CPU)."""
import numpy
import pytest

from reliability_helpers import tiny_npz

from gpucnn import cli, train
from gpucnn.checkpoint import load_checkpoint

TINY = ["--model", "vgg_bn", "--batch-size", "4", "--no-progress", "--optimizer", "sgd"]


@pytest.fixture
def seen(monkeypatch):
    """The dtypes of every training step's input and logits."""
    kinds, step = set(), train.TrainStep.__call__

    def recording(self, x, y):
        kinds.add((x.dtype, self.model.forward(x).dtype))  # a forward in train mode moves BN statistics:
        return step(self, x, y)  # so only the dtypes are looked at, never the weights

    monkeypatch.setattr(train.TrainStep, "__call__", recording)
    return kinds


def test_float64_run_computes_saves_and_resumes_in_float64(tmp_path, seen):
    data = tiny_npz(tmp_path / "d.npz")
    ckpt = tmp_path / "c.ckpt"
    assert cli.main(["train", "--dataset", data, *TINY, "--epochs", "2", "--stop-after", "1", "--dtype", "float64",
                     "--save", str(ckpt)]) == 0
    saved = load_checkpoint(ckpt)
    assert saved["meta"]["config"]["dtype"] == "float64"
    assert {a.dtype for a in saved["model_state"].values() if a.dtype.kind == "f"} == {numpy.dtype("float64")}
    assert seen == {(numpy.dtype("float64"), numpy.dtype("float64"))}
    seen.clear()
    assert cli.main(["train", "--resume", str(ckpt), "--no-progress"]) == 0  # the checkpoint's dtype
    assert seen == {(numpy.dtype("float64"), numpy.dtype("float64"))}
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 2


def test_default_is_float32_and_a_resume_cannot_change_it(tmp_path, seen, capsys):
    data = tiny_npz(tmp_path / "d.npz")
    ckpt = tmp_path / "c.ckpt"
    assert cli.main(["train", "--dataset", data, *TINY, "--epochs", "2", "--stop-after", "1", "--save", str(ckpt)]) == 0
    saved = load_checkpoint(ckpt)
    assert saved["meta"]["config"]["dtype"] == "float32"
    assert {a.dtype for a in saved["model_state"].values() if a.dtype.kind == "f"} == {numpy.dtype("float32")}
    assert seen == {(numpy.dtype("float32"), numpy.dtype("float32"))}
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(ckpt), "--dtype", "float64", "--no-progress"]) == 2
    assert "--dtype float32, not float64" in capsys.readouterr().err


def test_float32_and_float64_runs_differ_by_rounding_only(tmp_path):
    """The same run in both types: close (one epoch of a small net is well-conditioned), and
    not equal, so --dtype really changed the arithmetic."""
    data = tiny_npz(tmp_path / "d.npz", n_train=16)
    for dtype in ("float32", "float64"):
        assert cli.main(["train", "--dataset", data, *TINY, "--model", "small", "--epochs", "1", "--dtype", dtype,
                         "--save", str(tmp_path / f"{dtype}.ckpt")]) == 0
    a, b = (load_checkpoint(tmp_path / f"{t}.ckpt")["model_state"] for t in ("float32", "float64"))
    diffs = [float(numpy.abs(a[k].astype(numpy.float64) - b[k]).max()) for k in a]
    assert 0 < max(diffs) < 1e-5, diffs


def test_other_dtypes_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dtype", "float16"])
    assert e.value.code == 2 and "invalid choice: 'float16'" in capsys.readouterr().err


def test_lr_find_sweeps_in_the_type_it_is_given(tmp_path, seen):
    data = tiny_npz(tmp_path / "d.npz")
    assert cli.main(["lr-find", "--dataset", data, "--model", "small", "--batch-size", "4", "--steps", "3",
                     "--dtype", "float64", "--no-progress", "-o", str(tmp_path / "lr.png")]) == 0
    assert seen == {(numpy.dtype("float64"), numpy.dtype("float64"))}
