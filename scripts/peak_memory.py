#!/usr/bin/env python
"""Peak memory of a command, split the way the kernel counts it: run it and sample
/proc/PID/status every 20 ms.

  RssAnon  private memory (arrays, Python objects): what a dataset larger than RAM must keep bounded
  RssFile  pages of mapped files (a memory-mapped cache, shared libraries): page cache the kernel
           reclaims under pressure, so it grows with what was read but is not held
  VmHWM    the kernel's own peak of the two together

Only the command's own process is sampled (not worker processes it starts).

    python scripts/peak_memory.py -- gpucnn train --dataset PATH ...
"""
import subprocess
import sys
import time

FIELDS = ("RssAnon", "RssFile", "VmHWM")


def sample(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in FIELDS}
    except (OSError, ValueError):
        return {}


def main(argv):
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit(__doc__)
    proc = subprocess.Popen(argv)
    peak = dict.fromkeys(FIELDS, 0)
    start = time.perf_counter()
    while proc.poll() is None:
        for k, v in sample(proc.pid).items():
            peak[k] = max(peak[k], v)
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    print(f"peak memory of the main process over {seconds:.0f}s: " +
          ", ".join(f"{k} {peak[k] / 1024:,.0f} MiB" for k in FIELDS) + f" (exit {proc.returncode})", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
