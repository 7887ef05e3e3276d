"""keep_freed_memory: fresh NumPy temporaries stop faulting their pages in again."""
import platform
import subprocess
import sys

import pytest

from gpucnn.host_memory import user_configured_malloc

# Allocate, touch and free a 40 MB array (above glibc's largest mmap threshold) 20 times,
# then print the minor page faults that took. One cold first round is not counted.
_CHURN = """
import resource, sys, numpy
from gpucnn.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
numpy.ones(10_000_000, numpy.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    numpy.ones(10_000_000, numpy.float32)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(mode):
    env = {"PATH": "", "PYTHONPATH": ":".join(sys.path)}  # no MALLOC_* or GLIBC_TUNABLES from here
    out = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    applied, kept_faults = _churn("keep")
    _, default_faults = _churn("default")
    assert applied
    # Every default round faults its 40 MB in again: 9,766 small pages, or as few as 20
    # where NumPy's transparent huge pages (2 MB) are granted.
    assert default_faults >= 20 * 20
    assert kept_faults < default_faults / 50


def test_a_user_tuned_or_replaced_malloc_is_left_alone():
    assert not user_configured_malloc({})
    assert not user_configured_malloc({"GLIBC_TUNABLES": "glibc.rtld.nns=2", "LD_PRELOAD": "libfoo.so"})
    assert user_configured_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert user_configured_malloc({"MALLOC_ARENA_MAX_": "2"})
    assert user_configured_malloc({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
