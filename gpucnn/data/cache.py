"""Decode a folder dataset once, in worker processes, into one uint8 (N, C, H, W) .npy per split.

The cache lives in <cache-dir>/folders/<key>/ and is read memory-mapped, so a dataset larger
than memory trains with bounded memory. The key is a hash of every listed file (path, size,
modification time, class) and of the settings that change pixels (C, H, W, fit): a changed,
added or removed file, or another setting, gives another key and so a new cache.

Atomic: a cache is built in a hidden .tmp-<key>-<host>-<pid>-<start> folder beside it and
renamed into place only when complete (manifest last), so a killed scan never leaves a cache
that a later run reads. Its leftovers are removed by the next build on the same host once that
process is gone (no process <pid>, or one started at another time than <start>: the pid was
reused); a cache folder shared between machines (NFS) keeps other hosts' builds, whose
processes this host cannot see.
"""
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import sys

import numpy
from tqdm import tqdm

from . import folder, image
from .errors import DatasetError
from .stats import channel_stats

VERSION = 1  # of the decoding rules: bump when image.py changes pixels
CHUNK = 64   # images per task handed to a worker


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def worker_map(workers):
    """map(fn, items) -> iterator, in order: over a pool of `workers` processes, or here for 1."""
    if workers <= 1:
        yield map
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")  # fork: no re-import per worker
    with ctx.Pool(workers) as pool:
        yield lambda fn, items: pool.imap(fn, items, chunksize=max(1, min(256, len(items) // (8 * workers))))


def key(scan, shape, fit):
    """The cache key: files (path, size, mtime, class) and pixel settings, hashed."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": VERSION, "root": scan.root, "classes": scan.classes,
                         "shape": list(shape), "fit": fit}).encode())
    for split in sorted(scan.listed):
        h.update(split.encode())
        for path, label, size, mtime in scan.listed[split]:
            h.update(f"\0{path}\0{label}\0{size}\0{mtime}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def load(scan, shape, fit, *, cache_dir, workers, use_cache=True, progress=True):
    """{split: (x uint8 (N, C, H, W), y int64 (N,))}, mean, std: from the cache when one
    matches, else decoded (and, with use_cache, written). Files that fail to decode join
    scan.bad and leave every split."""
    if not use_cache:
        arrays = _decode_all(scan, shape, fit, workers, progress, out_dir=None)
        folder.drop({p for p, _ in scan.bad}, scan)
        mean, std = channel_stats(arrays["train"][0])
        return arrays, mean, std
    home = os.path.join(cache_dir, "folders")
    _check_outside(home, scan.root)
    final = os.path.join(home, key(scan, shape, fit))
    manifest = _manifest(final)
    if manifest is None:
        try:
            os.makedirs(home, exist_ok=True)
            _remove_orphans(home)
            tmp = os.path.join(home, f".tmp-{os.path.basename(final)}-{_owner()}")
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        except OSError as e:
            raise DatasetError(f"{home}: cannot write the decoded cache there ({e.strerror}); "
                               f"pass --cache-dir DIR, or --no-cache to decode into memory") from None
        try:
            arrays = _decode_all(scan, shape, fit, workers, progress, out_dir=tmp)
            mean, std = channel_stats(arrays["train"][0])
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump({"version": VERSION, "shape": list(shape), "fit": fit, "classes": scan.classes,
                           "splits": {s: len(y) for s, (_, y) in arrays.items()}, "bad": scan.bad,
                           "mean": mean.tolist(), "std": std.tolist()}, f)
                f.flush()
                os.fsync(f.fileno())
            del arrays
            if os.path.isdir(final) and _manifest(final) is None:  # a damaged cache: replaced
                _discard(final)
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same cache first: it is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = _manifest(final)
        if manifest is None:
            raise DatasetError(f"{final}: the decoded cache just written cannot be read back")
    elif progress:
        print(f"gpucnn: decoded images from the cache {final}", file=sys.stderr)
    known = {p for p, _ in scan.bad}
    scan.bad += [tuple(b) for b in manifest["bad"] if b[0] not in known]
    folder.drop({p for p, _ in scan.bad}, scan)
    arrays = {s: (numpy.load(os.path.join(final, f"{s}_x.npy"), mmap_mode="r"),
                  numpy.load(os.path.join(final, f"{s}_y.npy"))) for s in manifest["splits"]}
    return arrays, numpy.float32(manifest["mean"]), numpy.float32(manifest["std"])


def _manifest(final):
    """The manifest of a complete cache folder, or None (absent, partial or damaged)."""
    try:
        with open(os.path.join(final, "manifest.json")) as f:
            manifest = json.load(f)
        for s, n in manifest["splits"].items():
            x = numpy.load(os.path.join(final, f"{s}_x.npy"), mmap_mode="r")
            y = numpy.load(os.path.join(final, f"{s}_y.npy"), mmap_mode="r")
            if x.shape != (n, *manifest["shape"]) or x.dtype != numpy.uint8 or y.shape != (n,):
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _decode_all(scan, shape, fit, workers, progress, out_dir):
    arrays = {}
    with worker_map(workers) as pool_map:
        for split, files in scan.files.items():
            arrays[split] = _decode_split(scan, split, files, shape, fit, pool_map, progress, out_dir)
    return arrays


def _decode_split(scan, split, files, shape, fit, pool_map, progress, out_dir):
    n = len(files)
    path = out_dir and os.path.join(out_dir, f"{split}_x.npy")
    x = _new_array(path, (n, *shape)) if path else numpy.empty((n, *shape), numpy.uint8)
    y = numpy.array([label for _, label, *_ in files], numpy.int64)
    tasks = [([p for p, *_ in files[i:i + CHUNK]], shape, fit) for i in range(0, n, CHUNK)]
    bad = []
    with tqdm(total=n, unit="image", desc=f"decode {split}", disable=not progress, leave=False,
              dynamic_ncols=True, file=sys.stderr) as bar:
        for t, (block, failed) in enumerate(pool_map(_decode_chunk, tasks)):
            x[t * CHUNK:t * CHUNK + len(block)] = block
            bad += [(t * CHUNK + i, why) for i, why in failed]
            bar.update(len(block))
    if bad:
        scan.bad += [(files[i][0], why) for i, why in bad]
        keep = numpy.ones(n, bool)
        keep[[i for i, _ in bad]] = False
        x, y = _compact(x, keep, path), y[keep]
    if path:
        x.flush()
        numpy.save(os.path.join(out_dir, f"{split}_y.npy"), y)
    return x, y


def _compact(x, keep, path):
    """x without the rows of bad files: in memory, or a second file written a chunk at a time."""
    if path is None:
        return x[keep]
    rows = numpy.flatnonzero(keep)
    out = _new_array(path + ".kept", (len(rows), *x.shape[1:]))
    for i in range(0, len(rows), 4096):
        out[i:i + 4096] = x[rows[i:i + 4096]]
    out.flush()
    del x
    os.replace(path + ".kept", path)
    return numpy.load(path, mmap_mode="r+")


def _new_array(path, shape):
    """A uint8 .npy of `shape`, memory-mapped for writing, its blocks reserved on disk first: a
    full disk is an error here, not a SIGBUS when a mapped page is written later."""
    x = numpy.lib.format.open_memmap(path, "w+", numpy.uint8, shape)
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: not reserved
        return x
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise DatasetError(f"{os.path.dirname(os.path.dirname(path))}: no room for the decoded cache "
                           f"({x.nbytes / 2**20:,.0f} MiB: {e.strerror}); pass --cache-dir DIR elsewhere, "
                           f"or --no-cache to decode into memory") from None
    return x


def _decode_chunk(task):
    paths, shape, fit = task
    block = numpy.zeros((len(paths), *shape), numpy.uint8)
    failed = []
    for i, p in enumerate(paths):
        try:
            block[i] = image.read_bytes(p, shape, fit)
        except image.UnreadableImage as e:
            failed.append((i, str(e)))
    return block, failed


def _check_outside(home, root):
    from gpucnn.outputs import inside

    if inside(home, root):
        raise DatasetError(f"{home}: the decoded cache would be written inside the image folder {root}, "
                           f"which gpucnn never writes into; pass --cache-dir elsewhere, or --no-cache")


def _owner(pid=None):
    """<host>-<pid>-<start> of this process: who builds a .tmp- folder, for _remove_orphans."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}-{pid}-{_started(pid) or 0}"


def _started(pid):
    """When process `pid` started (clock ticks since boot, Linux), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _remove_orphans(home):
    """.tmp-* folders of this host's builds whose process is gone (killed scans)."""
    host = socket.gethostname()
    for name in os.listdir(home):
        head, _, tail = name.rpartition(f"-{host}-")
        if not head.startswith(".tmp-") or tail.count("-") != 1:
            continue  # another host's (or another version's) build: its process is not ours to see
        try:
            pid, start = map(int, tail.split("-"))
            os.kill(pid, 0)
            alive = start == 0 or _started(pid) in (None, start)  # else the pid was reused
        except ProcessLookupError:
            alive = False
        except (ValueError, PermissionError, OSError):
            continue
        if not alive:
            shutil.rmtree(os.path.join(home, name), ignore_errors=True)


def _discard(path):
    """Remove a folder by first renaming it aside, so no reader ever sees it half removed."""
    aside = os.path.join(os.path.dirname(path), f".tmp-discard-{_owner()}")
    try:
        os.rename(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
