"""Nothing a user owns is overwritten: every output a command writes, through the real CLI.

Each case checks the exit status, the one-line message, and that every file the user had is
byte for byte what it was (snapshot of the whole directory before and after).
"""
import errno
import functools
import json
import os
import stat
import subprocess
import tempfile

import pytest

from reliability_helpers import TRAIN, gpucnn, refused, snapshot, tiny_npz, train_tiny

from gpucnn.checkpoint import is_checkpoint, load_checkpoint

ROW = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.1, "test_acc": 0.4}
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def test_save_onto_the_dataset_is_refused(tmp_path):
    d = tiny_npz(tmp_path / "d.npz")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", d), "--dataset and --save name the same file")
    assert snapshot(tmp_path) == before


def test_save_equal_to_metrics_out_is_refused(tmp_path):
    d = tiny_npz(tmp_path / "d.npz")
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps(ROW) + "\n")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", m, "--metrics-out", m),
            "--save and --metrics-out name the same file")
    assert snapshot(tmp_path) == before


def test_save_onto_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    d = tiny_npz(tmp_path / "d.npz")
    notes = tmp_path / "notes.ckpt"  # the name says checkpoint; the content does not
    notes.write_text("my notes\n")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", notes), str(notes), "not a gpucnn checkpoint")
    assert snapshot(tmp_path) == before


@pytest.fixture
def device(tmp_path):
    """A character device to aim outputs at. As root, a private node like /dev/full (1, 7) in
    tmp_path: were the guard ever broken, root could replace /dev/full itself, and a test must
    not be able to damage the machine it runs on. Otherwise /dev/full, which only root can replace."""
    if not AS_ROOT:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full on this system")
        return "/dev/full"
    node = tmp_path / "full"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except (OSError, AttributeError) as e:
        pytest.skip(f"cannot make a device node here: {e}")
    return str(node)


def test_save_onto_a_device_is_refused_and_the_device_stays(tmp_path, device):
    d = tiny_npz(tmp_path / "d.npz")
    (tmp_path / "m.jsonl").write_text(json.dumps(ROW) + "\n")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", device), device, "not a regular file")
    assert stat.S_ISCHR(os.stat(device).st_mode)  # still the device node
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--no-save", "--metrics-out", device), "not a regular file")
    refused(gpucnn("plot", tmp_path / "m.jsonl", "-o", device), device, "not a regular file")
    assert not os.path.exists(device + ".png")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_save_onto_a_fifo_is_refused(tmp_path):
    d = tiny_npz(tmp_path / "d.npz")
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", fifo), str(fifo), "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and snapshot(tmp_path) == before


@pytest.mark.parametrize("suffix", ["", os.sep])
def test_save_onto_a_directory_is_refused(tmp_path, suffix):
    d = tiny_npz(tmp_path / "d.npz")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", str(tmp_path / "runs") + suffix), "directory")
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", str(tmp_path / "new") + os.sep), "directory")
    assert snapshot(tmp_path) == before


def test_a_symlinked_checkpoint_keeps_its_link(tmp_path):
    real, link = tmp_path / "store" / "real.ckpt", tmp_path / "link.ckpt"
    d = train_tiny(tmp_path, real)
    os.symlink(real, link)
    old = real.read_bytes()
    r = gpucnn("train", "--dataset", d, *TRAIN, "--seed", "3", "--save", link)
    assert r.returncode == 0, r.stderr
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert real.read_bytes() != old and load_checkpoint(link)["meta"]["config"]["seed"] == 3


def test_stale_temporaries_of_the_checkpoint_are_removed_at_the_next_save(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    stale = tmp_path / ".c.ckpt.k1ll3d.tmp"  # what a SIGKILL during a save leaves
    other = tmp_path / ".other.ckpt.k1ll3d.tmp"
    stale.write_bytes(b"PK\x03\x04 half")
    other.write_bytes(b"not ours to remove")
    train_tiny(tmp_path, ckpt)
    assert not stale.exists() and other.read_bytes() == b"not ours to remove" and is_checkpoint(ckpt)


def test_save_and_metrics_directories_are_created(tmp_path):
    ckpt, m = tmp_path / "a" / "b" / "c.ckpt", tmp_path / "logs" / "m.jsonl"
    train_tiny(tmp_path, ckpt, "--metrics-out", m)
    assert is_checkpoint(ckpt) and len(m.read_text().splitlines()) == 1


def test_an_output_under_a_regular_file_is_refused(tmp_path):
    d = tiny_npz(tmp_path / "d.npz")
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", tmp_path / "file" / "c.ckpt"), "cannot create the directory")
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--no-save", "--metrics-out", tmp_path / "file" / "m.jsonl"),
            "cannot create the directory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("how,words", [("mode 555", ["not writable"]),
                                       ("read-only mount", ["cannot create a file", "Read-only file system"])])
