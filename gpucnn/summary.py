"""`gpucnn summary`: one row per layer (state_dict prefix, type, output shape, parameters,
multiply-adds), then the net's totals and the memory a training step needs.

Multiply-adds are counted as torchinfo counts them, per image: a Conv2d does one per weight
per output position and one per bias per output position, (C_in*kh*kw + 1) * C_out * Ho * Wo;
a Linear (in + 1) * out. Layers without weights (ReLU, pooling, BatchNorm's normalisation,
residual adds) are memory-bound elementwise passes and count 0 (torchinfo gives BatchNorm
2*C a batch, under 0.01% of any net here).

Output shapes come from running the net (one image, eval mode, so no statistics move):
they are what the layers really produce. A ReLU right before a MaxPool runs after it
(sequential.run_order), so its row shows the pooled shape.

Activation memory is measured, not estimated: one real training step (gpucnn.train.TrainStep)
at the batch size on random data, then the bytes of every array the layers and the loss
still hold for backward (each buffer counted once, views of one buffer too). It is what
this backend keeps: on NumPy a conv may keep its im2col or banded rows instead of its input.
"""
import dataclasses
import inspect
import math

from gpucnn import backend, layer_hooks, models
from gpucnn.errors import GpucnnError
from gpucnn.layers import Conv2d, Linear
from gpucnn.sequential import walk


@dataclasses.dataclass
class Row:
    name: str  # state_dict prefix, e.g. "3.body.0"
    type: str
    output: tuple  # per image, (C, H, W) or (features,)
    parameters: int
    multiply_adds: int  # forward, per image


def default_input_shape(model_name):
    """The (C, H, W) a model is built for when no dataset says otherwise (its builder's default)."""
    return tuple(inspect.signature(models.MODELS[model_name]).parameters["in_shape"].default)


def parse_shape(text):
    """'C,H,W' -> (C, H, W) of positive ints, or a GpucnnError naming the flag."""
    parts = str(text).replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise GpucnnError(f"--input-shape: expected C,H,W (three positive integers, e.g. 3,32,32), got {text!r}")
    return shape


def multiply_adds(layer, output):
    """Forward multiply-adds of one leaf layer per image, given its per-image output shape."""
    if isinstance(layer, Conv2d):
        return sum(int(p.size) for p in layer.params.values()) * math.prod(output[1:])
    if isinstance(layer, Linear):
        return sum(int(p.size) for p in layer.params.values())
    return 0


def rows(model, in_shape):
    """One Row per leaf layer in state_dict order, from one eval-mode forward of one image."""
    shapes = {}

    def record(name, layer, method, call, args, kwargs):
        out = call(*args, **kwargs)
        if method == "forward":
            shapes[name] = tuple(int(d) for d in out.shape[1:])
        return out

    was_training = model.training
    model.eval()
    try:
        with layer_hooks.around(model, record):
            model.forward(backend.xp.zeros((1, *in_shape), dtype=model.dtype))
    finally:
        model.train(was_training)
        model.release()
    return [Row(name, type(layer).__name__, shapes[name], sum(int(p.size) for p in layer.params.values()),
                multiply_adds(layer, shapes[name]))
            for name, layer in layer_hooks.leaves(model)]


def total_multiply_adds(model, in_shape):
    """Forward multiply-adds of the whole net per image (gpucnn train's start line)."""
    return sum(r.multiply_adds for r in rows(model, in_shape))


def step_memory(model, optimizer, in_shape, classes, batch_size, seed=0):
    """(activation bytes, gradient bytes) held after one real training step at `batch_size`:
    the arrays layers and the loss keep for backward, and the parameters' gradients."""
    from gpucnn.train import TrainStep

    xp = backend.xp
    rng = xp.random.RandomState(seed)
    x = rng.standard_normal((batch_size, *in_shape)).astype(model.dtype)
    y = rng.randint(0, classes, size=batch_size).astype(xp.int64)
    step = TrainStep(model, optimizer)
    was_training = model.training
    model.train()
    try:
        step(x, y)
        backend.synchronize()
        kept = _unique_bytes(a for module in [*_modules(model), step.loss] for a in _kept_arrays(module))
        grads = _unique_bytes(g for _, layer in walk(model) for g in layer.grads.values())
    finally:
        model.train(was_training)
        step.release()
    return kept, grads


def _modules(model):
    """Every module under `model`, containers (a Residual keeps its sum) and leaves."""
    yield model
    for _, child in getattr(model, "children", lambda: [])():
        yield from _modules(child)


