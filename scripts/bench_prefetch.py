#!/usr/bin/env python
"""Does the training step wait for the loader? Gathering from a memory-mapped uint8 array
(the page cache warm, as a decoded cache is after its first epoch), with and without
prefetch, beside LeNet's training step on the live backend.

Prints, per augmentation: the loader alone (images/s, no step), then a run of training
steps without and with prefetch: images/s and the share of the wall time the loop spent
waiting in next() for its batch. With prefetch that share should be near zero whenever
the loader alone is faster than the step.

    PYTHONPATH=. python scripts/bench_prefetch.py --steps 100
    PYTHONPATH=. python scripts/bench_prefetch.py --mnist /work/shared/data/mnist
"""
import argparse
import os
import tempfile
import time

import numpy


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", help="directory of MNIST's IDX files (default: 60,000 random 28x28 images)")
    p.add_argument("--steps", type=int, default=100, help="training steps per timed run (default: 100)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each, interleaved; the median is shown")
    p.add_argument("--augment", nargs="+", default=["none", "crop-flip", "rrc-flip"])
    return p.parse_args(argv)


def images(mnist):
    if mnist:
        from gpucnn.data import idx

        x, y = idx.load_dir(mnist)[:2]
        return x, y
    rng = numpy.random.default_rng(0)
    return rng.integers(0, 256, size=(60000, 1, 28, 28), dtype=numpy.uint8), rng.integers(0, 10, size=60000)


def timed(batches, steps, step=None):
    """(images/s, seconds waiting in next() / wall seconds) over `steps` batches."""
    from gpucnn import backend

    waited, seen = 0.0, 0
    t0 = time.perf_counter()
    for k in range(steps):
        t = time.perf_counter()
        xb, yb = next(batches)
        waited += time.perf_counter() - t
        seen += len(yb)
        if step is not None:
            step(xb, yb)
    backend.synchronize()
    wall = time.perf_counter() - t0
    batches.close()
    return seen / wall, waited / wall


def main(argv=None):
    args = parse(argv)
    from gpucnn import backend, init, models
    from gpucnn.data.batches import iterate
    from gpucnn.data.stats import channel_stats
    from gpucnn.optim import make_optimizer
    from gpucnn.train import TrainStep

    x, y = images(args.mnist)
    with tempfile.TemporaryDirectory() as tmp:
        numpy.save(os.path.join(tmp, "x.npy"), x)
        mapped = numpy.load(os.path.join(tmp, "x.npy"), mmap_mode="r")
        mean, std = channel_stats(mapped)
        init.seed(0)
        model = models.build("lenet", mapped.shape[1:], 10)
        step = TrainStep(model, make_optimizer("sgd", model.parameters(), lr=0.01, momentum=0.9))
        print(f"backend {backend.name()}, lenet, batch {args.batch_size}, {args.steps} steps x {args.repeats} (median), "
              f"{len(mapped):,} memory-mapped {'MNIST' if args.mnist else 'random'} images")
        print(f"{'augment':<10} {'loader alone':>14} {'train, no prefetch':>22} {'train, prefetch':>22} {'speed-up':>9}")
        for epoch, kind in enumerate(args.augment):
            augment = False if kind == "none" else kind

            def batches(prefetch):
                return iterate(mapped, y, args.batch_size, shuffle=True, seed=0, epoch=epoch, mean=mean, std=std,
                               augment=augment, prefetch=prefetch)

            timed(batches(False), 3, step)  # warm-up: page cache, BLAS, allocations
            loader, _ = timed(batches(False), args.steps)
            runs = {False: [], True: []}
            for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both
                for prefetch in (False, True):
                    runs[prefetch].append(timed(batches(prefetch), args.steps, step))
            (plain, plain_wait), (ahead, ahead_wait) = (sorted(runs[p])[len(runs[p]) // 2] for p in (False, True))
            print(f"{kind:<10} {loader:>10,.0f} i/s {plain:>10,.0f} i/s ({plain_wait:>4.0%} wait) "
                  f"{ahead:>10,.0f} i/s ({ahead_wait:>4.0%} wait) {ahead / plain:>8.2f}x")


if __name__ == "__main__":
    main()
