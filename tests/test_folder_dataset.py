"""Folders of images as datasets: layouts, what is read, every refusal, and predict == eval."""
import json
import os
import re

import numpy
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from folder_helpers import expected_arrays, mnist, tree, write_split  # noqa: E402
from gpucnn import cli  # noqa: E402
from gpucnn.data import DatasetError, load  # noqa: E402
from gpucnn.data.datasets import load_folder  # noqa: E402
from gpucnn.data.split import has_test_split  # noqa: E402


def _load(root, tmp_path, **kw):
    return load_folder(str(root), cache_dir=str(tmp_path / "cache"), workers=kw.pop("workers", 1), progress=False, **kw)


@pytest.fixture
def digits():
    return mnist(120, 80)


def test_train_test_layout_gives_the_digits_exactly(tmp_path, digits):
    x, y, xt, yt = digits
    train = write_split(tmp_path / "d" / "train", x, y, nested=True)  # images in sub-folders of their class
    test = write_split(tmp_path / "d" / "test", xt, yt)
    for workers, no_cache in ((1, False), (2, False), (2, True)):
        ds = _load(tmp_path / "d", tmp_path, workers=workers, no_cache=no_cache)
        ex, ey, _ = expected_arrays(train)
        numpy.testing.assert_array_equal(ds.x_train, ex)
        numpy.testing.assert_array_equal(ds.y_train, ey)
        ex, ey, _ = expected_arrays(test)
        numpy.testing.assert_array_equal(ds.x_test, ex)
        numpy.testing.assert_array_equal(ds.y_test, ey)
        assert ds.classes == [str(c) for c in range(10)] and has_test_split(ds)
        assert ds.pixels == {"image_size": "28x28", "channels": 1, "fit": "stretch"}
        assert ds.mean[0] == pytest.approx(x.mean() / 255, rel=1e-5)  # of the training split
        assert ds.std[0] == pytest.approx(x.std() / 255, rel=1e-4)


def test_val_folder_is_the_test_split_and_flat_layout_has_none(tmp_path, digits):
    x, y, xt, yt = digits
    write_split(tmp_path / "a" / "train", x, y)
    write_split(tmp_path / "a" / "val", xt, yt, ext="jpg", quality=95)
    ds = _load(tmp_path / "a", tmp_path)
    assert len(ds.y_test) == len(yt) and has_test_split(ds)
    flat = write_split(tmp_path / "flat", x, y)
    ds = _load(tmp_path / "flat", tmp_path)
    assert not has_test_split(ds) and not hasattr(ds, "has_test") and ds.x_test.shape == (0, 1, 28, 28) and ds.y_test.shape == (0,)
    numpy.testing.assert_array_equal(ds.x_train, expected_arrays(flat)[0])


def test_class_names_are_the_sorted_folder_names(tmp_path, digits):
    x, y, _, _ = digits
    for name, label in (("zebra", 0), ("Apple", 1), ("mango", 2)):
        write_split(tmp_path / "f" / name, x[y == label][:5], [0] * 5)
    ds = _load(tmp_path / "f", tmp_path)
    assert ds.classes == ["Apple", "mango", "zebra"]  # torchvision's rule: sorted() of the names
    assert numpy.bincount(ds.y_train).tolist() == [5, 5, 5]


