"""data/image.py on hostile input: NaN floats, huge pictures, Pillow's warnings, odd links and names."""
import json
import os
import warnings

import numpy
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from gpucnn import cli  # noqa: E402
from gpucnn.data import image  # noqa: E402
from gpucnn.data.image import UnreadableImage, read_bytes, read_image  # noqa: E402
from gpucnn.predict import format_line, image_paths  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny net on 8x8 digits (trained a few steps): enough to run predict end to end."""
    d = tmp_path_factory.mktemp("net")
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "256", "--no-progress",
                     "--save", str(d / "n.ckpt")]) == 0
    return str(d / "n.ckpt")


def test_a_nan_pixel_in_a_float_tiff_is_refused_by_name(tmp_path, checkpoint, capsys):
    x = numpy.full((8, 8), 0.5, numpy.float32)
    Image.fromarray(x).save(tmp_path / "ok.tif")
    x[3, 4] = numpy.nan
    Image.fromarray(x).save(tmp_path / "nan.tif")
    x[3, 4] = numpy.inf
    Image.fromarray(x).save(tmp_path / "inf.tif")
    with pytest.raises(UnreadableImage, match="NaN or infinite"):
        read_image(tmp_path / "nan.tif", (1, 8, 8))
    with pytest.raises(UnreadableImage, match="NaN or infinite"):
        read_image(tmp_path / "inf.tif", (1, 4, 4), fit="crop")  # shrunk first: still found
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", checkpoint, "--json", "--no-progress", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]  # strict JSON: a NaN would not parse back as a number
    assert [os.path.basename(r["path"]) for r in rows] == ["ok.tif"]
    assert "nan.tif: has NaN or infinite pixels" in err and "inf.tif: has NaN or infinite pixels" in err


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_a_large_png_refused(tmp_path, monkeypatch):
    rng = numpy.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (800, 800), dtype=numpy.uint8)).resize((1600, 1600))
    big.save(tmp_path / "big.jpg", quality=80)
    big.save(tmp_path / "big.png")
    monkeypatch.setattr(image, "MAX_PIXELS", 1600 * 1600 // 20)  # between 1/8 and 1/4 scale's pixels
    sizes = []
    real_load = Image.Image.load

    def spy(im):
        sizes.append(im.size)
        return real_load(im)

    monkeypatch.setattr(Image.Image, "load", spy)
    x = read_image(tmp_path / "big.jpg", (1, 28, 28))
    assert x.shape == (1, 28, 28) and max(w * h for w, h in sizes) <= 200 * 200  # decoded at 1/8 scale
    with pytest.raises(UnreadableImage, match=r"is 1600x1600 pixels; gpucnn decodes at most 128,000 pixels"):
        read_image(tmp_path / "big.png", (1, 28, 28))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own bomb error: reported the same way
    with pytest.raises(UnreadableImage, match=r"is 1600x1600 pixels"):
        read_image(tmp_path / "big.png", (1, 28, 28))
    assert Image.MAX_IMAGE_PIXELS == 1000  # left as it was


def test_the_draft_keeps_the_target_resolution(tmp_path):
    """A JPEG 4x the target is decoded at half scale at most, never below the target size."""
    rng = numpy.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (14, 14, 3), dtype=numpy.uint8)).resize((112, 112), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "a.jpg", quality=95)  # smooth, as photos are at the scale of a small net
    with Image.open(tmp_path / "a.jpg") as im:
        full = numpy.asarray(im.convert("L").resize((28, 28), Image.Resampling.BILINEAR), numpy.float32) / 255
    x = read_image(tmp_path / "a.jpg", (1, 28, 28))[0]
    assert numpy.abs(x - full).mean() < 0.01  # the DCT-scaled decode looks like the full decode resized


def test_pillow_warnings_become_one_clean_line(tmp_path, checkpoint, capsys, monkeypatch):
    Image.new("L", (40, 40), 128).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: over the limit, under twice it
    monkeypatch.setattr(image, "MAX_PIXELS", 10**6)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping read_image would raise here
        read_image(tmp_path / "a.png", (1, 8, 8), warn=lines.append)
    assert len(lines) == 1 and "decompression bomb" in lines[0].lower()
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", checkpoint, "--no-progress", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"gpucnn: {tmp_path / 'a.png'}: warning: Image size (1600 pixels)")


def test_links_that_lead_nowhere_are_named_as_such(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "ok.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "loop_b.png", tmp_path / "loop_a.png")
    os.symlink(tmp_path / "loop_a.png", tmp_path / "loop_b.png")
    got = dict((os.path.basename(p), why) for p, why in image_paths([str(tmp_path)]))
    assert got["ok.png"] is None
    assert got["dangling.png"].startswith("a dangling symbolic link") and "gone.png" in got["dangling.png"]
    assert got["loop_a.png"] == got["loop_b.png"] == "a symbolic link loop"
    assert dict(image_paths([str(tmp_path / "loop_a.png")]))[str(tmp_path / "loop_a.png")] == "a symbolic link loop"


def test_a_folder_dataset_names_bad_links_too(tmp_path):
    from gpucnn.data import folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("L", (4, 4)).save(tmp_path / c / "x.png")
    os.symlink(tmp_path / "a" / "self.png", tmp_path / "a" / "self.png")
    scan = folder.scan(str(tmp_path))
    assert scan.bad == [(str(tmp_path / "a" / "self.png"), "a symbolic link loop")]


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path, checkpoint, capsys):
    name = tmp_path / "two\nlines.png"
    Image.new("L", (8, 8), 200).save(name)
    line = format_line({"path": str(name), "class": "3", "probability": 0.5,
                        "top_k": [{"class": "3", "probability": 0.5}]})
    assert "\n" not in line and "two\\nlines.png" in line
    assert cli.main(["predict", "--checkpoint", checkpoint, "--no-progress", str(name)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "two\\nlines.png" in out


def test_read_bytes_is_read_image_in_bytes(tmp_path):
    rng = numpy.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=numpy.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(0, 65535, (30, 20), dtype=numpy.uint16)).save(tmp_path / "deep.png")
    for name in ("rgb.png", "deep.png"):
        for shape, fit in (((3, 30, 20), "stretch"), ((1, 12, 12), "crop"), ((3, 10, 16), "pad")):
            b = read_bytes(tmp_path / name, shape, fit)
            f = read_image(tmp_path / name, shape, fit)
            assert b.dtype == numpy.uint8 and b.shape == f.shape == shape
            numpy.testing.assert_array_equal(b, numpy.rint(f * 255).astype(numpy.uint8))


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_exif_orientation_is_applied_to_the_size_and_the_pixels(tmp_path, ext):
    from PIL import ImageOps

    x = numpy.zeros((10, 40), numpy.uint8)
    x[:, :10] = 255  # a bright left end of a wide strip
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: a tall strip, bright at the top
    Image.fromarray(x).save(tmp_path / f"r.{ext}", exif=exif)
    assert image.header(tmp_path / f"r.{ext}")[:2] == (40, 10)
    with Image.open(tmp_path / f"r.{ext}") as im:
        shown = numpy.asarray(ImageOps.exif_transpose(im), numpy.float32) / 255
    got = read_image(tmp_path / f"r.{ext}", (1, 40, 10))[0]
    assert shown.shape == got.shape == (40, 10) and got[:10].mean() > 0.9 and got[12:].mean() < 0.1
    numpy.testing.assert_allclose(got, shown, atol=1e-6)
    small = read_image(tmp_path / f"r.{ext}", (1, 8, 2))[0]  # drafted and reduced: still upright
    assert small[:2].mean() > 0.7 and small[3:].mean() < 0.2
