"""--val-split: the stratified, seeded hold-out, its views, and the runs that use it."""
import json

import numpy
import pytest

from gpucnn import cli
from gpucnn.checkpoint import load_checkpoint
from gpucnn.data import Dataset, DatasetError
from gpucnn.data.split import Rows, for_eval, holdout, prepare, split
from gpucnn.data.stats import channel_stats

TINY = ["train", "--no-progress", "--batch-size", "128"]


def labels(counts):
    y = numpy.concatenate([numpy.full(n, c) for c, n in enumerate(counts)])
    return numpy.random.default_rng(7).permutation(y)


def test_holdout_is_stratified_disjoint_and_complete():
    y = labels([100, 40, 7, 2, 1])
    train, held = holdout(y, 0.2, seed=3)
    assert numpy.array_equal(numpy.sort(numpy.concatenate([train, held])), numpy.arange(len(y)))
    held_per_class = numpy.bincount(y[held], minlength=5)
    # round(0.2 n), at least one, never the whole class; a class of one image stays in training
    assert held_per_class.tolist() == [20, 8, 1, 1, 0]
    assert (numpy.bincount(y[train], minlength=5) >= 1).all()


def test_holdout_is_a_function_of_the_seed_alone():
    y = labels([50, 50, 50])
    a, b, c = holdout(y, 0.3, 1)[1], holdout(y, 0.3, 1)[1], holdout(y, 0.3, 2)[1]
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(a, c)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan")])
def test_a_fraction_outside_zero_one_is_refused(bad):
    with pytest.raises(DatasetError, match="--val-split"):
        holdout(labels([5, 5]), bad, 0)


def test_rows_gather_like_fancy_indexing_and_from_a_memory_map(tmp_path, rng):
    x = rng.integers(0, 256, size=(30, 2, 3, 4), dtype=numpy.uint8)
    numpy.save(tmp_path / "x.npy", x)
    mapped = numpy.load(tmp_path / "x.npy", mmap_mode="r")
    index = rng.permutation(30)[:17]
    for base in (x, mapped):
        view = Rows(base, index)
        assert view.shape == (17, 2, 3, 4) and len(view) == 17 and view.dtype == numpy.uint8
        order = rng.permutation(17)
        numpy.testing.assert_array_equal(view[order], x[index[order]])
        numpy.testing.assert_array_equal(view[3:9], x[index[3:9]])
        numpy.testing.assert_array_equal(numpy.asarray(view), x[index])
        numpy.testing.assert_array_equal(view[5], x[index[5]])


def dataset(n_test=20, rng=None):
    rng = rng or numpy.random.default_rng(0)
    x = rng.integers(0, 256, size=(100, 1, 4, 4), dtype=numpy.uint8)
    y = numpy.arange(100) % 4
    return Dataset("toy", x, y, x[:n_test], y[:n_test], ["a", "b", "c", "d"])


def test_split_normalises_with_the_training_part_only():
    data = dataset()
    held = split(data, 0.25, seed=0)
    train, val = holdout(data.y_train, 0.25, 0)
    numpy.testing.assert_array_equal(held.y_val, data.y_train[val])
    numpy.testing.assert_array_equal(numpy.asarray(held.x_val), data.x_train[val])
    mean, std = channel_stats(data.x_train[train])
    numpy.testing.assert_array_equal(held.mean, mean)
    numpy.testing.assert_array_equal(held.std, std)
    assert held.x_test is data.x_test and not held.val_is_test


def test_a_dataset_without_a_test_split_needs_val_split_and_tests_on_the_held_out_part():
    data = dataset(n_test=0)
    with pytest.raises(DatasetError, match="the test split is empty.*--val-split FRACTION"):
        prepare(data, None, 0)
    held = prepare(data, 0.2, 0)
    assert held.val_is_test and held.x_test is held.x_val and len(held.y_test) == 20
    scored, what = for_eval(data, {"val_split": 0.2, "seed": 0})
    numpy.testing.assert_array_equal(scored.y_test, held.y_val)
    assert "held-out" in what
    assert for_eval(dataset(), {"val_split": 0.2, "seed": 0})[1] == "test set"


