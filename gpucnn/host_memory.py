"""Keep freed host memory for reuse instead of handing it back to the OS every step.

glibc's malloc serves large blocks with mmap and unmaps them on free, and trims the heap's
top once it holds more than a few hundred KiB free. A NumPy training step makes fresh
temporaries of the same sizes every step, so each step faulted their pages in again, each
4 KiB page zeroed by the kernel: about 360 page faults a LeNet step at batch 128 and 24,000
a vgg_bn step on the 2-core VM of docs/benchmarks.md, about 8% and 18% of the step's time.
Serving every block from the heap and never trimming it brings that to about none: the
trade jemalloc and tcmalloc (often preloaded for PyTorch on CPUs) make too.

The cost: memory the process freed is kept, not returned to the OS. A trainer's peak is
reached in its first step, so its resident size stays what it was at the peak.

A process-wide setting, so it is applied only where gpucnn owns the process: the
command line and the benchmark call `keep_freed_memory()`; a script of your own may.
"""
import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30  # effectively never trim


def user_configured_malloc(environ=os.environ):
    """True when the environment already tunes or replaces malloc; then it is left alone."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    preload = environ.get("LD_PRELOAD", "")
    return (
        "glibc.malloc." in tunables
        or any(k.startswith("MALLOC_") and k.endswith("_") for k in environ)
        or any(lib in preload for lib in ("jemalloc", "tcmalloc", "mimalloc"))
    )


def keep_freed_memory():
    """Tell glibc's malloc to serve big blocks from its heap and keep what is freed.

    Returns True if applied; False (doing nothing) off glibc, or where the environment
    already configures malloc (GLIBC_TUNABLES, MALLOC_*_ variables, a preloaded allocator).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_configured_malloc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success. With mmap off, a block the heap cannot hold still
    # falls back to mmap inside glibc, so no allocation fails for it.
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
