"""`gpucnn export`: a trained net for runtimes that have never heard of gpucnn.

.onnx         the eval-mode net as a standard ONNX graph (opset OPSET): Conv, BatchNormalization
              (or, with fold_bn, folded into the Conv before it), Relu, MaxPool, AveragePool /
              GlobalAveragePool, Flatten, Gemm, Add, Mul (resnet9's output scale), and Softmax with softmax=True. Input "input"
              (batch, C, H, W), the batch dimension dynamic; output "logits" (or "probabilities"). Weights are initializers named by
              their state_dict keys. Built with the `onnx` package and checked by onnx.checker.
.safetensors  the state_dict under PyTorch's keys (safetensors' NumPy API) and, in its
              metadata, what rebuilds and feeds the net: model name, input shape, classes,
              mean/std.

Layers become ONNX nodes through CONVERTERS, a registry keyed by layer type: a new layer
plugs in with one `@converter(LayerType)` function `(graph, layer, x, where) -> output name`.
The export traces one example batch through the net alongside, so a converter that
needs a shape reads it with `graph.shape(name)`.
"""
import json

import numpy

import gpucnn
from gpucnn import backend
from gpucnn.errors import GpucnnError
from gpucnn.layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, MaxPool2d, ReLU,
                           Residual, Scale, Softmax)
from gpucnn.init_from import safetensors_header
from gpucnn.install_hint import require
from gpucnn.outputs import check_output, write_atomically
from gpucnn.sequential import Sequential

OPSET = 17
IR_VERSION = 8  # the ONNX IR version that introduced opset 17, so older runtimes read the file
PRODUCER = "gpucnn"
PRODUCER_NAME_FIELD = 2  # ModelProto.producer_name; 1 is ir_version, 7 the graph
ONNX_HEAD = 4096  # what is read of an existing -o FILE.onnx to tell whether gpucnn wrote it
INPUT, LOGITS, PROBABILITIES = "input", "logits", "probabilities"
FORMATS = (".onnx", ".safetensors")


class ExportError(GpucnnError, ValueError):
    """The net or the output path cannot be exported; the message names what and why."""


def _onnx():
    return require("onnx", "onnx", "exporting to ONNX needs the onnx package", ExportError)


def _safetensors_numpy():
    return require("safetensors.numpy", "safetensors", "exporting to .safetensors needs the safetensors package",
                   ExportError)


# --- the converter registry ---------------------------------------------------------
CONVERTERS = {}


def converter(layer_type):
    """Register fn(graph, layer, x, where) -> output name as the ONNX form of layer_type."""
    def register(fn):
        CONVERTERS[layer_type] = fn
        return fn
    return register


def converter_for(layer, where):
    for cls in type(layer).__mro__:
        if cls in CONVERTERS:
            return CONVERTERS[cls]
    supported = ", ".join(sorted(t.__name__ for t in CONVERTERS))
    raise ExportError(f"cannot export layer {where or '(top)'} ({type(layer).__name__}): no ONNX converter "
                      f"for {type(layer).__name__}; supported layers: {supported}")


class Graph:
    """The ONNX graph being built, and the example batch traced through it."""

    def __init__(self, onnx, dtype):
        self.onnx, self.dtype = onnx, numpy.dtype(dtype)
        self.nodes, self.initializers, self._samples, self._names = [], [], {}, set()

    def trace(self, name, example):
        """Declare graph input `name`, traced with the `example` batch (on the live backend)."""
        self._names.add(name)
        self._samples[name] = example

    def sample(self, name):
        """The traced example value of `name` (batch of 1)."""
        return self._samples[name]

    def shape(self, name):
        """The traced shape of value `name` (batch dimension 1)."""
        return tuple(self._samples[name].shape)

    def weight(self, array, name):
        """An initializer holding `array` (a layer's parameter or buffer), under `name`."""
        a = _c_order(backend.to_numpy(array))
        self.initializers.append(self.onnx.numpy_helper.from_array(a, self._unique(name)))
        return self.initializers[-1].name

    def node(self, op, inputs, where, **attrs):
        """Append one node; return its output's name."""
        out = self._unique(f"{where}/{op}" if where else op)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def convert(self, module, x, where=""):
        """Add `module` applied to value x; return the output's name."""
        y = converter_for(module, where)(self, module, x, where)
        self._samples[y] = module.forward(self._samples[x])
        return y

    def _unique(self, name):
        base, n = name, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name


