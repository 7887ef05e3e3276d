#!/usr/bin/env python3
"""Wall seconds from process start to a test accuracy: runs `gpucnn train`, echoes its
output, and timestamps each epoch's summary line as it appears. With --target, the run is
stopped at the first epoch whose test accuracy reaches it. The last line says what
happened, for the eye and for scripts/gpu_checks.sh:

    reached test_acc 0.9903 >= 0.99 at epoch 5, 21.4 s from start
    target 0.99 not reached: best test_acc 0.9871 (epoch 6), 24.0 s from start
    ran 1 epoch: test_acc 0.9781, 9.2 s from start

    PYTHONPATH=. python scripts/time_to_accuracy.py --target 0.99 --json out.json -- \\
        --model lenet --dataset mnist --data-dir .data/mnist --epochs 6 --no-progress --no-save

Exit status 0 when training ran to the end or to the target (and the target, if any, was
reached); otherwise 1, or training's own status.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

# The trainer's per-epoch summary: "epoch 3/6 - ... - test_acc 0.9871 - ..."
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*\btest_acc ([0-9.]+)")


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, help="stop at the first epoch with test accuracy >= this (0..1)")
    p.add_argument("--json", metavar="FILE", help="write the epochs and the outcome as JSON")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments for `gpucnn train` (after --)")
    args = p.parse_args()
    if args.train_args[:1] == ["--"]:
        args.train_args = args.train_args[1:]
    return args


def watch(cmd, target, start):
    """Run cmd; return (epochs seen, reached?, exit status, whether we stopped it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    epochs, reached = [], False
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        m = EPOCH_LINE.match(line)
        if m:
            epochs.append({"epoch": int(m.group(1)), "test_acc": float(m.group(3)),
                           "seconds_from_start": round(time.perf_counter() - start, 2)})
            if target is not None and epochs[-1]["test_acc"] >= target:
                reached = True
                proc.send_signal(signal.SIGTERM)  # enough: the figure is taken
                break
    proc.stdout.close()
    try:
        status = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = proc.wait()
    return epochs, reached, status


def main():
    args = parse()
    start = time.perf_counter()  # "from process start": the trainer's start-up counts
    cmd = [sys.executable, "-m", "gpucnn", "train", *args.train_args]
    epochs, reached, status = watch(cmd, args.target, start)
    best = max(epochs, key=lambda e: e["test_acc"]) if epochs else None
    if reached:
        e = epochs[-1]
        outcome = f"reached test_acc {e['test_acc']:.4f} >= {args.target:g} at epoch {e['epoch']}, {e['seconds_from_start']:.1f} s from start"
        ok = True
    elif not epochs:
        outcome = f"no epoch finished (training exited with status {status})"
        ok = False
    elif args.target is not None:
        outcome = (f"target {args.target:g} not reached: best test_acc {best['test_acc']:.4f} (epoch {best['epoch']}), "
                   f"{epochs[-1]['seconds_from_start']:.1f} s from start")
        ok = False
    else:
        e = epochs[-1]
        outcome = (f"ran {len(epochs)} epoch{'s' if len(epochs) > 1 else ''}: test_acc {e['test_acc']:.4f}, "
                   f"{e['seconds_from_start']:.1f} s from start")
        ok = status == 0
    if not reached and status != 0 and epochs:
        outcome += f" (training exited with status {status})"
        ok = False
    print(outcome, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd[1:], "target": args.target, "reached": reached, "exit_status": status,
                       "epochs": epochs, "outcome": outcome}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