# --- runs -------------------------------------------------------------------------------
pytest.importorskip("sklearn")  # the built-in digits dataset


def test_run_reports_validation_and_scores_the_test_split_once(tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    assert cli.main([*TINY, "--epochs", "3", "--val-split", "0.2", "--no-save", "--metrics-out", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "1,154 train / 288 val / 355 test" in out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert all("val_acc" in line for line in lines)
    assert ["test_acc" in line for line in lines] == [False, False, True]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["test_acc"] is None for r in rows] == [True, True, False]
    assert all(0 <= r["val_acc"] <= 1 for r in rows)


def test_val_split_is_saved_and_a_resume_is_bit_exact(tmp_path):
    common = ["--val-split", "0.25", "--optimizer", "sgd", "--lr", "0.05", "--epochs", "2"]
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    assert cli.main([*TINY, *common, "--save", str(a)]) == 0
    assert cli.main([*TINY, *common, "--save", str(b), "--stop-after", "1"]) == 0
    assert load_checkpoint(b)["meta"]["config"]["val_split"] == 0.25
    assert cli.main([*TINY, "--resume", str(b), "--save", str(b)]) == 0
    wa, wb = load_checkpoint(a)["model_state"], load_checkpoint(b)["model_state"]
    for k in wa:
        numpy.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_resume_refuses_another_val_split(tmp_path, capsys):
    ckpt = tmp_path / "c.ckpt"
    assert cli.main([*TINY, "--val-split", "0.25", "--epochs", "2", "--stop-after", "1", "--save", str(ckpt)]) == 0
    assert cli.main([*TINY, "--resume", str(ckpt), "--val-split", "0.3"]) == 2
    assert "--val-split 0.25, not 0.3" in capsys.readouterr().err


def test_bad_val_split_is_a_flag_error(capsys):
    assert cli.main([*TINY, "--val-split", "1.5", "--no-save"]) == 2
    assert "--val-split must be in (0, 1)" in capsys.readouterr().err


def test_dataset_without_test_split_end_to_end(tmp_path, monkeypatch, capsys):
    """The flat-folder contract: no test split; refused without --val-split (naming it),
    trained with it, the held-out part said to be the test split, and eval scores it."""
    from gpucnn import data as data_module

    real = data_module.load

    def no_test(*args, **kwargs):  # memory-mapped, as the folder cache hands them over
        d = real(*args, **kwargs)
        numpy.save(tmp_path / "x.npy", d.x_train)
        mapped = numpy.load(tmp_path / "x.npy", mmap_mode="r")
        return Dataset(d.name, mapped, d.y_train, mapped[:0], d.y_train[:0], d.classes)

    monkeypatch.setattr(data_module, "load", no_test)
    ckpt = tmp_path / "c.ckpt"
    assert cli.main([*TINY, "--epochs", "2", "--save", str(ckpt)]) == 2
    assert "--val-split" in capsys.readouterr().err and not ckpt.exists()
    assert cli.main([*TINY, "--epochs", "2", "--save", str(ckpt), "--val-split", "0.2"]) == 0
    out = capsys.readouterr().out
    last = [line for line in out.splitlines() if line.startswith("epoch 2/2")][0]
    assert "test = the held-out part" in last and "the held-out part as test" in out
    val_acc = float(last.split("val_acc ")[1].split()[0])
    assert float(last.split("test_acc ")[1].split()[0]) == val_acc
    assert cli.main(["eval", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "held-out 0.2 of the training images" in out
    assert float(out.split("accuracy ")[1].split()[0]) == pytest.approx(val_acc, abs=1e-4)


def test_plot_draws_the_validation_curve(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from gpucnn.plot import plot

    metrics = tmp_path / "m.jsonl"
    metrics.write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": 1.1 / e,
                                           "val_acc": 0.4, "test_loss": 1.2 if e == 3 else None,
                                           "test_acc": 0.45 if e == 3 else None}) + "\n" for e in (1, 2, 3)))
    drawn = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: drawn.append(k["label"]) or real(self, *a, **k))
    plot(str(metrics), str(tmp_path / "c.png"))
    assert drawn == ["train", "val", "test"] * 2
