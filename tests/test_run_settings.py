"""What a run saved (its --dtype, its pixel settings) is what eval, predict, export and summary
rebuild it with; and datasets are read with only the flags that apply to them."""
import json
import os

import numpy
import pytest

from gpucnn import cli

pytest.importorskip("PIL")
FAST = ["--model", "small", "--epochs", "1", "--batch-size", "64", "--no-progress"]


def digit_folder(root, sizes=(8,), per_split=(30, 10)):
    """The first digits as PNGs in root/train/<class>/ and root/test/<class>/, the i-th image
    resized to sizes[i % len(sizes)] pixels a side."""
    from PIL import Image

    from gpucnn.data import load

    data = load("digits")
    for split, x, y, n in (("train", data.x_train, data.y_train, per_split[0]),
                           ("test", data.x_test, data.y_test, per_split[1])):
        for i in range(n):
            os.makedirs(root / split / str(y[i]), exist_ok=True)
            side = sizes[i % len(sizes)]
            Image.fromarray((x[i, 0] * 255).astype(numpy.uint8)).resize((side, side)).save(
                root / split / str(y[i]) / f"{i:03d}.png")
    return str(root)


def test_eval_of_a_folder_run_on_a_builtin_dataset(tmp_path):
    folder = digit_folder(tmp_path / "images")
    ckpt = str(tmp_path / "f.ckpt")
    assert cli.main(["train", "--dataset", folder, "--workers", "1", "--cache-dir", str(tmp_path / "c"),
                     "--save", ckpt, *FAST]) == 0
    assert cli.main(["eval", "--checkpoint", ckpt, "--dataset", "digits"]) == 0


def test_eval_on_a_folder_of_mixed_sizes_brings_them_to_the_nets_size(tmp_path, capsys):
    ckpt = str(tmp_path / "d.ckpt")
    assert cli.main(["train", "--dataset", "digits", "--save", ckpt, *FAST]) == 0
    folder = digit_folder(tmp_path / "images", sizes=(8, 16))
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", ckpt, "--dataset", folder, "--workers", "1",
                     "--cache-dir", str(tmp_path / "c"), "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["images"] == 10


@pytest.fixture(scope="module")
def float64_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("f64")
    ckpt, metrics = root / "r.ckpt", root / "m.jsonl"
    assert cli.main(["train", "--dataset", "digits", "--dtype", "float64", "--save", str(ckpt),
                     "--metrics-out", str(metrics), *FAST]) == 0
    return str(ckpt), json.loads(metrics.read_text().splitlines()[-1])


def test_eval_scores_a_float64_run_in_float64(float64_run, capsys):
    ckpt, last = float64_run
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", ckpt, "--json"]) == 0
    # the training loop's own evaluation of the same weights: equal up to float64 rounding
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(last["test_loss"], rel=1e-12, abs=0)


def test_predict_export_and_summary_rebuild_a_float64_net(float64_run):
    from gpucnn import summary
    from gpucnn.trained import load_trained

    ckpt, _ = float64_run
    assert load_trained(ckpt).model.dtype == numpy.float64
    args = cli.build_parser().parse_args(["summary", "--checkpoint", ckpt])
    assert summary.build_net(args)[0].dtype == numpy.float64


def test_lr_find_takes_trains_data_flags(tmp_path, capsys, monkeypatch):
    from gpucnn.data import batches

    folder = digit_folder(tmp_path / "images", sizes=(8, 16))
    seen, iterate = set(), batches.iterate

    def recording(*a, **kw):
        seen.add(kw["augment"])
        return iterate(*a, **kw)

    monkeypatch.setattr(batches, "iterate", recording)
    capsys.readouterr()
    assert cli.main(["lr-find", "--dataset", folder, "--image-size", "8", "--channels", "1", "--fit", "crop",
                     "--workers", "1", "--cache-dir", str(tmp_path / "c"), "--no-progress", "--augmentation",
                     "rrc-flip", "--model", "small", "--batch-size", "8", "--steps", "3",
                     "-o", str(tmp_path / "lr.png")]) == 0
    err = capsys.readouterr().err
    assert seen == {"rrc-flip"} and "decode" not in err and "headers" not in err, err


def test_fit_is_for_folders_only_and_old_runs_keep_predicts_default(tmp_path, capsys):
    from reliability_helpers import edit_checkpoint

    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.trained import load_trained

    ckpt = str(tmp_path / "d.ckpt")
    assert cli.main(["train", "--dataset", "digits", "--fit", "crop", "--save", ckpt, *FAST]) == 2
    assert "--fit are for folders of images; digits is not a folder" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "digits", "--save", ckpt, *FAST, "--epochs", "2", "--stop-after", "1"]) == 0
    assert load_checkpoint(ckpt)["meta"]["config"]["fit"] is None and load_trained(ckpt).fit == "stretch"

    def as_before(tree):  # what a gpucnn that saved --fit for any dataset wrote
        tree["meta"]["config"]["fit"] = "stretch"

    edit_checkpoint(ckpt, as_before)
    assert load_trained(ckpt).fit == "stretch"
    assert cli.main(["train", "--resume", ckpt, "--no-progress"]) == 0


def _help(command, flag):
    import argparse

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(next(a.help for a in sub.choices[command]._actions if flag in a.option_strings).split())


def test_help_says_what_the_code_does():
    import argparse

    from gpucnn import best
    from gpucnn.tensorboard_log import HPARAM_METRICS

    assert best.best_path("run.pt") == "run.best.pt" and "run.pt -> run.best.pt" in _help("train", "--save-best")
    assert "ranks on the node" in _help("train", "--workers")
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    listed = cli.__doc__.split("\n\n")[0].split(":", 1)[1].split("(")[0]
    assert {c.strip() for c in listed.replace("gpucnn", "").split("|")} == set(sub.choices)
    assert {"epoch/val_acc", "epoch/val_loss"} <= set(HPARAM_METRICS)


def test_a_refused_run_leaves_no_tensorboard_directory(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    board = tmp_path / "board"
    assert cli.main(["train", "--dataset", "digits", "--save-best", "--tensorboard", str(board),
                     "--save", str(tmp_path / "r.ckpt"), *FAST]) == 2
    assert "--save-best watches the validation accuracy" in capsys.readouterr().err
    assert not board.exists()


def test_a_larger_epochs_continues_an_early_stopped_run(tmp_path, capsys):
    last, metrics = tmp_path / "last.ckpt", tmp_path / "m.jsonl"
    # a zero learning rate: val_acc never improves after the first epoch, so patience 2 stops after epoch 3
    run = ["train", "--no-progress", "--batch-size", "128", "--val-split", "0.2", "--early-stop", "2", "--lr", "0",
           "--schedule", "constant", "--save", str(last), "--metrics-out", str(metrics)]
    assert cli.main([*run, "--epochs", "5"]) == 0
    assert cli.main(["train", "--no-progress", "--resume", str(last), "--epochs", "5"]) == 0
    assert "stopped early at epoch 3" in capsys.readouterr().out
    assert cli.main(["train", "--no-progress", "--resume", str(last), "--epochs", "9",
                     "--metrics-out", str(metrics)]) == 0
    out = capsys.readouterr().out
    # patience counted afresh from epoch 3: epochs 4 and 5 without improvement, then it stops again
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert "early stop: val_acc has not improved for 2 epoch(s)" in out
