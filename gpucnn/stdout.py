"""Standard output that goes away: `gpucnn predict ... | head -1` closes the pipe, `> /dev/full`
fills the disk. Left to Python, either is a traceback, and then "Exception ignored" once more
when the interpreter flushes stdout on its way out.

`guarded_stdout` catches the failing write or flush, points file descriptor 1 at os.devnull (so
the flush at exit cannot fail again: Python's documented handling of SIGPIPE) and then either
stops the command (StdoutClosed, StdoutFailed) or, for a run whose real product is a file
(training and its checkpoint), drops the rest of the output and lets the work go on.
"""
import contextlib
import errno
import os
import sys

from gpucnn.errors import GpucnnError

BROKEN_PIPE_EXIT = 128 + 13  # what a shell reports for a program ended by SIGPIPE


class StdoutClosed(Exception):
    """Whoever read the output has gone (a closed pipe): nothing is left to tell anyone."""


class StdoutFailed(GpucnnError, OSError):
    """Standard output cannot be written (disk full, I/O error); the message says why."""


class _Guarded:
    """sys.stdout's stand-in: writes through, turning an OSError into the guard's outcome."""

    def __init__(self, stream, keep_going):
        self.stream, self.keep_going, self.error = stream, keep_going, None

    def write(self, text):
        if self.error is None:
            self._through(self.stream.write, text)
        return len(text)

    def flush(self):
        if self.error is None:
            self._through(self.stream.flush)

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self.stream, name)

    def _through(self, call, *args):
        try:
            call(*args)
        except OSError as e:
            self.error = e
            _point_at_devnull(self.stream)
            if self.keep_going:
                print(f"gpucnn: warning: cannot write to standard output ({_why(e)}); "
                      f"carrying on without it", file=sys.stderr)
                return
            if _is_broken_pipe(e):
                raise StdoutClosed() from None
            raise StdoutFailed(f"cannot write to standard output: {_why(e)}") from None


@contextlib.contextmanager
def guarded_stdout(keep_going=False):
    """Run the body with sys.stdout guarded; flushes it before leaving, inside the guard."""
    real = sys.stdout
    if real is None:  # started with descriptor 1 closed: print() already writes nowhere
        yield None
        return
    guarded = _Guarded(real, keep_going)
    sys.stdout = guarded
    try:
        yield guarded
    except BaseException:  # the command's own error is what to report; the flush only must not fail at exit
        with contextlib.suppress(StdoutClosed, StdoutFailed):
            if sys.stdout is guarded:
                guarded.flush()
        raise
    else:
        if sys.stdout is guarded:
            guarded.flush()
    finally:
        if sys.stdout is guarded:
            sys.stdout = real


def _is_broken_pipe(e):
    return isinstance(e, BrokenPipeError) or e.errno in (errno.EPIPE, errno.ECONNRESET)


def _why(e):
    return "the reading end of the pipe was closed" if _is_broken_pipe(e) else (e.strerror or str(e))


def _point_at_devnull(stream):
    """The stream's descriptor (stdout's) now writes to os.devnull, so the data still buffered
    in it, flushed at exit, goes nowhere instead of failing again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO (tests): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
