"""`gpucnn profile`: where a training step's time goes, layer by layer, on the live backend.

The step is the loop's own (gpucnn.train.TrainStep, eager: a CUDA graph cannot be timed
inside), on random data of the net's input shape. Every leaf layer's forward and backward
is wrapped (gpucnn.layer_hooks) with a clock: CUDA events on CuPy, so device time, not
launch time; time.perf_counter on NumPy. Each figure is the mean over --steps steps after
two warm-up steps.

Achieved GFLOP/s counts 2 FLOPs a multiply-add (gpucnn.summary's count); a backward
does two products the size of the forward's (dX and dW), 4 FLOPs a multiply-add, or 2 for
a first layer that skips dX (the trainer has no use for the input's gradient).

The step is also timed without the wrappers, so the cost of measuring is there to see:
the rest of the instrumented step (loss, optimiser, residual adds, the calls between
layers) is its time minus the layers'.
"""
import dataclasses
import time

from gpucnn import backend, layer_hooks, summary

WARMUP_STEPS = 2


@dataclasses.dataclass
class LayerTime:
    name: str
    type: str
    forward_s: float  # mean seconds a step
    backward_s: float
    forward_flops: int  # per step, at the batch size
    backward_flops: int


@dataclasses.dataclass
class Profile:
    layers: list
    step_s: float  # instrumented step, mean seconds
    plain_step_s: float  # the same step without the wrappers
    steps: int
    batch_size: int

    @property
    def layers_s(self):
        return sum(t.forward_s + t.backward_s for t in self.layers)


class HostClock:
    """perf_counter marks; exact once taken."""

    def mark(self):
        return time.perf_counter()

    def seconds(self, start, end):
        return end - start


class DeviceClock:
    """CUDA events recorded on the current stream; read after the step synchronises."""

    def __init__(self, cupy):
        self.cupy = cupy

    def mark(self):
        event = self.cupy.cuda.Event()
        event.record()
        return event

    def seconds(self, start, end):
        return self.cupy.cuda.get_elapsed_time(start, end) / 1000.0


def clock():
    return DeviceClock(backend.xp) if backend.name() == "cupy" else HostClock()


def profile(model, optimizer, in_shape, classes, batch_size, steps, seed=0):
    """Time `steps` training steps without and with per-layer clocks; a Profile of the means."""
    from gpucnn.train import make_step

    xp = backend.xp
    rng = xp.random.RandomState(seed)
    x = rng.standard_normal((batch_size, *in_shape)).astype(model.dtype)
    y = rng.randint(0, classes, size=batch_size).astype(xp.int64)
    step = make_step(model, optimizer, use_graph=False)
    clk = clock()
    model.train()
    for _ in range(WARMUP_STEPS):
        step(x, y)
    backend.synchronize()

    def timed_step():
        start = clk.mark()
        step(x, y)
        end = clk.mark()
        backend.synchronize()
        return clk.seconds(start, end)

    marks = []  # (name, method, skipped dX, start, end) of the current step

    def on_call(name, layer, method, call, args, kwargs):
        start = clk.mark()
        out = call(*args, **kwargs)
        marks.append((name, method, kwargs.get("input_grad", True) is False, start, clk.mark()))
        return out

    spent = {(name, m): 0.0 for name, _ in layer_hooks.leaves(model) for m in ("forward", "backward")}
    skipped = set()
    plain = total = 0.0
    for _ in range(steps):  # interleaved, so a busy machine slows both alike
        plain += timed_step()
        marks.clear()
        with layer_hooks.around(model, on_call):
            total += timed_step()
        for name, method, skip, start, end in marks:
            spent[name, method] += clk.seconds(start, end)
            if skip:
                skipped.add(name)
    macs = {r.name: r.multiply_adds * batch_size for r in summary.rows(model, in_shape)}
    layers = [LayerTime(name, type(layer).__name__, spent[name, "forward"] / steps, spent[name, "backward"] / steps,
                        2 * macs[name], (2 if name in skipped else 4) * macs[name])
              for name, layer in layer_hooks.leaves(model)]
    step.release()
    return Profile(layers, total / steps, plain / steps, steps, batch_size)


def format_profile(p):
    header = ("layer", "type", "forward ms", "backward ms", "total ms", "share", "fwd GFLOP/s", "bwd GFLOP/s")

    def line(name, kind, fwd, bwd, flops_f, flops_b):
        return (name, kind, f"{fwd * 1e3:.3f}", f"{bwd * 1e3:.3f}", f"{(fwd + bwd) * 1e3:.3f}",
                f"{(fwd + bwd) / p.step_s:.1%}", _rate(flops_f, fwd), _rate(flops_b, bwd))

    cells = [header] + [line(t.name, t.type, t.forward_s, t.backward_s, t.forward_flops, t.backward_flops)
                        for t in p.layers]
    cells.append(line("layers", "(sum)", sum(t.forward_s for t in p.layers), sum(t.backward_s for t in p.layers),
                      sum(t.forward_flops for t in p.layers), sum(t.backward_flops for t in p.layers)))
    rest = p.step_s - p.layers_s
    cells.append(("rest", "loss, optimiser, adds", "", "", f"{rest * 1e3:.3f}", f"{rest / p.step_s:.1%}", "", ""))
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) if i < 2 else c[i].rjust(widths[i]) for i in range(len(header))).rstrip()
             for c in cells]
    rule = "-" * max(map(len, lines))
    lines.insert(1, rule)
    lines.insert(len(lines) - 2, rule)
    overhead = p.step_s - p.plain_step_s
    lines.append(f"step: {p.step_s * 1e3:.3f} ms instrumented, {p.plain_step_s * 1e3:.3f} ms uninstrumented "
                 f"(measuring costs {overhead * 1e3:+.3f} ms, {overhead / p.plain_step_s:+.1%}); "
                 f"mean of {p.steps} steps at batch {p.batch_size}, {p.batch_size / p.plain_step_s:,.0f} img/s uninstrumented")
    return "\n".join(lines)


def _rate(flops, seconds):
    return f"{flops / seconds / 1e9:.2f}" if flops and seconds > 0 else "-"


def run(args):
    from gpucnn.errors import GpucnnError
    from gpucnn.optim import make_optimizer

    if args.steps < 1:
        raise GpucnnError(f"--steps must be at least 1, got {args.steps}")
    model, name, shape, classes, batch_size, opt_name = summary.build_net(args)
    # lr 0: the weights stay as initialised, so every step times the same work
    optimizer = make_optimizer(opt_name, model.parameters(), lr=0.0)
    timer = "CUDA events (device time)" if backend.name() == "cupy" else "perf_counter"
    print(f"gpucnn profile: {name}, input {'x'.join(map(str, shape))}, {classes} classes, batch {batch_size}, "
          f"{opt_name}, backend {backend.name()}, timed with {timer}")
    print(format_profile(profile(model, optimizer, shape, classes, batch_size, args.steps)))
    return 0
