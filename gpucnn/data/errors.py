"""The one exception every data problem raises."""


class DatasetError(ValueError):
    """A dataset cannot be loaded; the message names the file and the problem.

    A ValueError subclass so callers that already catch bad input keep working,
    and so the CLI can print the message alone, without a traceback.
    """


def missing(path, what, hint="pass --data-dir DIR pointing at it, or --download"):
    """The error for a file or directory that is not there, with what to do about it."""
    return DatasetError(f"{path}: {what} not found; {hint}")
