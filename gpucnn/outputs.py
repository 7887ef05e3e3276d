"""Where gpucnn may write, and how: the one guard every command that writes a file goes through.

A path may be written when nothing is there yet, or when what is there is a file of ours
(the caller's `is_ours` reads the file's own marker, never its name). A symlink is followed:
its target is replaced and the link is kept; a dangling one's target is created. Symlink
loops, devices, FIFOs, sockets and directories are refused, each named as what it is.
Writes are atomic: a hidden temporary beside the target, flushed, then renamed.
"""
import contextlib
import errno
import glob
import os
import stat
import tempfile

from gpucnn.errors import GpucnnError
from gpucnn.pathkind import kind, link_problem


class OutputError(GpucnnError, ValueError):
    """An output path that gpucnn refuses to write; the message names the path and why."""


class OutputWriteError(OutputError, OSError):
    """A write that failed (disk full, directory gone); an OSError too, as it was before."""


def check_output(path, *, what, is_ours):
    """The real path to write `what` (e.g. "checkpoint") to, or OutputError.

    `is_ours(real_path) -> bool` says whether an existing regular file is one gpucnn wrote
    of this kind. The parent directory is created if missing; it must be writable.
    """
    path = os.fspath(path)
    if not path:
        raise OutputError(f"empty path given for the {what}")
    if path.endswith(("/", os.sep)):
        raise OutputError(f"{path}: names a directory; give a file path for the {what}")
    mode = _mode(path, what)
    real = os.path.realpath(path)
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise OutputError(f"{path}: is a directory; give a file path for the {what}")
        if not stat.S_ISREG(mode):
            raise OutputError(f"{path}: is {kind(mode)}, not a regular file; refusing to write the {what} there")
        if not is_ours(real):
            raise OutputError(f"{path}: already exists and is not a gpucnn {what}; refusing to overwrite it (choose another path or move the file)")
    if mode is None and os.path.islink(path):  # name the link in what can still go wrong
        path = f"{path} ({link_problem(path)})"
    _writable_directory(os.path.dirname(real) or ".", path, what, probe_name=os.path.basename(real))
    return real


def check_output_directory(path, *, what, problem=lambda real: None):
    """The real path of a directory gpucnn will add `what` (e.g. "TensorBoard log") files to,
    or OutputError. Created if missing; a file, device or FIFO there is refused, and so is
    an existing directory for which `problem(real_path)` gives a reason (a phrase). Nothing
    in it is ever removed or replaced."""
    path = os.fspath(path)
    if not path:
        raise OutputError(f"empty path given for the {what}")
    real = os.path.realpath(path)
    if os.path.lexists(real) and not os.path.isdir(real):
        raise OutputError(f"{path}: is not a directory (a file, device or broken link); give a directory for the {what}")
    why = problem(real) if os.path.isdir(real) else None
    if why:
        raise OutputError(f"{path}: {why}")
    _writable_directory(real, path, what, probe_name="gpucnn")
    return real


def _writable_directory(directory, path, what, probe_name):
    """Create `directory` if missing and prove a file can be made in it (OutputError if not)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the directory {directory} for the {what}: {e.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the directory {directory} is not writable; cannot write the {what}")
    try:  # access() says yes to root everywhere, and to places like /proc: try the real thing
        fd, probe = tempfile.mkstemp(prefix=f".{probe_name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{path}: cannot create a file in {directory} ({e.strerror or e}); cannot write the {what}") from None


def _mode(path, what):
    """st_mode of what `path` leads to, None when nothing is there (a dangling symlink leads to
    nothing: its target is created). A symlink loop is refused: it is not "nothing there"."""
    try:
        return os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{path}: is {link_problem(path)}; refusing to write the {what} there") from None
        return None  # missing, or under a file or an unreadable folder: creating its directory says why


def check_distinct(**paths):
    """OutputError if two of the named paths (flag name -> path or None) are the same file."""
    seen = {}
    for flag, p in paths.items():
        if p is None:
            continue
        real = os.path.realpath(os.fspath(p))
        if real in seen:
            raise OutputError(f"{seen[real]} and {flag} name the same file ({p}); give them different paths")
        seen[real] = flag


def inside(path, folder):
    """Whether `path` is `folder` or lies under it, links resolved."""
    real, top = os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(folder))
    return os.path.commonpath([real, top]) == top


def check_outside(folder, **paths):
    """OutputError if one of the named paths (flag name -> path or None) lies inside the image
    folder `folder` (or None): gpucnn never writes into a dataset, where a new folder would be
    scanned as a class by the next run."""
    if folder is None:
        return
    for flag, p in paths.items():
        if p is not None and inside(p, folder):
            raise OutputError(f"{p}: {flag} would be written inside the image folder {folder} (--dataset), "
                              f"which gpucnn never writes into; give a path outside it")


def write_atomically(path, write, what="file"):
    """Call write(binary_file) on a temporary beside `path` (its symlink target), then rename it
    over the target. A crash or an error leaves what was there before; temporaries that an
    earlier killed write left for this same target are removed first. A failing write (disk
    full, directory gone or read-only) is an OutputError naming the path and the cause."""
    real = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(real)
    _remove_stale_temporaries(directory, name)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s usual mode
        os.replace(tmp, real)
    except BaseException as e:  # KeyboardInterrupt too: never leave the temporary file behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputWriteError(f"{path}: cannot write the {what}: {e.strerror or e}"
                              f" (what was there before is unchanged)") from None
        raise
    _fsync_directory(directory)  # makes the rename itself survive a power cut


def _remove_stale_temporaries(directory, name):
    for stale in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp")):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(stale).st_mode):
                os.unlink(stale)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; the rename is atomic anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
