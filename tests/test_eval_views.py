"""gpucnn eval --json / --confusion-matrix / --mistakes: the numbers against scikit-learn and
the PyTorch twin, the images, and the output checks that come before any work."""
import json
import sys

import numpy
import pytest

from gpucnn import cli
from gpucnn.evaluation import Predictions

sklearn_metrics = pytest.importorskip("sklearn.metrics")  # also the built-in digits dataset


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "d.ckpt"
    assert cli.main(["train", "--no-progress", "--epochs", "1", "--batch-size", "128", "--save", str(path)]) == 0
    return path


def _direct_predictions(path):
    """The checkpoint's net and the digits test set, evaluated by gpucnn.evaluation as eval does."""
    from gpucnn import models
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.data import load
    from gpucnn.evaluation import predict

    ckpt = load_checkpoint(path)
    data = load("digits")
    model = models.build(ckpt["meta"]["config"]["model"], data.x_test.shape[1:], 10)
    model.load_state_dict(ckpt["model_state"])
    mean, std = (numpy.asarray(ckpt["meta"][k], numpy.float32) for k in ("mean", "std"))
    return model, data, mean, std, predict(model, data.x_test, data.y_test, mean, std, classes=10, batch_size=1000)  # eval's default


def test_json_report_matches_sklearn_on_the_same_predictions(checkpoint, capsys):
    assert cli.main(["eval", "--checkpoint", str(checkpoint), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout is one JSON document and nothing else
    _, data, _, _, p = _direct_predictions(checkpoint)
    y, pred = data.y_test, p.predicted
    assert doc["confusion_matrix"] == sklearn_metrics.confusion_matrix(y, pred, labels=range(10)).tolist()
    assert doc["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, pred), abs=1e-12)
    assert doc["loss"] == pytest.approx(p.loss, rel=1e-12)
    _same_as_classification_report(doc, y, pred, [str(i) for i in range(10)])
    assert doc["dataset"] == "digits" and doc["images"] == len(y) == sum(c["support"] for c in doc["per_class"])


def _same_as_classification_report(doc, y, pred, names):
    ref = sklearn_metrics.classification_report(y, pred, labels=range(len(names)), target_names=names,
                                                output_dict=True, zero_division=0)
    assert [c["class"] for c in doc["per_class"]] == names
    for c in doc["per_class"]:
        r = ref[c["class"]]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((r["precision"], r["recall"], r["f1-score"]), abs=1e-12)
        assert c["support"] == r["support"]
    for ours, theirs in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        a, r = doc[ours], ref[theirs]
        assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx(
            (r["precision"], r["recall"], r["f1-score"], r["support"]), abs=1e-12)


def test_report_of_a_class_never_predicted_and_one_absent_matches_sklearn():
    """Class 2 is never predicted (precision 0/0), class 3 has no images (recall 0/0)."""
    from gpucnn.eval_report import report

    rng = numpy.random.default_rng(0)
    y = rng.choice([0, 1, 2], size=200)
    pred = numpy.where(rng.random(200) < 0.7, y, rng.choice([0, 1, 3], size=200))
    pred[y == 2] = rng.choice([0, 1, 3], size=int((y == 2).sum()))
    probs = numpy.full((200, 4), 0.25, numpy.float32)
    doc = json.loads(json.dumps(report(Predictions(y, pred, probs, 0.5), ["a", "b", "c", "d"]), allow_nan=False))
    assert doc["confusion_matrix"] == sklearn_metrics.confusion_matrix(y, pred, labels=range(4)).tolist()
    assert doc["per_class"][2]["precision"] == 0.0 and doc["per_class"][3]["support"] == 0
    _same_as_classification_report(doc, y, pred, ["a", "b", "c", "d"])


def test_predictions_match_the_pytorch_twin(checkpoint):
    """Independent of our forward: the PyTorch twin in float64 gives the loss, the
    probabilities and (wherever the top two logits are not a near-tie) the classes."""
    torch = pytest.importorskip("torch")
    from gpucnn.torch_twin import to_torch

    model, data, mean, std, p = _direct_predictions(checkpoint)
    x = (data.x_test.astype(numpy.float64) * data.scale - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
    net = to_torch(model, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    ref_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.y_test)).item()
    assert p.loss == pytest.approx(ref_loss, rel=1e-4)
    ref_probs = torch.softmax(logits, dim=1).numpy()
    numpy.testing.assert_allclose(p.probabilities, ref_probs, atol=1e-4)
    top2 = numpy.sort(logits.numpy(), axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3
    assert clear.mean() > 0.95
    numpy.testing.assert_array_equal(p.predicted[clear], logits.numpy().argmax(axis=1)[clear])
    assert p.per_class_accuracy() == pytest.approx(
        sklearn_metrics.recall_score(data.y_test, p.predicted, average=None, labels=range(10), zero_division=0).tolist())


def test_most_confident_mistakes_are_the_wrong_ones_with_the_highest_probability():
    from gpucnn.mistakes import most_confident_mistakes

    rng = numpy.random.default_rng(1)
    probs = rng.dirichlet(numpy.ones(5), size=300).astype(numpy.float32)
    pred = probs.argmax(axis=1)
    y = numpy.where(rng.random(300) < 0.5, pred, rng.integers(0, 5, 300))
    p = Predictions(y, pred, probs, 1.0)
    picked = most_confident_mistakes(p, 10)
    wrong = [i for i in range(300) if y[i] != pred[i]]
    expected = sorted(wrong, key=lambda i: -probs[i, pred[i]])[:10]
    assert list(picked) == expected
    assert len(most_confident_mistakes(p, 10_000)) == len(wrong)


def test_images_are_written_and_json_stays_alone_on_stdout(checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    cm, mk = tmp_path / "cm.png", tmp_path / "out" / "mk.svg"
    args = ["eval", "--checkpoint", str(checkpoint), "--confusion-matrix", str(cm), "--mistakes", str(mk), "--mistakes-count", "4"]
    assert cli.main([*args, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["accuracy"] > 0 and f"wrote {cm}" in err and f"wrote {mk}" in err
    assert cm.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in mk.read_bytes()[:4096]
    assert cli.main(["eval", "--checkpoint", str(checkpoint), "--confusion-matrix", str(cm)]) == 0  # ours: replaced
    assert f"wrote {cm}" in capsys.readouterr().out and len(cm.read_bytes()) > 1000
    cm.write_bytes(cm.read_bytes()[:8] + b"a photo of the user's")  # a PNG by its magic, without gpucnn's mark
    assert cli.main(["eval", "--checkpoint", str(checkpoint), "--confusion-matrix", str(cm)]) == 2
    assert "not a gpucnn" in capsys.readouterr().err and cm.read_bytes().endswith(b"a photo of the user's")


@pytest.mark.parametrize("flag", ["--confusion-matrix", "--mistakes"])
def test_an_image_path_that_is_not_ours_is_refused_before_any_work(flag, tmp_path, capsys):
    """Checked before the checkpoint is even read: the checkpoint here does not exist."""
    pytest.importorskip("matplotlib")
    mine = tmp_path / "notes.png"
    mine.write_text("my notes")
    missing = tmp_path / "missing.ckpt"
    assert cli.main(["eval", "--checkpoint", str(missing), flag, str(mine)]) == 2
    err = capsys.readouterr().err
    assert "not a gpucnn png image" in err and "refusing to overwrite" in err and mine.read_text() == "my notes"
    assert cli.main(["eval", "--checkpoint", str(missing), flag, str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_the_two_images_must_differ_and_the_count_be_positive(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    same = str(tmp_path / "x.png")
    missing = str(tmp_path / "missing.ckpt")
    assert cli.main(["eval", "--checkpoint", missing, "--confusion-matrix", same, "--mistakes", same]) == 2
    assert "--confusion-matrix and --mistakes name the same file" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", missing, "--mistakes", same, "--mistakes-count", "0"]) == 2
    assert "--mistakes-count must be at least 1" in capsys.readouterr().err


def test_images_without_matplotlib_say_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing.ckpt"), "--mistakes", str(tmp_path / "m.png")]) == 2
    assert 'pip install ".[plot]"' in capsys.readouterr().err