def _kept_arrays(module):
    """Arrays a module holds between forward and backward: what it saved, and array attributes
    (the loss keeps its probabilities as .probs)."""
    stack = list(getattr(module, "_saved", None) or ())
    stack += [v for k, v in vars(module).items() if k != "_saved"]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif hasattr(item, "nbytes") and hasattr(item, "shape"):
            yield item


def _unique_bytes(arrays):
    """Bytes of the distinct buffers behind `arrays` (a view counts as its base)."""
    seen = {}
    for a in arrays:
        while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes") and hasattr(a.base, "shape"):
            a = a.base
        seen[id(a)] = int(a.nbytes)
    return sum(seen.values())


def optimizer_bytes(optimizer):
    return _unique_bytes(a for bufs in optimizer.state.values() for a in bufs.values())


def parameter_bytes(model):
    return sum(int(p.value.nbytes) for p in model.parameters())


def build_net(args):
    """(model, name, input shape, classes, batch size, optimiser name) from --model and its
    shape flags, or from --checkpoint (its net, shape, classes, batch size and optimiser)."""
    from gpucnn.cli import TRAIN_DEFAULTS

    batch_size, optimizer = args.batch_size, args.optimizer
    if getattr(args, "checkpoint", None):
        if args.model or args.input_shape or args.classes:
            raise GpucnnError("--checkpoint brings its own net: give --model/--input-shape/--classes or --checkpoint")
        from gpucnn import validate
        from gpucnn.checkpoint import CheckpointError, check_model_state, load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        validate.check_saved_run(ckpt, args.checkpoint, for_resume=False)
        config = ckpt["meta"]["config"]
        name = config["model"]
        shape, channels, classes = validate.saved_model_io(ckpt)
        if shape is None or classes is None:
            raise CheckpointError(f"{args.checkpoint}: does not record its input shape and classes")
        model = _build(name, shape, classes, args.checkpoint, config.get("dtype"))
        check_model_state(ckpt["model_state"], model.state_dict(), args.checkpoint)
        batch_size = config["batch_size"] if batch_size is None else batch_size
        optimizer = optimizer or config["optimizer"]
    else:
        name = args.model or TRAIN_DEFAULTS["model"]
        shape = parse_shape(args.input_shape) if args.input_shape else default_input_shape(name)
        classes = 10 if args.classes is None else args.classes
        if classes < 1:
            raise GpucnnError(f"--classes must be at least 1, got {classes}")
        model = _build(name, shape, classes, "--model")
    batch_size = TRAIN_DEFAULTS["batch_size"] if batch_size is None else batch_size
    if batch_size < 1:
        raise GpucnnError(f"--batch-size must be at least 1, got {batch_size}")
    return model, name, shape, classes, batch_size, optimizer or TRAIN_DEFAULTS["optimizer"]


def _build(name, shape, classes, where, dtype=None):
    try:
        return models.build(name, shape, classes, dtype=dtype)
    except ValueError as e:
        raise GpucnnError(f"{where}: {e}") from None


def run(args):
    from gpucnn.optim import make_optimizer

    model, name, shape, classes, batch_size, opt_name = build_net(args)
    table = rows(model, shape)
    optimizer = make_optimizer(opt_name, model.parameters(), lr=1e-3)
    activations, grads = step_memory(model, optimizer, shape, classes, batch_size)
    print(f"gpucnn summary: {name}, input {'x'.join(map(str, shape))}, {classes} classes, backend {backend.name()}")
    print(format_table(table))
    params, macs = model.num_parameters(), sum(r.multiply_adds for r in table)
    p_bytes, o_bytes = parameter_bytes(model), optimizer_bytes(optimizer)
    print(f"parameters:              {params:,} ({_si(params)})")
    print(f"multiply-adds per image: {macs:,} ({_si(macs)}; forward; conv and linear weights and biases, as torchinfo)")
    print(f"parameter memory:        {_mib(p_bytes)} weights + {_mib(o_bytes)} {opt_name} state = {_mib(p_bytes + o_bytes)}")
    print(f"activation memory:       {_mib(activations)} at batch {batch_size}: "
          f"what the layers and the loss keep for backward in one training step on {backend.name()}, measured; "
          f"gradients add {_mib(grads)} while the step runs")
    return 0


def format_table(table):
    header = ("layer", "type", "output", "parameters", "multiply-adds")
    cells = [header] + [(r.name, r.type, "x".join(map(str, r.output)), f"{r.parameters:,}", f"{r.multiply_adds:,}")
                        for r in table]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) if i < 3 else c[i].rjust(widths[i]) for i in range(len(header)))
             for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _si(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _mib(n):
    return f"{n / 2 ** 20:.2f} MiB"
