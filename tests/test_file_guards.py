"""What gpucnn reads before refusing, and how it names what it refuses: an existing -o FILE.onnx
is told apart by its first bytes, not loaded; symlink loops and dangling links are named as such
at output and input paths; a checkpoint's class names must be a flat list of the right length."""
import json
import os

import numpy
import pytest

from gpucnn import cli
from gpucnn.checkpoint import CheckpointError, load_checkpoint
from gpucnn.init_from import InitFromError, check_source
from gpucnn.outputs import OutputError, check_output, write_atomically

pytest.importorskip("sklearn")  # the built-in digits dataset


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "c.ckpt"
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--save", str(path)]) == 0
    return path


def _bytes_read():
    """Bytes this process has read through read(2) so far (Linux's /proc/self/io rchar)."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration):
        pytest.skip("needs /proc/self/io (Linux)")


# --- an existing ONNX file is told apart by its first bytes --------------------------------
def test_a_large_onnx_file_of_someone_else_is_refused_reading_only_its_head(ckpt, tmp_path, capsys):
    pytest.importorskip("onnx")
    from onnx import helper

    theirs = helper.make_model(helper.make_graph([], "theirs", [], []), producer_name="pytorch")
    path = tmp_path / "big.onnx"
    with open(path, "wb") as f:
        f.write(theirs.SerializeToString())
        f.truncate(1 << 30)  # 1 GiB, sparse: what onnx.load would read in full
    before = _bytes_read()
    assert cli.main(["export", "--checkpoint", str(ckpt), "-o", str(path)]) == 2
    read = _bytes_read() - before
    assert "already exists and is not a gpucnn ONNX export; refusing to overwrite it" in capsys.readouterr().err
    assert read < 16 << 20, f"{read:,} bytes read to refuse"  # the checkpoint itself is read, the 1 GiB is not
    head = theirs.SerializeToString()
    with open(path, "rb") as f:
        assert os.path.getsize(path) == 1 << 30 and f.read(len(head)) == head  # untouched


def test_is_our_onnx_reads_the_producer_name_only(ckpt, tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper

    from gpucnn.export import is_our_onnx

    assert cli.main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "ours.onnx")]) == 0
    assert is_our_onnx(tmp_path / "ours.onnx")
    cases = {"other": helper.make_model(helper.make_graph([], "g", [], []), producer_name="gpucnn-fork")
             .SerializeToString(),
             "unnamed": helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString(),
             "garbage": b"\xff" * 64, "empty": b"", "truncated": (tmp_path / "ours.onnx").read_bytes()[:5],
             "text": b"gpucnn gpucnn gpucnn"}
    for name, data in cases.items():
        (tmp_path / f"{name}.onnx").write_bytes(data)
        assert not is_our_onnx(tmp_path / f"{name}.onnx"), name


# --- symlink loops and dangling links -----------------------------------------------------
@pytest.fixture
def links(tmp_path):
    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    os.symlink("target/dir/out.ckpt", tmp_path / "dangling")
    return tmp_path


@pytest.mark.parametrize("name", ["loop_a", "loop_a/out.ckpt"])
def test_an_output_path_through_a_symlink_loop_is_refused_as_a_loop(links, name):
    with pytest.raises(OutputError, match="is a symbolic link loop") as e:
        check_output(links / name, what="checkpoint", is_ours=lambda p: True)
    assert "FIFO" not in str(e.value)
    assert os.path.islink(links / "loop_a") and os.readlink(links / "loop_a") == "loop_b"  # untouched


def test_training_refuses_a_symlink_loop_as_save_path(links, capsys):
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--save", str(links / "loop_a")]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link loop" in err and "FIFO" not in err


def test_a_dangling_output_link_writes_its_target_and_keeps_the_link(links):
    real = check_output(links / "dangling", what="checkpoint", is_ours=lambda p: False)
    assert real == os.path.realpath(links / "target/dir/out.ckpt")
    write_atomically(links / "dangling", lambda f: f.write(b"x"))
    assert os.path.islink(links / "dangling") and (links / "target/dir/out.ckpt").read_bytes() == b"x"


def test_a_dangling_output_link_is_named_when_its_target_cannot_be_made(tmp_path):
    (tmp_path / "file").write_bytes(b"a user's file")
    os.symlink("file/inside.ckpt", tmp_path / "dangling")
    with pytest.raises(OutputError, match=r"dangling \(a dangling symbolic link to file/inside\.ckpt .*cannot create the directory"):
        check_output(tmp_path / "dangling", what="checkpoint", is_ours=lambda p: False)
    assert (tmp_path / "file").read_bytes() == b"a user's file"


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_devices_and_fifos_are_named_as_what_they_are(tmp_path):
    with pytest.raises(OutputError, match="is a character device, not a regular file"):
        check_output("/dev/null", what="checkpoint", is_ours=lambda p: True)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="is a FIFO, not a regular file"):
        check_output(tmp_path / "fifo", what="checkpoint", is_ours=lambda p: True)


def test_input_paths_name_loops_and_dangling_links(links):
    with pytest.raises(CheckpointError, match="is a symbolic link loop"):
        load_checkpoint(links / "loop_a")
    with pytest.raises(CheckpointError, match="is a dangling symbolic link to target/dir/out.ckpt"):
        load_checkpoint(links / "dangling")
    with pytest.raises(InitFromError, match="is a symbolic link loop"):
        check_source(links / "loop_b")
    with pytest.raises(InitFromError, match="is a dangling symbolic link"):
        check_source(links / "dangling")


# --- a checkpoint's class names ------------------------------------------------------------
def _with_classes(ckpt, tmp_path, classes):
    with numpy.load(ckpt, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    tree = json.loads(str(arrays["__checkpoint__"][()]))
    tree["meta"]["classes"] = classes
    arrays["__checkpoint__"] = numpy.array(json.dumps(tree))
    out = tmp_path / "edited.ckpt"
    with open(out, "wb") as f:
        numpy.savez(f, **arrays)
    return out


@pytest.mark.parametrize("classes, why", [
    ("0123456789", "is '0123456789', not a non-empty list of class names"),
    ([["0", "1"], ["2", "3", "4", "5", "6", "7", "8", "9"]], "holds ['0', '1'], not a class name"),
    ([str(i) for i in range(9)] + [["9"]], "holds ['9'], not a class name"),
    ([True] * 10, "holds True, not a class name"),
    ([None] * 10, "holds None, not a class name"),
    ([], "is [], not a non-empty list"),
    ([str(i) for i in range(11)], "has 11 names for 10 classes"),
])
@pytest.mark.parametrize("command", ["export", "predict"])
def test_malformed_class_names_are_refused(ckpt, tmp_path, capsys, classes, why, command):
    bad = _with_classes(ckpt, tmp_path, classes)
    argv = {"export": ["export", "--checkpoint", str(bad), "-o", str(tmp_path / "m.safetensors")],
            "predict": ["predict", "--checkpoint", str(bad), str(tmp_path / "any.png")]}[command]
    if command == "predict":
        pytest.importorskip("PIL")
    else:
        pytest.importorskip("safetensors")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{bad}: its saved run is damaged (classes {why}" in err, err


def test_integer_class_names_are_accepted(ckpt, tmp_path):
    pytest.importorskip("safetensors")
    good = _with_classes(ckpt, tmp_path, list(range(10)))
    assert cli.main(["export", "--checkpoint", str(good), "-o", str(tmp_path / "m.safetensors")]) == 0


def test_class_names_must_match_the_nets_outputs_without_num_classes(ckpt, tmp_path, capsys):
    """Older checkpoints lack num_classes: the count is read off the last layer's weights."""
    pytest.importorskip("safetensors")
    with numpy.load(ckpt, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    tree = json.loads(str(arrays["__checkpoint__"][()]))
    del tree["meta"]["num_classes"]
    tree["meta"]["classes"] = list("abc")
    arrays["__checkpoint__"] = numpy.array(json.dumps(tree))
    with open(tmp_path / "old.ckpt", "wb") as f:
        numpy.savez(f, **arrays)
    assert cli.main(["export", "--checkpoint", str(tmp_path / "old.ckpt"), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "its meta names 3 classes for a net with 10 outputs" in capsys.readouterr().err


def test_is_our_onnx_answers_for_any_damage(ckpt, tmp_path):
    """Property: for a damaged copy of an export, the head parser says yes or no, never raises."""
    pytest.importorskip("onnx")
    from test_reliability_fuzz import corrupt

    from gpucnn.export import is_our_onnx

    assert cli.main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "ours.onnx")]) == 0
    good = (tmp_path / "ours.onnx").read_bytes()[:512]
    rng = numpy.random.default_rng(0)
    answers = set()
    for i in range(300):
        (tmp_path / "d.onnx").write_bytes(corrupt(good, rng))
        answers.add(is_our_onnx(tmp_path / "d.onnx"))
    assert answers == {True, False}  # damage past the name keeps it ours; damage to it does not