def _c_order(a):
    """`a` in C order, its shape kept: numpy.ascontiguousarray makes a 0-d array 1-d, which
    turned BatchNorm's num_batches_tracked () into (1,) in every export."""
    return numpy.asarray(a, order="C")


def _key(where, name):
    return f"{where}.{name}" if where else name


def _pads(padding):
    ph, pw = padding
    return [ph, pw, ph, pw]  # ONNX: begins of every axis, then ends


@converter(Sequential)
def _sequential(g, seq, x, where):
    for i, layer in enumerate(seq.layers):  # written order: run_order's swap gives equal values
        x = g.convert(layer, x, _key(where, str(i)))
    return x


@converter(Conv2d)
def _conv(g, conv, x, where):
    inputs = [x, g.weight(conv.params["weight"], _key(where, "weight"))]
    if "bias" in conv.params:
        inputs.append(g.weight(conv.params["bias"], _key(where, "bias")))
    return g.node("Conv", inputs, where, kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                  pads=_pads(conv.padding), dilations=[1, 1], group=1)


@converter(Linear)
def _linear(g, linear, x, where):
    inputs = [x, g.weight(linear.params["weight"], _key(where, "weight"))]
    if "bias" in linear.params:
        inputs.append(g.weight(linear.params["bias"], _key(where, "bias")))
    return g.node("Gemm", inputs, where, transB=1)


@converter(BatchNorm2d)
def _batchnorm(g, bn, x, where):
    """Eval mode: the running statistics, as BatchNormalization's inference form."""
    gamma, beta = bn.gamma_beta()  # constants 1 and 0 with affine=False
    inputs = [x] + [g.weight(a, _key(where, n)) for a, n in
                    ((gamma, "weight"), (beta, "bias"), (bn.buffers["running_mean"], "running_mean"),
                     (bn.buffers["running_var"], "running_var"))]
    return g.node("BatchNormalization", inputs, where, epsilon=bn.eps)


@converter(ReLU)
def _relu(g, layer, x, where):
    return g.node("Relu", [x], where)


@converter(MaxPool2d)
def _maxpool(g, pool, x, where):
    return g.node("MaxPool", [x], where, kernel_shape=list(pool.kernel_size), strides=list(pool.stride),
                  pads=[0, 0, 0, 0], ceil_mode=0)


@converter(Flatten)
def _flatten(g, layer, x, where):
    return g.node("Flatten", [x], where, axis=1)


@converter(Softmax)
def _softmax(g, layer, x, where):
    return g.node("Softmax", [x], where, axis=1)


@converter(Residual)
def _residual(g, res, x, where):
    """y = body(x) + shortcut(x), the shortcut the identity when None."""
    a = g.convert(res.body, x, _key(where, "body"))
    b = x if res.shortcut is None else g.convert(res.shortcut, x, _key(where, "shortcut"))
    return g.node("Add", [a, b], where)


@converter(AvgPool2d)
def _avgpool(g, pool, x, where):
    return g.node("AveragePool", [x], where, kernel_shape=list(pool.kernel_size), strides=list(pool.stride),
                  pads=_pads(pool.padding), count_include_pad=1, ceil_mode=0)


@converter(GlobalAvgPool2d)
def _global_avgpool(g, pool, x, where):
    return g.node("GlobalAveragePool", [x], where)  # (N, C, 1, 1), as gpucnn's GlobalAvgPool2d


@converter(Dropout)
def _dropout(g, layer, x, where):
    return x  # the identity in eval mode


@converter(Scale)
def _scale(g, layer, x, where):
    return g.node("Mul", [x, g.weight(numpy.array(layer.scale, dtype=g.dtype), _key(where, "scale"))], where)


