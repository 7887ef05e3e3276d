"""Data-parallel cost on this machine: gradient size, one all-reduce of it, and a training
step at 1 and 2 ranks (NumPy backend).

    PYTHONPATH=. python scripts/bench_dist.py [--models lenet vgg_bn] [--json out.json]

For each model, three runs of the same global batch, each in fresh processes because the
BLAS thread count is fixed when NumPy loads:
  1 process, 2 BLAS threads   what `gpucnn train` does on a 2-core machine
  1 process, 1 BLAS thread    the per-rank baseline
  2 ranks (mpirun), 1 thread each, each on half the batch, gradients all-reduced
The step is the trainer's own (gpucnn.train.TrainStep with gpucnn.distributed.GradientSync),
on fixed random images; the median of the timed steps after warm-up. The all-reduce is
timed alone on the flat gradient buffer, at 2 ranks, median of 30.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"lenet": (1, 28, 28), "vgg_bn": (3, 32, 32), "small": (1, 8, 8)}
BATCH = {"lenet": 128, "vgg_bn": 32, "small": 128}
STEPS = {"lenet": 40, "vgg_bn": 6, "small": 40}


def worker(model_name, batch, steps):
    """Runs in every rank: time `steps` training steps (and, at 2+ ranks, the all-reduce)."""
    import itertools

    import numpy

    from gpucnn import distributed

    comm = distributed.launch()
    from gpucnn import backend, init, models
    from gpucnn.data.batches import share
    from gpucnn.optim import make_optimizer
    from gpucnn.train import TrainStep

    init.seed(0)  # every rank the same weights (gpucnn train broadcasts rank 0's instead)
    model = models.build(model_name, SHAPES[model_name], 10)
    optimizer = make_optimizer("sgd", model.parameters(), lr=0.01, momentum=0.9, nesterov=False, weight_decay=None)
    sync = distributed.GradientSync(comm, model, backend.xp) if comm.size > 1 else None
    step = TrainStep(model, optimizer, sync=sync)
    rng = numpy.random.default_rng(comm.rank)
    lo, hi = share(batch, comm.rank, comm.size)
    x = rng.standard_normal((hi - lo, *SHAPES[model_name])).astype(numpy.float32)
    y = rng.integers(0, 10, size=hi - lo)
    batches = itertools.repeat((x, y), steps + 2)
    if sync:
        batches = sync.announce(batches, batch * (steps + 2), batch, 0, None)
    times = []
    with numpy.errstate(over="ignore", invalid="ignore"):
        for k, (xb, yb) in enumerate(batches):
            comm.barrier()
            t0 = time.perf_counter()
            step(xb, yb)
            times.append(time.perf_counter() - t0)
    times = sorted(times[2:])
    grad_bytes = sum(int(p.value.nbytes) for p in model.parameters())
    result = {"model": model_name, "batch": batch, "ranks": comm.size, "blas_threads": os.environ.get("OMP_NUM_THREADS"),
              "params": model.num_parameters(), "grad_bytes": grad_bytes, "steps": steps,
              "step_ms_median": round(1e3 * times[len(times) // 2], 3)}
    if sync:
        flat = sync.flats[0]
        ar = []
        for _ in range(30):
            comm.barrier()
            t0 = time.perf_counter()
            comm.allreduce(flat)
            ar.append(time.perf_counter() - t0)
        ar = sorted(comm.sum_host(ar) / comm.size)  # each repeat: the ranks' mean
        result["allreduce_ms_median"] = round(1e3 * ar[len(ar) // 2], 3)
        result["allreduce_bytes"] = int(flat.nbytes)
    if comm.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def run(cmd, threads):
    env = dict(os.environ, GPUCNN_BACKEND="numpy", PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet", "vgg_bn"], choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, help="global batch (default: 128 for lenet, 32 for vgg_bn)")
    p.add_argument("--steps", type=int, help="timed steps (default: 40 for lenet, 6 for vgg_bn)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")  # the mpich wheel's; else PATH's
    if not os.path.exists(mpirun):
        mpirun = shutil.which("mpirun") or mpirun
    me = [sys.executable, os.path.abspath(__file__)]
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    for name in args.models:
        batch, steps = args.batch or BATCH[name], args.steps or STEPS[name]
        w = ["--worker", name, str(batch), str(steps)]
        two_threads = run(me + w, 2)
        one_thread = run(me + w, 1)
        two_ranks = run([mpirun, "-n", "2"] + me + w, 1)
        rows.append({"model": name, "batch": batch, "params": one_thread["params"],
                     "grad_bytes": one_thread["grad_bytes"],
                     "allreduce_ms": two_ranks["allreduce_ms_median"],
                     "step_ms_1proc_2threads": two_threads["step_ms_median"],
                     "step_ms_1proc_1thread": one_thread["step_ms_median"],
                     "step_ms_2ranks_1thread": two_ranks["step_ms_median"]})
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print("| model | global batch | gradient | all-reduce, 2 ranks | step, 1 process 2 threads | "
          "1 process 1 thread | 2 ranks 1 thread each |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['params']:,} params, {r['grad_bytes'] / 1e6:.3f} MB | "
              f"{r['allreduce_ms']:.3f} ms | {r['step_ms_1proc_2threads']:.1f} ms | {r['step_ms_1proc_1thread']:.1f} ms | "
              f"{r['step_ms_2ranks_1thread']:.1f} ms |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
