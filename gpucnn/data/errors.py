"""The one exception every data problem raises."""
from gpucnn.errors import GpucnnError


class DatasetError(GpucnnError, ValueError):
    """A dataset cannot be loaded; the message names the file and the problem.

    A GpucnnError so the command line prints just the message; also a ValueError so
    callers that already catch bad input keep working.
    """


def missing(path, what, hint="pass --data-dir DIR (where the files are), or --download to fetch them"):
    """The error for a file or directory that is not there, with what to do about it."""
    return DatasetError(f"{path}: {what} not found; {hint}")
