"""Errors a user can cause and fix; the command line prints their message, no traceback."""


class GpucnnError(Exception):
    """Base of the errors whose message is meant for the user."""


class BackendError(GpucnnError, RuntimeError):
    """The requested backend cannot be used; the message says why."""


def short(e):
    """An exception as one line, "Type: message", for a user-facing error that wraps it."""
    return f"{type(e).__name__}: {e}".splitlines()[0]