# --- folding BatchNorm into the convolution before it ------------------------------------------
def fold_batchnorm(module):
    """An eval-mode copy of `module` in which every Conv2d directly followed by a BatchNorm2d
    is one Conv2d: with s = gamma / sqrt(running_var + eps),
        W' = W * s (per output channel),   b' = (b - running_mean) * s + beta
    (computed in float64). Other layers are shared with `module`, not copied."""
    if isinstance(module, Sequential):
        layers, out, i = [fold_batchnorm(layer) for layer in module.layers], [], 0
        while i < len(layers):
            if i + 1 < len(layers) and type(layers[i]) is Conv2d and type(layers[i + 1]) is BatchNorm2d:
                out.append(_folded(layers[i], layers[i + 1]))
                i += 2
            else:
                out.append(layers[i])
                i += 1
        return Sequential(*out).eval()
    if isinstance(module, Residual):
        shortcut = None if module.shortcut is None else fold_batchnorm(module.shortcut)
        return Residual(fold_batchnorm(module.body), shortcut).eval()
    return module


def _folded(conv, bn):
    f64 = lambda a: backend.to_numpy(a).astype(numpy.float64)  # noqa: E731
    gamma, beta = bn.gamma_beta()
    s = f64(gamma) / numpy.sqrt(f64(bn.buffers["running_var"]) + bn.eps)
    w = f64(conv.params["weight"]) * s[:, None, None, None]
    b = f64(conv.params["bias"]) if "bias" in conv.params else 0.0
    b = (b - f64(bn.buffers["running_mean"])) * s + f64(beta)
    fused = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                   bias=True, dtype=conv.dtype)
    fused.params["weight"][...] = backend.to_device(w, conv.dtype)
    fused.params["bias"][...] = backend.to_device(b, conv.dtype)
    return fused.eval()


