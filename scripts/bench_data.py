#!/usr/bin/env python
"""Folder-dataset loading throughput: gpucnn's first scan and cached epoch against torchvision.

A folder of JPEGs is made at run time in a temporary directory from Fashion-MNIST (each
28x28 digit upscaled to 64x64 RGB, quality 90; PATH/train/<class>/ and PATH/test/<class>/),
then, in one run, with the same number of worker processes and the same resize (to
--size, bilinear, antialiased):

  (a) gpucnn's first scan: list, decode in workers, write the uint8 cache, mean/std pass
  (b) an epoch read from the cache: shuffled batches gathered from the memory-mapped cache
      and normalised to float32 on the NumPy backend (what the training loop consumes)
  (c) torchvision ImageFolder + DataLoader (Resize + ToTensor, shuffled, same batch size)
  and the LeNet training step's rate on the CPU (NumPy backend) on the same batch shape.

torchvision cannot share a process with every torch build; --tv-python names an
interpreter that has it (e.g. a venv with torch and torchvision); without one that imports
it, (c) is skipped with a message saying so.

    PYTHONPATH=. python scripts/bench_data.py --images 20000 --workers 2 --tv-python /work/venv-tv/bin/python
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy

FASHION = "/usr/share/datasets/fashion-mnist"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000, help="training JPEGs to make (default: 20000)")
    p.add_argument("--test-images", type=int, default=2000, help="test JPEGs to make (default: 2000)")
    p.add_argument("--side", type=int, default=64, help="side of the JPEGs made (default: 64)")
    p.add_argument("--size", type=int, default=32, help="side both loaders resize to (default: 32)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="decoding processes (default: cores)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--fashion", default=FASHION, help=f"folder with Fashion-MNIST's IDX files (default: {FASHION})")
    p.add_argument("--tv-python", default=sys.executable, help="interpreter for (c) (default: this one)")
    p.add_argument("--repeats", type=int, default=1, help="run (a), (b), (c) and the step this many times, interleaved, "
                   "and report the best of each: on a shared machine the load moves during a run (default: 1)")
    p.add_argument("--keep", metavar="DIR", help="make the folder in DIR and keep it (default: a temporary one)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--make-only", action="store_true", help="only make the folder (with --keep DIR: DIR/images) and stop")
    return p.parse_args(argv)


def fashion(directory, n, split):
    """(images uint8 (n, 28, 28), labels) from the IDX files."""
    from gpucnn.data import idx

    x = idx.read_images(idx.find(directory, idx.FILES[f"{split}_images"]))[:n, 0]
    y = idx.read_labels(idx.find(directory, idx.FILES[f"{split}_labels"]), 10)[:n]
    return x, y


def make_folder(root, args):
    from PIL import Image

    for split, n in (("train", args.images), ("test", args.test_images)):
        x, y = fashion(args.fashion, n, split)
        if len(x) < n:
            sys.exit(f"{args.fashion} holds only {len(x)} {split} images; ask for fewer")
        for c in range(10):
            os.makedirs(os.path.join(root, split, f"class{c}"), exist_ok=True)
        for i, (im, label) in enumerate(zip(x, y)):
            big = Image.fromarray(im).resize((args.side, args.side), Image.Resampling.BILINEAR).convert("RGB")
            big.save(os.path.join(root, split, f"class{label}", f"{i:06d}.jpg"), quality=90)


def gpucnn_scan(root, args, cache_dir):
    from gpucnn.data.datasets import load_folder

    t = time.perf_counter()
    data = load_folder(root, image_size=str(args.size), channels=3, workers=args.workers,
                       cache_dir=cache_dir, progress=False)
    return time.perf_counter() - t, data


def cached_epoch(args):
    from gpucnn.data import iterate
    from gpucnn.data.datasets import load_folder

    data = load_folder(args.root, image_size=str(args.size), channels=3, workers=args.workers,
                       cache_dir=args.cache_dir, progress=False)  # a second run: the cache, memory-mapped
    assert isinstance(data.x_train, numpy.memmap)
    t = time.perf_counter()
    n = 0
    for xb, _ in iterate(data.x_train, data.y_train, args.batch_size, shuffle=True, seed=0, epoch=0,
                         mean=data.mean, std=data.std):
        n += len(xb)
    return n / (time.perf_counter() - t)


TORCHVISION = r"""
import json, sys, time
try:
    import torch, torchvision
    from torchvision import transforms
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"})); sys.exit(0)
root, size, workers, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
ds = torchvision.datasets.ImageFolder(root, transform=transforms.Compose([
    transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
    transforms.ToTensor()]))
loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
t = time.perf_counter(); n = 0
for xb, yb in loader:
    n += len(xb)
print(json.dumps({"images": n, "seconds": time.perf_counter() - t, "torchvision": torchvision.__version__,
                  "torch": torch.__version__}))
"""


def torchvision_epoch(root, args):
    out = subprocess.run([args.tv_python, "-c", TORCHVISION, root, str(args.size), str(args.workers),
                          str(args.batch_size)], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def lenet_rate(args):
    from gpucnn import backend, models
    from gpucnn.optim import make_optimizer
    from gpucnn.train import make_step

    model = models.build("lenet", (3, args.size, args.size), 10)
    step = make_step(model, make_optimizer("sgd", model.parameters(), lr=0.01, momentum=0.9), use_graph=False)
    rng = numpy.random.default_rng(0)
    x = backend.to_device(rng.standard_normal((args.batch_size, 3, args.size, args.size)), numpy.float32)
    y = backend.to_device(rng.integers(0, 10, args.batch_size), numpy.int64)
    for _ in range(3):
        step(x, y)
    steps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3.0:
        step(x, y)
        steps += 1
    return steps * args.batch_size / (time.perf_counter() - t)


def main(argv=None):
    args = parse(argv)
    os.environ.setdefault("GPUCNN_BACKEND", "numpy")
    work = args.keep or tempfile.mkdtemp(prefix="bench_data_")
    args.root, args.cache_dir = os.path.join(work, "images"), os.path.join(work, "cache")
    try:
        if not os.path.isdir(args.root):
            t = time.perf_counter()
            make_folder(args.root, args)
            print(f"made {args.images + args.test_images:,} JPEGs ({args.side}x{args.side} RGB) in {args.root} "
                  f"in {time.perf_counter() - t:.1f}s")
        if args.make_only:
            return 0
        total = args.images + args.test_images
        runs, tv = [], {}
        for _ in range(args.repeats):
            shutil.rmtree(args.cache_dir, ignore_errors=True)  # (a) is a first scan every time
            scan_s, _ = gpucnn_scan(args.root, args, args.cache_dir)
            got = {"a_first_scan": total / scan_s, "b_cached_epoch": cached_epoch(args)}
            tv = torchvision_epoch(os.path.join(args.root, "train"), args)
            got["c_torchvision"] = tv["images"] / tv["seconds"] if "images" in tv else None
            got["lenet_step_cpu"] = lenet_rate(args)
            runs.append(got)
        rows = {k: max(r[k] for r in runs) if runs[0][k] is not None else None for k in runs[0]}
        print(f"\n{args.images:,} train + {args.test_images:,} test JPEGs {args.side}x{args.side} -> {args.size}x{args.size} RGB, "
              f"{args.workers} workers, batch {args.batch_size}, {len(os.sched_getaffinity(0))} cores, "
              f"best of {args.repeats} interleaved run(s)")
        print(f"(a) gpucnn first scan (decode + cache write):   {rows['a_first_scan']:>10,.0f} images/s")
        print(f"(b) gpucnn epoch from the cache (memory-mapped): {rows['b_cached_epoch']:>10,.0f} images/s")
        if rows["c_torchvision"] is None:
            print(f"(c) torchvision ImageFolder + DataLoader: skipped, torchvision not usable with {args.tv_python} "
                  f"({tv['error']}); pass --tv-python with an interpreter that has it")
        else:
            print(f"(c) torchvision {tv['torchvision']} ImageFolder + DataLoader: {rows['c_torchvision']:>7,.0f} images/s")
        print(f"    LeNet training step, NumPy backend (CPU):   {rows['lenet_step_cpu']:>10,.0f} images/s")
        if rows["c_torchvision"]:
            print(f"ratios: (a)/(c) {rows['a_first_scan'] / rows['c_torchvision']:.2f} (goal >= 1), "
                  f"(b)/(c) {rows['b_cached_epoch'] / rows['c_torchvision']:.1f} (goal >= 20), ", end="")
        print(f"(b)/LeNet step {rows['b_cached_epoch'] / rows['lenet_step_cpu']:.1f} (goal >= 5)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**rows, "runs": runs, "args": {k: v for k, v in vars(args).items()}, "torchvision": tv}, f, indent=1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
