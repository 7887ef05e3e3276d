"""What is at a path, in words a user recognises: a symlink loop or a dangling link is named
as such, never lumped with FIFOs, sockets and devices."""
import errno
import os
import stat


def link_problem(path):
    """'a symbolic link loop' or 'a dangling symbolic link to TARGET' when following `path`'s
    links never reaches anything (a loop or a missing target, in the name or a folder above it);
    None otherwise."""
    try:
        os.stat(path)
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (following its links never reaches a file)"
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            return None
    if os.path.islink(path):
        return f"a dangling symbolic link to {os.readlink(path)} (which does not exist)"
    return None


def kind(mode):
    """'a directory', 'a FIFO', ... for an st_mode that is not a regular file's."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "neither a file, a directory, a FIFO, a socket nor a device"
