"""Standard output that goes away (`gpucnn ... | head -1`, `> /dev/full`): every command that
prints ends cleanly, with no traceback, and training carries on to its checkpoint."""
import os
import subprocess
import sys

import numpy
import pytest

from gpucnn import cli
from gpucnn.stdout import BROKEN_PIPE_EXIT

pytest.importorskip("sklearn")  # the built-in digits dataset
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "c.ckpt"
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--save", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path_factory.mktemp("images")
    rng = numpy.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((8, 8)) * 255).astype(numpy.uint8)).save(folder / f"{i}.png")
    return folder


def _closed_pipe():
    """The writing end of a pipe whose reader has already gone, as after `| head -1`."""
    r, w = os.pipe()
    os.close(r)
    return open(w, "w")


def _full_disk():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    return open("/dev/full", "w")


def _commands(ckpt, images, tmp_path):
    return {"predict": ["predict", "--checkpoint", str(ckpt), str(images), "--no-progress"],
            "predict --json": ["predict", "--checkpoint", str(ckpt), str(images), "--json", "--no-progress"],
            "eval": ["eval", "--checkpoint", str(ckpt)],
            "export": ["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.safetensors")],
            "check": ["check"]}


@pytest.mark.parametrize("command", ["predict", "predict --json", "eval", "export", "check"])
@pytest.mark.parametrize("stdout", ["closed pipe", "full disk"])
def test_every_printing_command_ends_cleanly(command, stdout, ckpt, images, tmp_path, monkeypatch, capsys):
    if command == "export":
        pytest.importorskip("safetensors")
    out = _closed_pipe() if stdout == "closed pipe" else _full_disk()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        rc = cli.main(_commands(ckpt, images, tmp_path)[command])
    finally:
        monkeypatch.undo()
        out.close()  # its descriptor now points at os.devnull: closing cannot fail
    err = capsys.readouterr().err
    if stdout == "closed pipe":
        assert rc == BROKEN_PIPE_EXIT and "Traceback" not in err and "Error" not in err, err
    else:
        assert rc == 2 and "gpucnn: error: cannot write to standard output: No space left on device" in err, err


def test_a_closed_pipe_in_a_real_process_prints_nothing_at_exit(ckpt, images):
    """What Python prints itself when stdout fails at exit ("Exception ignored ... BrokenPipeError")."""
    r, w = os.pipe()
    os.close(r)
    env = {**os.environ, "PYTHONPATH": ROOT, "GPUCNN_BACKEND": "numpy"}
    run = subprocess.run([sys.executable, "-m", "gpucnn", "predict", "--checkpoint", str(ckpt), str(images)],
                         stdout=w, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    os.close(w)
    assert run.returncode == BROKEN_PIPE_EXIT
    assert [line for line in run.stderr.splitlines() if "backend" not in line] == [], run.stderr


def test_a_process_started_without_stdout_runs_as_before(ckpt, images):
    """`gpucnn ... >&-`: Python sets sys.stdout to None and print() writes nowhere."""
    env = {**os.environ, "PYTHONPATH": ROOT, "GPUCNN_BACKEND": "numpy"}
    run = subprocess.run([sys.executable, "-m", "gpucnn", "predict", "--checkpoint", str(ckpt), str(images)],
                         stderr=subprocess.PIPE, text=True, env=env, timeout=120, preexec_fn=lambda: os.close(1))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr


@pytest.mark.parametrize("stdout", ["closed pipe", "full disk"])
def test_training_carries_on_to_its_checkpoint(stdout, tmp_path, monkeypatch, capsys):
    out = _closed_pipe() if stdout == "closed pipe" else _full_disk()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        rc = cli.main(["train", "--epochs", "2", "--no-progress", "--save", str(tmp_path / "t.ckpt")])
    finally:
        monkeypatch.undo()
        out.close()
    err = capsys.readouterr().err
    assert rc == 0 and (tmp_path / "t.ckpt").exists()
    assert err.count("cannot write to standard output") == 1 and "Traceback" not in err, err


def test_a_commands_own_error_is_what_propagates_and_nothing_is_left_to_fail_at_exit(monkeypatch):
    from gpucnn.errors import GpucnnError
    from gpucnn.stdout import guarded_stdout

    out = _closed_pipe()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        with pytest.raises(GpucnnError, match="the command's own error"):
            with guarded_stdout():
                print("a result line")  # buffered: the closed pipe is met only when flushed
                raise GpucnnError("the command's own error")
        assert sys.stdout is out
        out.flush()  # what the interpreter does at exit: its descriptor now writes to os.devnull
    finally:
        monkeypatch.undo()
        out.close()
