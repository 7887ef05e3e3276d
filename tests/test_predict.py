"""gpucnn predict: image files in, the net's probabilities out, exactly as for the training arrays."""
import json
import os
import re
import subprocess
import sys

import numpy
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from gpucnn import cli  # noqa: E402
from gpucnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gpucnn.data import idx  # noqa: E402
from gpucnn.errors import GpucnnError  # noqa: E402
from gpucnn.predict import predict_arrays, predict_files, read_image  # noqa: E402
from gpucnn.trained import load_trained  # noqa: E402
from real_mnist import mnist_dir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A `small` net trained one epoch on 1200 MNIST digits (about a second), and 24 test digits."""
    mnist = mnist_dir()
    d = tmp_path_factory.mktemp("mnist_run")
    x = idx.read_images(idx.find(mnist, idx.FILES["train_images"]))[:1200, 0]
    y = idx.read_labels(idx.find(mnist, idx.FILES["train_labels"]), 10)[:1200]
    xt = idx.read_images(idx.find(mnist, idx.FILES["test_images"]))[:24, 0]
    yt = idx.read_labels(idx.find(mnist, idx.FILES["test_labels"]), 10)[:24]
    numpy.savez(d / "mnist1k.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    ckpt = d / "m.ckpt"
    assert cli.main(["train", "--dataset", str(d / "mnist1k.npz"), "--epochs", "1", "--batch-size", "32",
                     "--no-progress", "--save", str(ckpt)]) == 0
    return ckpt, xt, yt


def _expected(ckpt, images):
    trained = load_trained(ckpt)
    return predict_arrays(trained, images[:, None].astype(numpy.float32) / 255)


def _save(images, folder, ext, **kw):
    folder.mkdir(exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / f"{i:02d}.{ext}"
        Image.fromarray(im).save(p, **kw)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("ext", ["png", "bmp"])
def test_lossless_files_give_the_arrays_probabilities(mnist_run, tmp_path, ext):
    ckpt, xt, yt = mnist_run
    paths = _save(xt, tmp_path / "imgs", ext)
    got = list(predict_files(load_trained(ckpt), paths, top_k=10, progress=False))
    expected = _expected(ckpt, xt)
    probs = numpy.array([[t["probability"] for t in sorted(r["top_k"], key=lambda t: t["index"])] for r in got])
    numpy.testing.assert_allclose(probs, expected, atol=1e-6)
    assert [r["path"] for r in got] == paths
    assert numpy.mean([int(r["class"]) == label for r, label in zip(got, yt)]) >= 0.5  # a weak net, far above chance


def test_jpeg_and_an_inverted_scan(mnist_run, tmp_path):
    ckpt, xt, _ = mnist_run
    expected = _expected(ckpt, xt).argmax(axis=1)
    jpegs = _save(xt, tmp_path / "jpg", "jpg", quality=95)
    scans = _save(255 - xt, tmp_path / "scan", "png")  # black ink on white paper
    trained = load_trained(ckpt)
    jpeg_top = [r["index"] for r in predict_files(trained, jpegs, progress=False)]
    assert numpy.mean(numpy.array(jpeg_top) == expected) >= 0.9  # lossy, so nearly always the same class
    inverted = list(predict_files(trained, scans, invert=True, top_k=10, progress=False))
    assert [r["index"] for r in inverted] == list(expected)
    plain = [r["index"] for r in predict_files(trained, scans, progress=False)]
    assert plain != list(expected)  # without --invert the scans are nonsense to the net


def test_cli_lines_json_folder_and_bad_files(mnist_run, tmp_path):
    ckpt, xt, _ = mnist_run
    folder = tmp_path / "folder"
    good = _save(xt[:3], folder, "png")
    (folder / "notes.txt").write_text("not an image, and not named: ignored")
    (folder / "sub").mkdir()
    Image.fromarray(xt[3]).save(folder / "sub" / "deep.bmp")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    missing = tmp_path / "missing.png"
    env = {**os.environ, "PYTHONPATH": ROOT, "GPUCNN_BACKEND": "numpy"}
    run = subprocess.run([sys.executable, "-m", "gpucnn", "predict", "--checkpoint", str(ckpt), str(folder), str(corrupt),
                          str(missing), "--top-k", "2"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert [l.split(":")[0] for l in lines] == good + [str(folder / "sub" / "deep.bmp")]
    for line in lines:
        assert " top-2: " in line and line.count(", ") == 1
    assert f"{corrupt}: not a readable image" in run.stderr and f"{missing}: no such file" in run.stderr
    assert "2 inputs skipped" in run.stderr and "Traceback" not in run.stderr

    run = subprocess.run([sys.executable, "-m", "gpucnn", "predict", "--checkpoint", str(ckpt), good[0], "--json",
                          "--top-k", "20"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    (obj,) = [json.loads(l) for l in run.stdout.splitlines()]
    assert obj["path"] == good[0] and obj["class"] == obj["top_k"][0]["class"]
    assert len(obj["top_k"]) == 10  # clipped to the number of classes
    ps = [t["probability"] for t in obj["top_k"]]
    assert ps == sorted(ps, reverse=True) and sum(ps) == pytest.approx(1.0)


def test_many_files_in_batches_with_a_progress_bar(mnist_run, tmp_path, capsys):
    ckpt, xt, _ = mnist_run
    paths = _save(xt, tmp_path / "many", "png")
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "many"), "--batch-size", "5"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == len(paths) and "predict:" in err and "/24 " in err  # the bar
    one = list(predict_files(load_trained(ckpt), paths, batch_size=1, progress=False))
    assert [l.split(":")[0] for l in out.splitlines()] == [r["path"] for r in one]


def test_bad_checkpoints_are_clear_errors(mnist_run, tmp_path, capsys):
    ckpt, xt, _ = mnist_run
    (png,) = _save(xt[:1], tmp_path / "one", "png")
    assert cli.main(["predict", "--checkpoint", png, png]) == 2
    assert "not a gpucnn checkpoint" in capsys.readouterr().err
    c = load_checkpoint(ckpt)
    c["meta"]["config"]["model"] = "resnet1000"
    save_checkpoint(tmp_path / "future.ckpt", model_state=c["model_state"], meta=c["meta"])
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "future.ckpt"), png]) == 2
    assert "'resnet1000' net, which this gpucnn does not know" in capsys.readouterr().err


def test_old_checkpoint_without_shape_and_classes(tmp_path):
    """Checkpoints from before input_shape/classes were recorded: read from the dataset, or a clear error."""
    pytest.importorskip("sklearn")
    ckpt = tmp_path / "d.ckpt"
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--save", str(ckpt)]) == 0
    c = load_checkpoint(ckpt)
    assert c["meta"]["input_shape"] == [1, 8, 8] and c["meta"]["classes"] == [str(i) for i in range(10)]  # recorded now
    for key in ("input_shape", "classes", "mean", "std"):
        del c["meta"][key]
    save_checkpoint(tmp_path / "old.ckpt", model_state=c["model_state"], meta=c["meta"])
    old, new = load_trained(tmp_path / "old.ckpt"), load_trained(ckpt)
    assert old.input_shape == new.input_shape == (1, 8, 8) and old.classes == new.classes
    numpy.testing.assert_allclose(old.mean, new.mean)
    c["meta"]["config"]["dataset"] = str(tmp_path / "gone.npz")
    save_checkpoint(tmp_path / "orphan.ckpt", model_state=c["model_state"], meta=c["meta"])
    with pytest.raises(GpucnnError, match="older gpucnn .* cannot be loaded"):
        load_trained(tmp_path / "orphan.ckpt")


@pytest.mark.parametrize("shape, words", [
    ([1, 8.5, 8], "its saved run is damaged (input_shape is [1, 8.5, 8]"),  # was silently truncated to 8
    ([1, 10**6, 10**6], "not three integers 1..65536"),   # was a MemoryError traceback
])
def test_an_edited_input_shape_is_a_clear_error(tmp_path, capsys, shape, words):
    pytest.importorskip("sklearn")
    ckpt = tmp_path / "d.ckpt"
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--save", str(ckpt)]) == 0
    c = load_checkpoint(ckpt)
    c["meta"]["input_shape"] = shape
    save_checkpoint(ckpt, model_state=c["model_state"], meta=c["meta"])
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    capsys.readouterr()
    for command in (["predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png")],
                    ["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.safetensors")]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gpucnn: error: {ckpt}: ") and words in err
    assert not (tmp_path / "m.safetensors").exists()


# --- read_image: each conversion rule on its own --------------------------------------------
def _digit():
    im = numpy.zeros((8, 8), numpy.uint8)
    im[1:7, 3:5] = 255
    im[2, 2] = 128
    return im


def test_native_size_grey_is_exact(tmp_path):
    Image.fromarray(_digit()).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png", (1, 8, 8))
    assert x.shape == (1, 8, 8) and x.dtype == numpy.float32
    numpy.testing.assert_allclose(x[0], _digit() / 255.0, atol=1e-7)
    numpy.testing.assert_allclose(read_image(tmp_path / "a.png", (1, 8, 8), invert=True), 1 - x, atol=1e-7)


def test_rgb_alpha_and_sixteen_bit_become_the_same_grey(tmp_path):
    d = _digit()
    rgba = numpy.zeros((8, 8, 4), numpy.uint8)
    rgba[..., :3], rgba[..., 3] = 255, d  # white ink whose coverage is the alpha channel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(numpy.stack([d] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(d.astype(numpy.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grey
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    for name in ("rgba.png", "rgb.png", "deep.png"):
        numpy.testing.assert_allclose(read_image(tmp_path / name, (1, 8, 8))[0], d / 255.0, atol=1 / 255, err_msg=name)
    x3 = read_image(tmp_path / "rgb.png", (3, 8, 8))
    assert x3.shape == (3, 8, 8) and numpy.array_equal(x3[0], x3[2])


def test_fit_rules(tmp_path):
    d = _digit()
    wide = numpy.zeros((8, 24), numpy.uint8)
    wide[:, 8:16] = d  # the digit in the middle of a wide strip
    Image.fromarray(wide).save(tmp_path / "wide.png")
    numpy.testing.assert_allclose(read_image(tmp_path / "wide.png", (1, 8, 8), fit="crop")[0], d / 255.0, atol=1e-7)
    bar = numpy.full((8, 4), 255, numpy.uint8)  # a tall white bar, half as wide as it is high
    Image.fromarray(bar).save(tmp_path / "bar.png")
    padded = read_image(tmp_path / "bar.png", (1, 8, 8), fit="pad")[0]
    assert numpy.all(padded[:, 2:6] == 1) and numpy.all(padded[:, :2] == 0) and numpy.all(padded[:, 6:] == 0)
    white_border = read_image(tmp_path / "bar.png", (1, 8, 8), fit="pad", invert=True)[0]
    assert numpy.all(white_border == 0)  # inverted: the bar is ink-free paper, and so are the borders
    assert numpy.all(read_image(tmp_path / "bar.png", (1, 8, 8), fit="stretch") == 1)
    big = Image.fromarray(d).resize((64, 64), Image.Resampling.NEAREST)
    big.save(tmp_path / "big.png")
    shrunk = read_image(tmp_path / "big.png", (1, 8, 8))[0]
    # Antialiased bilinear: each 8x8 block comes back blurred into its neighbours, ink where it was.
    assert shrunk[d == 255].min() > 0.5 and shrunk[:, [0, 7]].max() < 0.02
    assert shrunk.mean() == pytest.approx(d.mean() / 255, rel=0.02)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_refused_without_blocking(tmp_path):
    from gpucnn.predict import image_paths

    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would wait for a writer forever
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "in.png")
    Image.new("L", (4, 4)).save(tmp_path / "sub" / "ok.png")
    got = image_paths([str(tmp_path / "pipe.png"), str(tmp_path / "sub")])
    assert [(os.path.basename(p), why is None) for p, why in got] == [("pipe.png", False), ("in.png", False),
                                                                        ("ok.png", True)]
    assert all("not a regular file" in why for _, why in got[:2])


def test_without_pillow_the_message_names_the_extra(monkeypatch):
    from gpucnn import predict

    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(GpucnnError, match=re.escape('pip install ".[image]" (in the gpucnn clone)')):
        predict.pillow()


def test_truncated_and_unusual_files(tmp_path):
    from gpucnn.predict import UnreadableImage

    Image.fromarray(numpy.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=numpy.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:300])
    with pytest.raises(UnreadableImage, match="not a readable image"):
        read_image(tmp_path / "cut.jpg", (3, 8, 8))
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # no ink: white paper
    assert read_image(tmp_path / "cmyk.jpg", (1, 8, 8)).min() > 0.95


def test_predict_equals_eval_image_by_image_for_a_tta_run(mnist_run, tmp_path, capsys):
    """A --tta run: eval averages each image's logits with its mirror's by default, so predict must too."""
    from gpucnn.evaluation import predict as eval_predict

    ckpt, xt, yt = mnist_run
    tta_ckpt = tmp_path / "tta.ckpt"
    assert cli.main(["train", "--dataset", str(ckpt.parent / "mnist1k.npz"), "--epochs", "1", "--batch-size", "32",
                     "--no-progress", "--tta", "--save", str(tta_ckpt)]) == 0
    trained = load_trained(str(tta_ckpt))
    assert trained.tta
    evals = eval_predict(trained.model, xt[:, None], yt, trained.mean, trained.std, classes=10, tta=True).probabilities
    paths = _save(xt, tmp_path / "imgs", "png")
    capsys.readouterr()

    def predicted(*flags):
        assert cli.main(["predict", "--checkpoint", str(tta_ckpt), *paths, "--json", "--top-k", "10", *flags]) == 0
        rows = [json.loads(l)["top_k"] for l in capsys.readouterr().out.splitlines()]
        return numpy.array([[t["probability"] for t in sorted(r, key=lambda t: t["index"])] for r in rows])

    probs = predicted()
    numpy.testing.assert_array_equal(probs.argmax(axis=1), evals.argmax(axis=1))  # image by image
    numpy.testing.assert_allclose(probs, evals, atol=1e-5)
    plain = eval_predict(trained.model, xt[:, None], yt, trained.mean, trained.std, classes=10, tta=False).probabilities
    numpy.testing.assert_allclose(predicted("--no-tta"), plain, atol=1e-5)
    assert not numpy.allclose(plain, evals, atol=1e-5)  # the flip changes the outputs: the check above can fail


def test_a_class_name_with_a_newline_stays_on_its_line():
    """Class names come from folder names and checkpoints: one with a newline must not split
    predict's one line per image (the path already could not)."""
    from gpucnn.predict import format_line

    top = [{"class": "cat\ndog", "index": 0, "probability": 0.9}, {"class": "fox", "index": 1, "probability": 0.1}]
    line = format_line({"path": "a.png", **top[0], "top_k": top})
    assert "\n" not in line and "'cat\\ndog'" in line
