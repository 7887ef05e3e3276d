#!/usr/bin/env python
"""Training-step throughput: gpucnn against the identical PyTorch net, side by side.

One step = forward, softmax cross-entropy, backward, SGD-momentum update. Both frameworks
get the same batch, dtype and weights, a warm-up, a device synchronise around every timed
region, and the median of several repeats, the two frameworks' repeats interleaved. On the cupy backend PyTorch runs on CUDA with
cuDNN (benchmark mode, TF32 off unless --tf32); on NumPy it runs on the CPU.

Each case runs in a process of its own, so its peak memory is its own: nothing of an
earlier case (its model, graphs, cuBLAS handle and workspace, PyTorch net, cached pools)
is alive while it runs. This process only starts them, gathers their rows and prints the
table; it never touches the device. A case that fails or runs past --case-timeout is
reported as FAILED and makes the exit status 1.

    PYTHONPATH=. python scripts/bench.py                # all cases
    PYTHONPATH=. python scripts/bench.py --cases lenet-128 --json out.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "lenet-128": ("lenet", (1, 28, 28), 128),
    "lenet-1024": ("lenet", (1, 28, 28), 1024),
    "vgg_bn-128": ("vgg_bn", (3, 32, 32), 128),
    "vgg_bn-256": ("vgg_bn", (3, 32, 32), 256),
    "resnet20-128": ("resnet20", (3, 32, 32), 128),
    "resnet9-128": ("resnet9", (3, 32, 32), 128),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--backend", choices=["auto", "numpy", "cupy"], help="default: $GPUCNN_BACKEND or auto")
    p.add_argument("--tf32", action="store_true", help="TF32 GEMMs for both (default: off)")
    p.add_argument("--no-graph", action="store_true", help="gpucnn without CUDA graphs")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=0, help="steps per repeat (default: about 0.5 s of work)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    p.add_argument("--malloc-default", action="store_true",
                   help="leave glibc's malloc as it is (default: keep freed memory, as `gpucnn train` does; "
                        "both frameworks run in each case's one process, so both get the same allocator)")
    p.add_argument("--case-timeout", type=float, metavar="S", help="stop a case after S seconds (FAILED; default: none)")
    p.add_argument("--worker", metavar="CASE", choices=list(CASES), help=argparse.SUPPRESS)  # one case, in-process
    p.add_argument("--worker-out", metavar="FILE", help=argparse.SUPPRESS)  # where a worker writes its result
    return p.parse_args(argv)


# On the CPU, a pause before each timed repeat: BLAS and OpenMP worker threads spin for a
# while after their last call before they sleep, and on 2 cores the spinning threads of the
# framework timed just before steal the CPU from the one timed now (seen here: PyTorch CPU
# about 20% slower without the pause). Not on the GPU, whose clocks would drop while idle.
CPU_SETTLE_S = 0.5


class Runner:
    """One framework's training step on one case: warmed up, then timed in repeats."""

    def __init__(self, step, sync, batch, steps, warmup, settle_s):
        self.step, self.sync, self.batch, self.settle_s = step, sync, batch, settle_s
        for _ in range(warmup):
            step()
        sync()
        if steps == 0:  # about 0.5 s of work a repeat
            t = time.perf_counter()
            step()
            sync()
            steps = max(3, min(200, int(0.5 / max(time.perf_counter() - t, 1e-6))))
        self.steps, self.rates = steps, []

    def repeat(self):
        self.sync()
        time.sleep(self.settle_s)
        t = time.perf_counter()
        for _ in range(self.steps):
            self.step()
        self.sync()
        self.rates.append(self.batch * self.steps / (time.perf_counter() - t))

    def median(self):
        return statistics.median(self.rates)


def time_side_by_side(runners, repeats):
    """Median images/s of each runner, their repeats interleaved (A B A B ...): a slow spell
    of the machine (the 2-core VM has them) then hits both frameworks alike."""
    for _ in range(repeats):
        for r in runners:
            r.repeat()
    return [r.median() for r in runners]


def gpucnn_runner(name, shape, batch, args):
    import numpy

    from gpucnn import backend, init, models
    from gpucnn.optim import SGD
    from gpucnn.train import make_step

    xp = backend.xp
    init.seed(0)
    model = models.build(name, shape, 10)
    rng = numpy.random.default_rng(0)
    x = backend.to_device(rng.standard_normal((batch, *shape)), xp.float32)
    y = backend.to_device(rng.integers(0, 10, batch))
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = make_step(model, opt, use_graph=not args.no_graph)
    if backend.name() == "cupy":
        xp.get_default_memory_pool().free_all_blocks()
    settle = 0 if backend.name() == "cupy" else CPU_SETTLE_S
    runner = Runner(lambda: step(x, y), backend.synchronize, batch, args.steps, args.warmup, settle)

    def peak():
        # CuPy's pools keep every block they took until emptied: eager, their size at the end
        # is the high-water mark; with graphs, the larger of that and their size just before
        # the capture emptied the default pool of the eager warm-up step (GraphedStep.peak_bytes).
        if backend.name() != "cupy":
            return None
        if hasattr(step, "peak_bytes"):
            return step.peak_bytes()
        return xp.get_default_memory_pool().total_bytes()

    return model, runner, peak


