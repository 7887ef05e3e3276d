"""The decoded cache of a folder dataset: reused, invalidated, atomic, memory-mapped."""
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

pytest.importorskip("PIL")

from folder_helpers import mnist, tree, write_split  # noqa: E402
from gpucnn.data import cache  # noqa: E402
from gpucnn.data.datasets import load_folder  # noqa: E402
from gpucnn.data.stats import channel_stats  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def folder(tmp_path):
    x, y, xt, yt = mnist(60, 80)
    write_split(tmp_path / "d" / "train", x, y)
    write_split(tmp_path / "d" / "test", xt, yt)
    return tmp_path / "d"


def _load(root, cache_dir, **kw):
    return load_folder(str(root), cache_dir=str(cache_dir), workers=1, progress=False, **kw)


def _caches(cache_dir):
    home = cache_dir / "folders"
    return sorted(os.listdir(home)) if home.exists() else []


def _count_decodes(monkeypatch):
    calls = []
    real = cache._decode_chunk
    monkeypatch.setattr(cache, "_decode_chunk", lambda task: calls.append(len(task[0])) or real(task))
    return calls


def test_a_second_run_reads_the_cache_memory_mapped(folder, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    first = _load(folder, tmp_path / "c")
    assert sum(calls) == 140 and len(_caches(tmp_path / "c")) == 1
    second = _load(folder, tmp_path / "c")
    assert sum(calls) == 140  # nothing decoded again
    assert isinstance(second.x_train, numpy.memmap) and second.x_train.mode == "r"
    numpy.testing.assert_array_equal(first.x_train, second.x_train)
    numpy.testing.assert_array_equal(first.y_test, second.y_test)
    assert first.mean == second.mean and first.std == second.std


def test_a_changed_added_or_removed_file_or_setting_makes_a_new_cache(folder, tmp_path, monkeypatch):
    c = tmp_path / "c"
    base = _load(folder, c)
    seen = set(_caches(c))
    some = sorted((folder / "train" / "1").iterdir())
    st = os.stat(some[0])
    os.utime(some[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, newer

    def changed():
        new = set(_caches(c)) - seen
        seen.update(new)
        return len(new) == 1

    _load(folder, c)
    assert changed()
    (folder / "train" / "1" / "extra.png").write_bytes(some[1].read_bytes())
    assert len(_load(folder, c).y_train) == len(base.y_train) + 1 and changed()
    os.unlink(some[2])
    os.unlink(folder / "train" / "1" / "extra.png")
    assert len(_load(folder, c).y_train) == len(base.y_train) - 1 and changed()
    _load(folder, c, fit="crop")
    assert changed()
    _load(folder, c, image_size="20")
    assert changed()
    _load(folder, c, channels=3)
    assert changed()
    calls = _count_decodes(monkeypatch)
    _load(folder, c, image_size="20x20")  # the same setting spelt otherwise: the same cache
    assert not changed() and not calls


def test_no_cache_writes_nothing(folder, tmp_path):
    before = tree(folder)
    ds = _load(folder, tmp_path / "c", no_cache=True)
    assert not isinstance(ds.x_train, numpy.memmap) and not (tmp_path / "c").exists()
    assert tree(folder) == before


def test_an_interrupted_scan_leaves_no_cache(folder, tmp_path, monkeypatch):
    real, done = cache._decode_chunk, []

    def stop_after_one(task):
        if done:
            raise KeyboardInterrupt
        done.append(1)
        return real(task)

    monkeypatch.setattr(cache, "_decode_chunk", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        _load(folder, tmp_path / "c")
    assert _caches(tmp_path / "c") == []  # neither a cache nor its temporary
    monkeypatch.setattr(cache, "_decode_chunk", real)
    assert len(_load(folder, tmp_path / "c").y_train) == 60


def test_a_killed_scan_is_never_read_and_its_leftovers_go(folder, tmp_path):
    c = tmp_path / "c"
    script = ("import sys, time; sys.path[:0] = [sys.argv[1]]\n"
              "from gpucnn.data import cache\n"
              "real = cache._decode_chunk\n"
              "def slow(task):\n    time.sleep(0.3)\n    return real(task)\n"
              "cache._decode_chunk = slow\n"
              "from gpucnn.data.datasets import load_folder\n"
              "load_folder(sys.argv[2], cache_dir=sys.argv[3], workers=1, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, ROOT, str(folder), str(c)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not any(n.startswith(".tmp-") and os.listdir(c / "folders" / n) for n in _caches(c)):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _caches(c)
    assert len(left) == 1 and left[0].startswith(".tmp-")  # a partial build, not a cache
    ds = _load(folder, c)
    assert len(ds.y_train) == 60 and len(ds.y_test) == 80
    assert len(_caches(c)) == 1 and not _caches(c)[0].startswith(".tmp-")  # rebuilt; the leftover removed


def test_a_damaged_cache_is_rebuilt(folder, tmp_path):
    c = tmp_path / "c"
    good = numpy.array(_load(folder, c).x_train)  # a copy: the file is about to be cut under its mapping
    (name,) = _caches(c)
    x = c / "folders" / name / "train_x.npy"
    x.write_bytes(x.read_bytes()[:1000])  # cut short (a disk that filled up)
    again = _load(folder, c)
    numpy.testing.assert_array_equal(again.x_train, good)


def test_bad_files_are_remembered_with_the_cache(folder, tmp_path, capsys):
    (folder / "train" / "2" / "bad.png").write_bytes(b"not an image")
    _load(folder, tmp_path / "c", image_size="28", channels=1)  # no header pass: found while decoding
    capsys.readouterr()
    ds = _load(folder, tmp_path / "c", image_size="28", channels=1)
    assert "bad.png: not a readable image" in capsys.readouterr().err and len(ds.y_train) == 60


def test_channel_stats_streams_in_bounded_chunks():
    rng = numpy.random.default_rng(0)
    x = rng.integers(0, 256, (50, 3, 256, 256), dtype=numpy.uint8)  # 9.8M pixels: more than one chunk
    sizes = []

    class Spy(numpy.ndarray):
        def __getitem__(self, key):
            part = super().__getitem__(key)
            sizes.append(part.size)
            return part.view(numpy.ndarray)

    mean, std = channel_stats(x.view(Spy))
    assert max(sizes) <= 1 << 22 and len(sizes) > 1
    ref = x.astype(numpy.float64) / 255
    numpy.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-5)


def test_a_full_disk_is_an_error_before_decoding(folder, tmp_path, monkeypatch):
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    calls = _count_decodes(monkeypatch)
    with pytest.raises(cache.DatasetError, match=r"no room for the decoded cache .*No space left on device.*--no-cache"):
        _load(folder, tmp_path / "c")
    assert not calls and _caches(tmp_path / "c") == []


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_only_this_hosts_dead_builds_are_orphans(tmp_path):
    """A cache folder shared between machines (NFS): another host's build is never removed,
    even when its pid names no process here; this host's are, when their process is gone or
    the pid now belongs to a process started at another time."""
    import socket

    host, key, dead = socket.gethostname(), "0" * 32, _dead_pid()
    names = {"other host, its pid unknown here": f".tmp-{key}-node-b-{dead}-{dead}",
             "other host, no start time": f".tmp-{key}-{host}x-{dead}-0",
             "this host, alive": f".tmp-{key}-{cache._owner()}",
             "this host, dead": f".tmp-{key}-{host}-{dead}-0",
             "this host, pid reused": f".tmp-{key}-{host}-{os.getpid()}-{(cache._started(os.getpid()) or 0) + 1}",
             "a cache": key}
    for name in names.values():
        (tmp_path / name).mkdir()
    cache._remove_orphans(str(tmp_path))
    kept = {what for what, name in names.items() if (tmp_path / name).exists()}
    gone = {"this host, dead"} | ({"this host, pid reused"} if cache._started(os.getpid()) else set())
    assert kept == set(names) - gone


def test_a_build_is_named_by_host_pid_and_start(folder, tmp_path, monkeypatch):
    import socket

    seen = []
    real = cache._decode_all

    def spy(scan, shape, fit, workers, progress, out_dir):
        seen.append(os.path.basename(out_dir))
        return real(scan, shape, fit, workers, progress, out_dir)

    monkeypatch.setattr(cache, "_decode_all", spy)
    _load(folder, tmp_path / "c")
    assert len(seen) == 1 and seen[0].endswith(f"-{socket.gethostname()}-{os.getpid()}-{cache._started(os.getpid()) or 0}")