def test_a_read_only_directory_is_refused(tmp_path, monkeypatch, capsys, how, words):
    """Simulated, so that it runs as root too (root writes into a mode-555 directory): either
    access() says no, as for a user on a mode-555 directory, or access() says yes and creating
    a file fails, as for root on a read-only mount. Nothing is written there either way."""
    from gpucnn import cli

    d = tiny_npz(tmp_path / "d.npz")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    inside = functools.partial(_is_within, os.path.realpath(ro))
    access, mkstemp = os.access, tempfile.mkstemp
    if how == "mode 555":
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (inside(p) and mode & os.W_OK) and access(p, mode, **kw))

    def no_new_files(*args, dir=None, **kw):
        if dir is not None and inside(dir):
            raise OSError(errno.EACCES if how == "mode 555" else errno.EROFS,
                          os.strerror(errno.EACCES if how == "mode 555" else errno.EROFS))
        return mkstemp(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", no_new_files)

    def run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    try:
        refused(run("train", "--dataset", d, *TRAIN, "--save", ro / "c.ckpt"), *words)
        refused(run("train", "--dataset", d, *TRAIN, "--no-save", "--metrics-out", ro / "m.jsonl"), *words)
        m = tmp_path / "m.jsonl"
        m.write_text(json.dumps(ROW) + "\n")
        refused(run("plot", m, "-o", ro / "c.png"), *words)
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def _is_within(directory, path):
    return os.path.realpath(os.fspath(path)) == directory or os.path.realpath(os.fspath(path)).startswith(directory + os.sep)


# --- --metrics-out: a gpucnn metrics file is the run's (a new run replaces it, a resume
# appends to it); anything else is refused ---------------------------------------------------
@pytest.mark.parametrize("content", ["", json.dumps(ROW) + "\n"])
def test_a_new_run_replaces_an_empty_or_gpucnn_metrics_file(tmp_path, content):
    m = tmp_path / "m.jsonl"
    m.write_text(content)
    train_tiny(tmp_path, tmp_path / "c.ckpt", "--metrics-out", m)
    lines = m.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1  # no earlier run's epochs before it


def test_a_resume_appends_to_the_metrics_and_saves_back_to_its_checkpoint(tmp_path):
    m, ckpt = tmp_path / "m.jsonl", tmp_path / "c.ckpt"
    dataset = train_tiny(tmp_path, ckpt, "--metrics-out", m)
    (tmp_path / "runs").mkdir()
    other = tmp_path / "runs" / "last.ckpt"  # the default --save: an unrelated earlier run's
    train_tiny(tmp_path, other, dataset=dataset)
    before = other.read_bytes()
    r = gpucnn("train", "--resume", ckpt, "--epochs", "2", "--no-progress", "--metrics-out", m, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"checkpoint: {ckpt}" in r.stdout and other.read_bytes() == before
    from gpucnn.checkpoint import load_checkpoint

    assert load_checkpoint(ckpt)["meta"]["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in m.read_text().splitlines()] == [1, 2]


def test_a_relative_dataset_path_resumes_and_evaluates_from_another_directory(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    tiny_npz(work / "d.npz")
    r = gpucnn("train", "--dataset", "d.npz", *TRAIN, "--save", "c.ckpt", cwd=work)
    assert r.returncode == 0, r.stderr
    r = gpucnn("train", "--resume", "../work/c.ckpt", "--epochs", "2", "--no-progress", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    r = gpucnn("train", "--resume", "../work/c.ckpt", "--epochs", "3", "--no-progress",
               "--dataset", "../work/d.npz", cwd=elsewhere)  # the same file named from here: no conflict
    assert r.returncode == 0, r.stderr
    r = gpucnn("eval", "--checkpoint", "../work/c.ckpt", cwd=elsewhere)
    assert r.returncode == 0 and "accuracy" in r.stdout, r.stderr


def test_save_where_no_file_can_be_made_is_refused_before_training(tmp_path):
    refused(gpucnn("train", *TRAIN, "--save", "/proc/gpucnn-test.ckpt"), "/proc/gpucnn-test.ckpt", "cannot create a file")


@pytest.mark.parametrize("content", ["my notes\n", '{"epoch": 1}\n', "[1, 2]\n", json.dumps(ROW) + "\nnot json\n"])
def test_metrics_out_onto_another_file_is_refused(tmp_path, content):
    d = tiny_npz(tmp_path / "d.npz")
    m = tmp_path / "m.jsonl"
    m.write_text(content)
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--no-save", "--metrics-out", m), str(m), "not a gpucnn metrics file")
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--no-save", "--metrics-out", d), "--dataset and --metrics-out")
    assert snapshot(tmp_path) == before


def test_metrics_are_strict_json(tmp_path):
    m = tmp_path / "m.jsonl"
    train_tiny(tmp_path, tmp_path / "c.ckpt", "--metrics-out", m)

    def no_constants(name):
        raise AssertionError(f"{name} in the metrics file")

    lines = m.read_text().splitlines()
    assert len(lines) == 1, lines  # one epoch, one object: an empty file would pass the loop below
    for line in lines:
        assert json.loads(line, parse_constant=no_constants)["epoch"] == 1


def test_metrics_encode_non_finite_values_as_null():
    from gpucnn.metrics import encode

    line = encode({**ROW, "test_loss": float("inf"), "train_loss": float("nan")})
    row = json.loads(line, parse_constant=lambda name: pytest.fail(name))
    assert row["test_loss"] is None and row["train_loss"] is None and row["epoch"] == 1


# --- plot -o ----------------------------------------------------------------------------------
@pytest.fixture
def metrics(tmp_path):
    pytest.importorskip("matplotlib")
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "epoch": 2, "test_loss": None}) + "\n")
    return m


def test_plot_without_suffix_says_the_file_it_wrote(tmp_path, metrics):
    r = gpucnn("plot", metrics, "-o", tmp_path / "curves")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'curves.png'}"
    assert not (tmp_path / "curves").exists()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("suffix", ["svg", "png", "pdf", "eps", "ps", "jpg", "tif", "webp"])
def test_plot_replaces_its_own_image_and_creates_the_directory(tmp_path, metrics, suffix):
    """Each format carries gpucnn's mark where the format keeps metadata, so a second plot finds
    the first one its own; a plain picture of that format is refused (the next test)."""
    from gpucnn.plot import FORMATS, LOOKS_LIKE

    out = tmp_path / "figs" / f"c.{suffix}"
    for _ in range(2):
        r = gpucnn("plot", metrics, "-o", out)
        assert r.returncode == 0, r.stderr
    assert LOOKS_LIKE[FORMATS[suffix]](out.read_bytes()[:4096])


@pytest.mark.parametrize("name, content", [("c.png", b"my holiday photo, not a png"),
                                           ("c.pdf", b"\x89PNG\r\n\x1a\n a png named .pdf"),
                                           ("photo.png", "pillow"), ("photo.jpg", "pillow"),
                                           ("m.png", None)])
def test_plot_does_not_overwrite_what_is_not_its_image(tmp_path, metrics, name, content):
    out = tmp_path / name
    if content is None:
        out = metrics.with_name("m.png")
        os.symlink(metrics, out)  # -o resolves to the metrics file itself
    elif content == "pillow":  # a real picture of the user's, of the very format the suffix names
        from PIL import Image

        Image.new("RGB", (8, 8), (200, 10, 10)).save(out)
    else:
        out.write_bytes(content)
    before = snapshot(tmp_path)
    refused(gpucnn("plot", metrics, "-o", out), str(out))
    assert snapshot(tmp_path) == before


def test_plot_unknown_suffix_and_missing_or_blocked_directory(tmp_path, metrics):
    before = snapshot(tmp_path)
    refused(gpucnn("plot", metrics, "-o", tmp_path / "c.xyz"), "unknown image suffix '.xyz'", ".png")
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    refused(gpucnn("plot", metrics, "-o", tmp_path / "file" / "c.png"), "cannot create the directory")
    assert snapshot(tmp_path) == before


def test_write_atomically_reports_a_failed_write_and_leaves_the_old_file(tmp_path):
    from gpucnn.outputs import OutputError, write_atomically

    target = tmp_path / "c.bin"
    target.write_bytes(b"old")

    def disk_full(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device") as e:
        write_atomically(target, disk_full, what="checkpoint")
    assert isinstance(e.value, OSError) and str(target) in str(e.value)
    assert os.listdir(tmp_path) == ["c.bin"] and target.read_bytes() == b"old"


def test_metrics_out_onto_a_large_foreign_file_reads_one_line(tmp_path):
    """A 64 MB file without a newline (a video, say) is refused after its first MB."""
    from gpucnn.metrics import MAX_LINE, is_metrics_file

    big = tmp_path / "video.jsonl"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    assert not is_metrics_file(big)
    d = tiny_npz(tmp_path / "d.npz")
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--no-save", "--metrics-out", big), "not a gpucnn metrics file")
    assert snapshot(tmp_path) == before and MAX_LINE < 64 << 20


def test_save_onto_a_forged_checkpoint_is_refused_without_allocating(tmp_path):
    """A zip whose marker entry declares a 4 TB string: is_checkpoint says no, from the header."""
    from reliability_helpers import forge_shape, npz_entries, write_zip

    ckpt = tmp_path / "c.ckpt"
    d = train_tiny(tmp_path, ckpt)
    entries = npz_entries(ckpt)
    entries["__checkpoint__.npy"] = forge_shape(entries["__checkpoint__.npy"], (10**12,))
    write_zip(ckpt, entries)
    assert not is_checkpoint(ckpt)
    before = snapshot(tmp_path)
    refused(gpucnn("train", "--dataset", d, *TRAIN, "--save", ckpt), "not a gpucnn checkpoint")
    assert snapshot(tmp_path) == before