# --- ONNX -------------------------------------------------------------------------------
def to_onnx(model, input_shape, *, softmax=False, fold_bn=False, metadata=None):
    """The eval-mode `model` (a Sequential of supported layers) as a checked onnx.ModelProto
    taking (batch, *input_shape); fold_bn merges each Conv2d -> BatchNorm2d pair into one Conv
    (fold_batchnorm); `metadata` (str -> str) goes into its metadata_props."""
    onnx = _onnx()
    from onnx import helper

    was_training = model.training
    model.eval()
    try:
        net = fold_batchnorm(model) if fold_bn else model
        dtype = getattr(net, "dtype", None) or numpy.dtype(numpy.float32)  # Sequential.dtype, or a layer's
        g = Graph(onnx, dtype)
        g.trace(INPUT, backend.xp.zeros((1, *input_shape), dtype=dtype))
        y = g.convert(net, INPUT)
        out_shape = g.shape(y)
        if softmax:
            y = g.node("Softmax", [y], "", axis=1)
        out_name = PROBABILITIES if softmax else LOGITS
    finally:
        model.train(was_training)
    if y == INPUT:  # an empty net
        g.nodes.append(helper.make_node("Identity", [y], [out_name], name=out_name))
    else:
        for node in g.nodes:
            node.output[:] = [out_name if o == y else o for o in node.output]
            node.input[:] = [out_name if i == y else i for i in node.input]
    elem = helper.np_dtype_to_tensor_dtype(g.dtype)
    graph = helper.make_graph(
        g.nodes, "gpucnn",
        [helper.make_tensor_value_info(INPUT, elem, ["batch", *input_shape])],
        [helper.make_tensor_value_info(out_name, elem, ["batch", *out_shape[1:]])],
        initializer=g.initializers,
    )
    proto = helper.make_model(graph, producer_name=PRODUCER, producer_version=gpucnn.__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    proto.doc_string = "exported by gpucnn: eval-mode network; input NCHW, normalised with the metadata's mean/std"
    for k, v in (metadata or {}).items():
        proto.metadata_props.add(key=k, value=v)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:  # a converter bug, not the user's: say which check failed
        raise ExportError(f"the ONNX graph failed onnx.checker: {str(e).splitlines()[0]}") from None
    return proto


def is_our_onnx(path):
    """Whether `path` is an ONNX model gpucnn exported: its producer_name says so. Reads the
    first ONNX_HEAD bytes only, never the model (a 3 GB file is not loaded to be refused)."""
    try:
        with open(path, "rb") as f:
            head = f.read(ONNX_HEAD)
    except OSError:
        return False
    return _leading_string(head, PRODUCER_NAME_FIELD) == PRODUCER.encode()


def _leading_string(data, number):
    """The bytes of length-delimited protobuf field `number` of the message starting `data`,
    found among the fields before it, or None. Protobuf serialises fields in field-number order,
    so producer_name comes second, after ir_version, within a few bytes of the start; parsing the
    model (onnx.load) would need all of it."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            field, wire = key >> 3, key & 7
            if field > number or wire not in (0, 2):  # past it, or a kind ModelProto's first fields never are
                return None
            value, pos = _varint(data, pos)
            if wire == 2:
                if field == number:
                    return data[pos:pos + value] if pos + value <= len(data) else None
                pos += value
    except IndexError:  # the prefix ends inside a varint
        return None
    return None


def _varint(data, pos):
    """(value, position after it) of the base-128 varint at data[pos]."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80 or shift > 63:
            return value, pos


# --- safetensors ------------------------------------------------------------------------
def safetensors_bytes(model, metadata):
    """The .safetensors file of model.state_dict() with `metadata` plus gpucnn's marker."""
    st = _safetensors_numpy()
    state = {k: _c_order(v) for k, v in model.state_dict().items()}
    return st.save(state, metadata={**metadata, "producer": PRODUCER, "gpucnn_version": gpucnn.__version__,
                                    "format": "pt"})


def safetensors_metadata(path):
    """The __metadata__ of a .safetensors file (read from its JSON header; {} if none),
    or None when `path` is not a safetensors file."""
    try:
        with open(path, "rb") as f:
            header = safetensors_header(f)
    except (OSError, ValueError):
        return None
    return header.get("__metadata__") or {} if isinstance(header, dict) else None


def is_our_safetensors(path):
    return (safetensors_metadata(path) or {}).get("producer") == PRODUCER


# --- the command --------------------------------------------------------------------------
def description(trained):
    """What a runtime needs to feed and read the net, as str -> str metadata."""
    return {"model": trained.name, "input_shape": json.dumps(list(trained.input_shape)),
            "classes": json.dumps(trained.classes), "mean": json.dumps(trained.mean.tolist()),
            "std": json.dumps(trained.std.tolist()),
            "input": "NCHW pixels scaled to 0..1, then (x - mean) / std per channel"}


def output_format(path):
    for ext in FORMATS:
        if str(path).lower().endswith(ext):
            return ext
    raise ExportError(f"{path}: cannot tell the export format from the file name; end it in "
                      f"{' or '.join(FORMATS)}")


def check_export_path(path):
    """The real path to export to (gpucnn.outputs rules: only our own file of that kind is replaced)."""
    if output_format(path) == ".onnx":
        _onnx()
        return check_output(path, what="ONNX export", is_ours=is_our_onnx)
    _safetensors_numpy()
    return check_output(path, what="safetensors export", is_ours=is_our_safetensors)


def run(args, print_fn=print):
    from gpucnn.trained import load_trained

    for flag, given in (("--softmax", args.softmax), ("--fold-bn", args.fold_bn)):
        if given and output_format(args.output) != ".onnx":
            raise ExportError(f"{flag} applies to .onnx exports only")
    trained = load_trained(args.checkpoint)
    real = check_export_path(args.output)  # creates its directory: only once the inputs are known good
    meta = description(trained)
    if output_format(args.output) == ".onnx":
        data = to_onnx(trained.model, trained.input_shape, softmax=args.softmax, fold_bn=args.fold_bn,
                       metadata=meta).SerializeToString()
        what = f"ONNX opset {OPSET}, input {INPUT!r} (batch, {', '.join(map(str, trained.input_shape))}), " \
               f"output {PROBABILITIES if args.softmax else LOGITS!r}"
    else:
        data = safetensors_bytes(trained.model, meta)
        what = f"safetensors, {len(trained.model.state_dict())} tensors under PyTorch's keys"
    write_atomically(real, lambda f: f.write(data))
    print_fn(f"wrote {args.output} ({what})")
    return 0
