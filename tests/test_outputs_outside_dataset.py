"""Nothing is written inside a --dataset FOLDER: a TensorBoard folder there would be scanned
as a class by the next run, a checkpoint or image a stray file. Refused at start-up, before
any file or folder is made (outputs.check_outside, the rule the decoded cache keeps too)."""
import numpy
import pytest

pytest.importorskip("PIL")
from folder_helpers import tree, write_split  # noqa: E402
from gpucnn import cli  # noqa: E402
from gpucnn.outputs import inside  # noqa: E402


@pytest.fixture
def images(tmp_path):
    rng = numpy.random.default_rng(0)
    write_split(tmp_path / "d", rng.integers(0, 256, (8, 12, 12), numpy.uint8), [0, 1] * 4)
    return tmp_path / "d"


TRAIN = ["train", "--no-progress", "--epochs", "1", "--workers", "1", "--no-cache"]


@pytest.mark.parametrize("flag, name", [("--save", "run.ckpt"), ("--metrics-out", "m.jsonl"),
                                        ("--tensorboard", "tb"), ("--save", "sub/run.ckpt")])
def test_train_refuses_an_output_inside_the_image_folder(images, tmp_path, capsys, flag, name):
    before = tree(images)
    argv = [*TRAIN, "--dataset", str(images), flag, str(images / "0" / name)]
    if flag != "--save":
        argv += ["--save", str(tmp_path / "run.ckpt")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} would be written inside the image folder {images}" in err, err
    assert tree(images) == before and not (tmp_path / "run.ckpt").exists()


@pytest.mark.parametrize("flag", ["--confusion-matrix", "--mistakes"])
def test_eval_refuses_an_image_inside_the_image_folder(images, tmp_path, capsys, flag):
    pytest.importorskip("matplotlib")
    before = tree(images)
    argv = ["eval", "--checkpoint", str(tmp_path / "none.ckpt"), "--dataset", str(images),
            flag, str(images / "new" / "out.png")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} would be written inside the image folder {images}" in err, err
    assert tree(images) == before


def test_inside_follows_links_and_is_not_fooled_by_a_shared_prefix(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert inside(tmp_path / "link" / "x", tmp_path / "d") and inside(tmp_path / "d", tmp_path / "d")
    assert not inside(tmp_path / "d2" / "x", tmp_path / "d")
