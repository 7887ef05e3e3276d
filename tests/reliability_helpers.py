"""Shared by the reliability tests: the real command line in a subprocess, tiny datasets,
forged headers, and snapshots that prove a user's files were left byte for byte alone."""
import gzip
import json
import os
import stat
import struct
import subprocess
import sys
import zipfile

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpucnn(*args, cwd=None, timeout=180):
    """Run `python -m gpucnn ARGS` against this checkout; the CompletedProcess (text)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "GPUCNN_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-m", "gpucnn", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def signal_after_first_checkpoint(train_args, ckpt, signum, env=None):
    """Start `gpucnn train TRAIN_ARGS`, wait for its first checkpoint at `ckpt`, send it
    `signum`; returns (exit status, stdout, stderr)."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "gpucnn", "train", *map(str, train_args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not os.path.exists(ckpt) and time.time() < deadline:  # the first epoch's checkpoint
            time.sleep(0.05)
        assert os.path.exists(ckpt), "no checkpoint appeared"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out, err


def refused(result, *words, code=2):
    """The command failed with `code`, one clean `gpucnn: error:` line holding every word."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpucnn: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def snapshot(root):
    """{relative path: bytes} of every regular file under root (links and FIFOs by kind)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            p = os.path.join(d, name)
            mode = os.lstat(p).st_mode
            key = os.path.relpath(p, root)
            if stat.S_ISREG(mode):
                with open(p, "rb") as f:
                    out[key] = f.read()
            elif stat.S_ISLNK(mode):
                out[key] = ("link", os.readlink(p))
            else:
                out[key] = ("special", stat.S_IFMT(mode))
    return out


def tiny_arrays(n_train=8, n_test=4, hw=8, channels=1, n_classes=3, seed=0):
    rng = numpy.random.default_rng(seed)
    shape = (hw, hw) if channels == 1 else (channels, hw, hw)
    return dict(x_train=rng.random((n_train, *shape), dtype=numpy.float32),
                y_train=numpy.arange(n_train) % n_classes,
                x_test=rng.random((n_test, *shape), dtype=numpy.float32),
                y_test=numpy.arange(n_test) % n_classes)


def tiny_npz(path, **arrays):
    """A small valid dataset .npz (8 train / 4 test 8x8 grey images, 3 classes) with overrides."""
    kw = {k: arrays.pop(k) for k in ("n_train", "n_test", "hw", "channels", "n_classes", "seed") if k in arrays}
    content = {**tiny_arrays(**kw), **arrays}
    with open(path, "wb") as f:
        numpy.savez(f, **content)
    return str(path)


TRAIN = ("--model", "small", "--epochs", "1", "--batch-size", "4", "--no-progress")


def train_tiny(tmp_path, ckpt, *more, dataset=None):
    dataset = dataset or tiny_npz(tmp_path / "tiny.npz")
    r = gpucnn("train", "--dataset", dataset, *TRAIN, "--save", ckpt, *more)
    assert r.returncode == 0, r.stderr
    return dataset


def npz_entries(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return str(path)


def forge_shape(npy, new_shape):
    """The .npy bytes with the header's shape replaced (same header length, data unchanged)."""
    header_len = struct.unpack("<H", npy[8:10])[0]
    header = npy[10:10 + header_len].decode("latin1")
    start, end = header.index("'shape': (") + len("'shape': "), header.index(")") + 1
    new = header[:start] + repr(tuple(new_shape)) + header[end:]
    new = new.rstrip("\n").rstrip(" ")
    assert len(new) < header_len, "new shape too long for the header"
    new = new + " " * (header_len - 1 - len(new)) + "\n"
    return npy[:10] + new.encode("latin1") + npy[10 + header_len:]


def idx_bytes(magic, dims, body):
    return struct.pack(f">i{len(dims)}i", magic, *dims) + bytes(body)


def write_bytes(path, data, gz=False):
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return str(path)


def edit_checkpoint(path, edit, raw=None):
    """Rewrite the checkpoint's JSON entry: edit(tree) changes the parsed tree in place, or
    raw (a string) replaces the JSON text outright. The arrays stay as they are."""
    with numpy.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if raw is None:
        tree = json.loads(str(arrays["__checkpoint__"][()]))
        edit(tree)
        raw = json.dumps(tree)
    arrays["__checkpoint__"] = numpy.array(raw)
    with open(path, "wb") as f:
        numpy.savez(f, **arrays)