def torch_runner(model, shape, batch, on_gpu, args):
    import numpy
    import torch

    from gpucnn.torch_twin import to_torch

    device = "cuda" if on_gpu else "cpu"
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    net = to_torch(model, device=device)
    rng = numpy.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, *shape)).astype("float32")).to(device)
    y = torch.from_numpy(rng.integers(0, 10, batch)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    runner = Runner(step, sync, batch, args.steps, args.warmup, 0 if on_gpu else CPU_SETTLE_S)
    return runner, (lambda: torch.cuda.max_memory_reserved()) if on_gpu else (lambda: None)


def measure(case, args):
    """Run one case here, in this process: {"device", "mode", "keeps_freed_memory", "row"}."""
    if args.backend:
        os.environ["GPUCNN_BACKEND"] = args.backend
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"
    from gpucnn import backend
    from gpucnn.host_memory import keep_freed_memory

    kept = False if args.malloc_default else keep_freed_memory()
    on_gpu = backend.name() == "cupy"
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: gpucnn figures only", file=sys.stderr)
    if torch is not None and on_gpu and not torch.cuda.is_available():
        print("PyTorch has no CUDA here: its figures would not be comparable, skipped", file=sys.stderr)
        torch = None
    if torch is not None and not on_gpu:
        torch.set_num_threads(os.cpu_count() or 1)

    name, shape, batch = CASES[case]
    model, our_runner, our_peak = gpucnn_runner(name, shape, batch, args)
    runners, their_peak = [our_runner], (lambda: None)
    if torch is not None:
        their_runner, their_peak = torch_runner(model, shape, batch, on_gpu, args)
        runners.append(their_runner)
    ours, theirs = (time_side_by_side(runners, args.repeats) + [None])[:2]
    our_peak, their_peak = our_peak(), their_peak()
    row = {
        "case": case, "pid": os.getpid(), "backend": backend.name(), "graph": on_gpu and not args.no_graph, "tf32": args.tf32,
        "gpucnn_img_s": round(ours), "torch_img_s": round(theirs) if theirs else None,
        "ratio": round(ours / theirs, 3) if theirs else None,
        "gpucnn_peak_mib": round(our_peak / 2**20, 1) if our_peak else None,
        "torch_peak_mib": round(their_peak / 2**20, 1) if their_peak else None,
    }
    row["mem_ratio"] = round(our_peak / their_peak, 3) if our_peak and their_peak else None
    where = "GPU" if on_gpu else f"CPU ({os.cpu_count()} cores)"
    if on_gpu:
        import cupy

        gpu = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        where = f"GPU ({gpu.decode() if isinstance(gpu, bytes) else gpu})"
    mode = ("CUDA graphs" if on_gpu and not args.no_graph else "eager") + (", TF32" if args.tf32 else ", fp32")
    return {"device": where, "mode": mode, "keeps_freed_memory": kept, "row": row}


def worker_flags(args):
    """The flags that make a worker measure as this run was asked to."""
    flags = ["--repeats", str(args.repeats), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.backend:
        flags += ["--backend", args.backend]
    for name in ("tf32", "no_graph", "no_torch", "malloc_default"):
        if getattr(args, name):
            flags.append("--" + name.replace("_", "-"))
    return flags


def run_isolated(case, args):
    """One case in a fresh process: its result, or {"row": {"case", "error"}} if it failed."""
    with tempfile.TemporaryDirectory(prefix="gpucnn-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, "--worker-out", out, *worker_flags(args)]
        try:
            proc = subprocess.run(cmd, timeout=args.case_timeout)  # its stderr and stdout pass through
            error = None if proc.returncode == 0 else f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {args.case_timeout:g} s"
        if error is None and not os.path.exists(out):
            error = "wrote no result"
        if error is not None:
            return {"row": {"case": case, "error": error}}
        with open(out) as f:
            return json.load(f)


def _fmt(v, spec):
    return format(v, spec) if v is not None else "-"


HEADER = (f"{'case':<12} {'gpucnn img/s':>13} {'torch img/s':>12} {'ratio':>6} {'gpucnn MiB':>11} "
          f"{'torch MiB':>10} {'mem ratio':>9}")


def table_line(row):
    if "error" in row:
        return f"{row['case']:<12} FAILED: {row['error']}"
    return (f"{row['case']:<12} {_fmt(row['gpucnn_img_s'], ',d'):>13} {_fmt(row['torch_img_s'], ',d'):>12} "
            f"{_fmt(row['ratio'], '.2f'):>6} {_fmt(row['gpucnn_peak_mib'], ',.1f'):>11} "
            f"{_fmt(row['torch_peak_mib'], ',.1f'):>10} {_fmt(row['mem_ratio'], '.2f'):>9}")


def main():
    args = parse()
    if args.worker:
        result = measure(args.worker, args)
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return 0
    rows, about = [], None
    for case in args.cases:
        result = run_isolated(case, args)
        if about is None and "device" in result:  # said once, by the first case that ran
            about = result
            print(f"gpucnn {result['row']['backend']} backend on {result['device']}, {result['mode']}; median of "
                  f"{args.repeats} repeats, interleaved; each case in its own process; host malloc "
                  f"{'keeps freed memory' if result['keeps_freed_memory'] else 'as the system has it'}")
        if not rows:
            print(HEADER)
        rows.append(result["row"])
        print(table_line(result["row"]), flush=True)
    failed = [r["case"] for r in rows if "error" in r]
    if args.json:
        about = about or {}
        with open(args.json, "w") as f:
            json.dump({"device": about.get("device"), "mode": about.get("mode"),
                       "keeps_freed_memory": about.get("keeps_freed_memory"), "isolated": True, "pid": os.getpid(),
                       "failed": failed, "rows": rows}, f, indent=2)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