def test_bad_hidden_and_other_files(tmp_path, digits, capsys):
    x, y, xt, yt = digits
    write_split(tmp_path / "d" / "train", x, y)
    write_split(tmp_path / "d" / "test", xt, yt)
    (tmp_path / "d" / "train" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = (tmp_path / "d" / "train" / "4" / "0002.png").read_bytes()
    (tmp_path / "d" / "train" / "4" / "cut.png").write_bytes(good[:len(good) // 2])  # header fine, data cut
    (tmp_path / "d" / "train" / "5" / ".hidden.png").write_bytes(good)
    (tmp_path / "d" / "train" / "5" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / "train" / "README").write_text("outside the class folders")
    ds = _load(tmp_path / "d", tmp_path)
    assert len(ds.y_train) == len(y)  # the two bad files are skipped, the hidden one ignored
    err = capsys.readouterr().err
    assert "broken.png: not a readable image" in err and "cut.png: not a readable image" in err
    assert "2 bad file(s) skipped" in err and "ignored 1 hidden, 1 not an image suffix, 1 outside a class folder" in err
    with pytest.raises(DatasetError, match=r"2 bad file\(s\) and --strict-images: .*broken.png"):
        _load(tmp_path / "d", tmp_path, strict_images=True, image_size="28", channels=1)
    assert cli.main(["data", str(tmp_path / "d"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  total\s+120\s+80$", out, re.M) and "sizes (HxW): 28x28 (200)" in out and "modes: L (200)" in out
    assert "bad files: 2" in out and "cut.png: not a readable image" in out
    assert "ignored: 1 hidden, 1 not an image suffix, 1 outside a class folder" in out


def _two_classes(root, digits, n=4):
    x, y, _, _ = digits
    write_split(root, x[:n], [0] * n)
    write_split(root, x[n:2 * n], [1] * n)


@pytest.mark.parametrize("case, message", [
    ("empty class", r"d/1: class folder holds no image files"),
    ("one class", r"1 class folder\(s\) \(0\); a dataset needs at least two"),
    ("test classes differ", r"its classes differ from .*: missing from test: 1; only in test: 7"),
    ("sizes differ", r"images differ in size \(28x28 \(8\), 30x20 \(1\)\); choose one with --image-size"),
    ("grey and colour", r"images are both grey and colour \(modes L \(8\), RGB \(1\)\); choose with --channels"),
    ("all bad in a class", r"class '1' has no readable images in the train split"),
    ("not a folder", r"no/such: image folder not found"),
])
def test_refusals_before_training(tmp_path, digits, case, message):
    root = tmp_path / "d"
    if case == "empty class":
        _two_classes(root, digits)
        (root / "1" / "part0").mkdir()  # sub-folders without images still leave the class empty
        for p in (root / "1").glob("*.png"):
            p.unlink()
    elif case == "one class":
        write_split(root, digits[0][:4], [0] * 4)
    elif case == "test classes differ":
        _two_classes(root / "train", digits)
        write_split(root / "test", digits[0][:2], [0, 7])
    elif case == "sizes differ":
        _two_classes(root, digits)
        Image.new("L", (20, 30)).save(root / "1" / "odd.png")
    elif case == "grey and colour":
        _two_classes(root, digits)
        Image.new("RGB", (28, 28)).save(root / "1" / "colour.png")
    elif case == "all bad in a class":
        _two_classes(root, digits)
        for p in (root / "1").glob("*.png"):
            p.write_bytes(b"junk")
    else:
        root = tmp_path / "no" / "such"
    with pytest.raises(DatasetError, match=message):
        _load(root, tmp_path)


def test_flags_choose_size_and_channels(tmp_path, digits):
    root = tmp_path / "d"
    _two_classes(root, digits)
    rgb = numpy.zeros((28, 28, 3), numpy.uint8)
    rgb[..., 0] = 200  # pure red: luma 0.299 * 200
    Image.fromarray(rgb).save(root / "1" / "red.png")
    Image.new("L", (56, 40), 255).save(root / "0" / "big.png")
    ds = _load(root, tmp_path, image_size="14x20", channels=1, fit="pad")
    assert ds.x_train.shape == (9 + 1, 1, 14, 20)
    assert ds.pixels == {"image_size": "14x20", "channels": 1, "fit": "pad"}
    red = ds.x_train[-1, 0]
    assert red[:, 3:17].min() == red[:, 3:17].max() == round(0.299 * 200)  # pad: borders black, the image grey
    assert red[:, :2].max() == 0
    ds3 = _load(root, tmp_path, image_size="14x20", channels=3)
    assert ds3.x_train.shape[1] == 3 and ds3.x_train[-1, 0].max() == 200 and ds3.x_train[-1, 1].max() == 0


def test_image_size_is_refused_for_other_datasets():
    with pytest.raises(DatasetError, match="--image-size, --channels and --fit are for folders"):
        load("digits", folder_options={"image_size": "8"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A net trained one epoch on a folder of JPEGs brought to 24x20 by --fit crop (a real resize)."""
    x, y, xt, yt = mnist(400, 80)
    d = tmp_path_factory.mktemp("run")
    write_split(d / "jpegs" / "train", x, y, ext="jpg", quality=90)
    test = write_split(d / "jpegs" / "test", xt, yt, ext="jpg", quality=90)
    before = tree(d / "jpegs")
    env = {"GPUCNN_CACHE": str(d / "cache")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert cli.main(["train", "--dataset", str(d / "jpegs"), "--model", "small", "--epochs", "1", "--batch-size", "16",
                         "--image-size", "24x20", "--fit", "crop", "--workers", "2", "--no-progress",
                         "--save", str(d / "m.ckpt")]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert tree(d / "jpegs") == before  # nothing written into the user's folder
    return d, test


def test_the_checkpoint_keeps_the_pixel_settings_and_classes(trained):
    from gpucnn.checkpoint import load_checkpoint

    d, _ = trained
    meta = load_checkpoint(str(d / "m.ckpt"))["meta"]
    assert meta["config"]["image_size"] == "24x20" and meta["config"]["channels"] == 1 and meta["config"]["fit"] == "crop"
    assert meta["config"]["dataset"] == str(d / "jpegs") and meta["input_shape"] == [1, 24, 20]
    assert meta["classes"] == [str(c) for c in range(10)]


def test_predict_on_the_test_files_gives_evals_predictions(trained, capsys, monkeypatch):
    from gpucnn.predict import predict_arrays, predict_files
    from gpucnn.trained import load_trained

    d, test = trained
    monkeypatch.setenv("GPUCNN_CACHE", str(d / "cache"))
    assert cli.main(["eval", "--checkpoint", str(d / "m.ckpt"), "--workers", "1"]) == 0
    eval_acc = float(re.search(r"accuracy (\d\.\d+)", capsys.readouterr().out).group(1))
    net = load_trained(str(d / "m.ckpt"))
    data = load(str(d / "jpegs"), folder_options={"image_size": "24x20", "channels": 1, "fit": "crop",
                                                  "workers": 1, "progress": False})
    evals = predict_arrays(net, data.x_test)  # the decoded test split through eval's normalisation
    _, labels, order = expected_arrays(test)
    got = list(predict_files(net, order, top_k=10, fit="crop", progress=False))
    probs = numpy.array([[t["probability"] for t in sorted(r["top_k"], key=lambda t: t["index"])] for r in got])
    assert [r["path"] for r in got] == order
    numpy.testing.assert_array_equal(probs.argmax(axis=1), evals.argmax(axis=1))  # image by image
    numpy.testing.assert_allclose(probs, evals, atol=1e-5)
    assert numpy.mean(probs.argmax(axis=1) == labels) == pytest.approx(eval_acc, abs=1e-4)
    assert eval_acc > 0.4  # a weak net, far above chance: the pixels are the digits
    assert net.fit == "crop"  # predict's default is the fit the net was trained with
    default = [[t["probability"] for t in r["top_k"]] for r in predict_files(net, order[:5], top_k=10, progress=False)]
    numpy.testing.assert_allclose(default, [[t["probability"] for t in r["top_k"]] for r in got[:5]], atol=1e-6)
    stretched = list(predict_files(net, order, top_k=10, fit="stretch", progress=False))
    assert not numpy.allclose([r["top_k"][0]["probability"] for r in stretched], probs.max(axis=1), atol=1e-5)


def test_a_cache_dir_inside_the_images_is_refused(tmp_path, digits):
    _two_classes(tmp_path / "d", digits)
    with pytest.raises(DatasetError, match="inside the image folder"):
        load_folder(str(tmp_path / "d"), cache_dir=str(tmp_path / "d" / ".cache"), workers=1, progress=False)
    assert not (tmp_path / "d" / ".cache").exists()


def test_resume_keeps_the_folder_settings(trained, tmp_path, monkeypatch):
    d, _ = trained
    monkeypatch.setenv("GPUCNN_CACHE", str(d / "cache"))
    ckpt = tmp_path / "r.ckpt"
    args = ["train", "--dataset", str(d / "jpegs"), "--model", "small", "--epochs", "2", "--batch-size", "16",
            "--image-size", "24x20", "--fit", "crop", "--workers", "1", "--no-progress", "--save", str(ckpt),
            "--stop-after", "1"]
    assert cli.main(args) == 0
    assert cli.main(["train", "--resume", str(ckpt), "--image-size", "24x20", "--no-progress", "--workers", "1"]) == 0
    assert cli.main(["train", "--resume", str(ckpt), "--image-size", "28", "--no-progress"]) == 2
    saved = json.loads(json.dumps(__import__("gpucnn.checkpoint", fromlist=["x"]).load_checkpoint(str(ckpt))["meta"]))
    assert saved["epoch"] == 2 and saved["config"]["fit"] == "crop"


def test_a_folder_named_like_a_builtin_needs_a_path(tmp_path, digits, monkeypatch):
    _two_classes(tmp_path / "digits", digits)
    monkeypatch.chdir(tmp_path)
    assert load("digits").name == "digits" and load("digits").x_train.shape[1:] == (1, 8, 8)  # the built-in
    ds = load(os.path.join(".", "digits"), folder_options={"workers": 1, "progress": False, "no_cache": True})
    assert ds.x_train.shape == (8, 1, 28, 28)


def test_every_lossless_format_gives_the_same_digits(tmp_path, digits):
    x, y, _, _ = digits
    formats = [("png", {}), ("bmp", {}), ("tif", {}), ("gif", {}), ("webp", {"lossless": True})]
    root = tmp_path / "d"
    for label in (0, 1):
        (root / str(label)).mkdir(parents=True)
    expected = {}
    for i, (ext, kw) in enumerate(formats * 2):
        label, im = i % 2, x[i]
        path = root / str(label) / f"{i:02d}.{ext}"
        if ext == "gif" and i >= len(formats):  # an animation: its first frame is the image
            Image.fromarray(im).save(path, save_all=True, append_images=[Image.new("L", (28, 28), 255)])
        else:
            Image.fromarray(im).save(path, **kw)
        expected[str(path)] = (im, label)
    with pytest.raises(DatasetError, match=r"both grey and colour \(modes L \(6\), RGB \(2\), P \(2\)\)"):  # WebP: no grey; GIF: a palette
        _load(root, tmp_path)
    ds = _load(root, tmp_path, channels=1)
    ex, ey, _ = expected_arrays(expected)
    numpy.testing.assert_array_equal(ds.x_train, ex)
    numpy.testing.assert_array_equal(ds.y_train, ey)


@pytest.mark.parametrize("setup, words", [
    (lambda d: None, ["nowhere/pets", "no such folder"]),
    (lambda d: (d / "nowhere").mkdir() or (d / "nowhere" / "pets").write_bytes(b"\x89PNG"), ["neither a folder of images nor an .npz"]),
    (lambda d: None, ["unknown dataset 'cifar100'", "a folder of images"]),
])
def test_a_dataset_that_is_not_there_says_what_it_is(tmp_path, setup, words):
    """A missing path is 'no such folder', a picture given as --dataset is named as what it is
    not, an unknown name lists every kind of dataset: never 'choose one of' for a typo'd path."""
    from gpucnn.data import DatasetError, load

    setup(tmp_path)
    name = "cifar100" if "cifar100" in words[0] else str(tmp_path / "nowhere" / "pets")
    with pytest.raises(DatasetError) as e:
        load(name)
    for w in words:
        assert w in str(e.value)


def test_workers_below_one_are_refused(tmp_path, capsys):
    from gpucnn import cli

    assert cli.main(["train", "--dataset", str(tmp_path), "--workers", "0", "--no-save"]) == 2
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err


def test_a_val_folder_beside_test_is_said_to_be_unread(tmp_path):
    """test/ is the test split; a val/ beside it is not read, and the scan says so."""
    from PIL import Image

    from gpucnn.data.folder import scan

    for split in ("train", "test", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), 40 if c == "a" else 200).save(tmp_path / split / c / "0.png")
    assert "val/ is not read" in scan(str(tmp_path)).layout
