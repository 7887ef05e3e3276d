"""gpucnn export: ONNX graphs that onnxruntime runs to gpucnn's logits, safetensors files that
PyTorch's load_state_dict takes, for every model the command line offers."""
import json
import os
import subprocess
import sys

import numpy
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gpucnn import backend, cli, init, models  # noqa: E402
from gpucnn.data import idx  # noqa: E402
from gpucnn.export import OPSET, ExportError, safetensors_bytes, to_onnx  # noqa: E402
from gpucnn.layers import BatchNorm2d, Conv2d, Flatten, Layer, Linear, ReLU  # noqa: E402
from gpucnn.sequential import Sequential  # noqa: E402
from gpucnn.trained import load_trained  # noqa: E402
from real_mnist import mnist_dir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDARD_OPS = {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
                "Gemm", "Add", "Mul", "Softmax", "Identity"}


def cli_models():
    """The --model choices, so a net added there is exported and checked here too."""
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    return next(a.choices for a in train._actions if "--model" in a.option_strings)


def _with_statistics(model, rng):
    """Give every BatchNorm running statistics and affine weights far from their defaults,
    so an export that ignored or mixed them up could not pass."""
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):
            c = layer.num_features
            layer.buffers["running_mean"][...] = backend.to_device(rng.standard_normal(c) * 0.5)
            layer.buffers["running_var"][...] = backend.to_device(rng.uniform(0.3, 3.0, c))
            layer.params["weight"][...] = backend.to_device(rng.uniform(0.5, 1.5, c))
            layer.params["bias"][...] = backend.to_device(rng.standard_normal(c) * 0.2)
    return model.eval()


def _run_onnx(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _logits(model, x):
    return backend.to_numpy(model.eval().forward(backend.to_device(x)))


def _real_digits(shape):
    """Real handwritten digits shaped for `shape`: MNIST test images, normalised like training."""
    x = idx.read_images(idx.find(mnist_dir(), idx.FILES["test_images"]))[:6].astype(numpy.float32) / 255
    x = numpy.repeat(x, shape[0], axis=1)
    return ((x - 0.1307) / 0.3081).astype(numpy.float32)


@pytest.mark.parametrize("name", cli_models())
def test_onnx_runtime_gives_gpucnn_logits_for_every_model(name, rng):
    for shape, inputs in (((3, 32, 32), lambda s: rng.standard_normal((5, *s)).astype(numpy.float32)),
                          ((1, 28, 28), _real_digits)):
        init.seed(3)
        model = _with_statistics(models.build(name, shape, 10), rng)
        proto = to_onnx(model, shape)
        onnx.checker.check_model(proto, full_check=True)
        x = inputs(shape)
        expected = _logits(model, x)
        got = _run_onnx(proto, x)
        assert got.shape == expected.shape == (len(x), 10)
        numpy.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"{name} {shape}")
        numpy.testing.assert_allclose(_run_onnx(proto, x[:1]), expected[:1], rtol=0, atol=1e-5)  # batch is dynamic
        assert {n.op_type for n in proto.graph.node} <= STANDARD_OPS


def test_graph_is_standard_and_described(rng):
    init.seed(0)
    model = _with_statistics(models.vgg_bn((1, 8, 8), 10, widths=(4, 8, 8)), rng)
    proto = to_onnx(model, (1, 8, 8), metadata={"classes": json.dumps(list("abcdefghij"))})
    assert proto.producer_name == "gpucnn" and [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert {p.key: p.value for p in proto.metadata_props}["classes"] == json.dumps(list("abcdefghij"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 6 and ops.count("Conv") == 6 and ops[-2:] == ["Flatten", "Gemm"]
    assert {i.name for i in proto.graph.initializer} == set(model.state_dict()) - {
        k for k in model.state_dict() if k.endswith("num_batches_tracked")}


def test_softmax_option_and_nested_sequential(rng):
    init.seed(0)
    model = Sequential(Sequential(Conv2d(1, 4, 3), ReLU()), Flatten(), Linear(4 * 6 * 6, 5))
    x = rng.standard_normal((3, 1, 8, 8)).astype(numpy.float32)
    proto = to_onnx(model, (1, 8, 8), softmax=True)
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    p = _run_onnx(proto, x)
    logits = _logits(model, x).astype(numpy.float64)
    e = numpy.exp(logits - logits.max(axis=1, keepdims=True))
    numpy.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), atol=1e-6)
    model.train()  # the caller's mode is restored after the eval-mode export
    to_onnx(model, (1, 8, 8))
    assert model.training


def test_an_unsupported_layer_is_named():
    class Swish(Layer):
        def forward(self, x):
            return x

        def backward(self, dy):
            return dy

    model = Sequential(Conv2d(1, 2, 3), Sequential(ReLU(), Swish()), Flatten())
    with pytest.raises(ExportError, match=r"layer 1\.1 \(Swish\): no ONNX converter for Swish; supported layers: .*Conv2d"):
        to_onnx(model, (1, 8, 8))


@pytest.mark.parametrize("name", cli_models())
def test_safetensors_loads_into_the_pytorch_twin(name, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as load_tensors

    from gpucnn.torch_twin import to_torch

    shape = (1, 28, 28)
    init.seed(3)
    model = _with_statistics(models.build(name, shape, 10), rng)
    init.seed(4)  # a twin that starts from other weights, so only the file can make it agree
    twin = to_torch(models.build(name, shape, 10)).eval()
    data = safetensors_bytes(model, {"model": name})
    twin.load_state_dict(load_tensors(data), strict=True)
    x = _real_digits(shape)
    with torch.no_grad():
        got = twin(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(got, _logits(model, x), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    pytest.importorskip("sklearn")
    ckpt = tmp_path_factory.mktemp("export") / "c.ckpt"
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--save", str(ckpt)]) == 0
    return ckpt


def _gpucnn(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "GPUCNN_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-m", "gpucnn", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_export_both_formats_end_to_end(trained_ckpt, tmp_path):
    from safetensors import safe_open
    from sklearn.datasets import load_digits

    trained = load_trained(trained_ckpt)
    x = (load_digits().images[:20, None] / 16.0).astype(numpy.float32)
    x = ((x - trained.mean[:, None, None]) / trained.std[:, None, None]).astype(numpy.float32)
    expected = _logits(trained.model, x)

    run = _gpucnn("export", "--checkpoint", trained_ckpt, "-o", tmp_path / "m.onnx")
    assert run.returncode == 0 and f"opset {OPSET}" in run.stdout, run.stderr
    proto = onnx.load(tmp_path / "m.onnx")
    numpy.testing.assert_allclose(_run_onnx(proto, x), expected, rtol=0, atol=1e-5)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == "small" and json.loads(meta["input_shape"]) == [1, 8, 8]
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    numpy.testing.assert_allclose(json.loads(meta["mean"]), trained.mean)

    run = _gpucnn("export", "--checkpoint", trained_ckpt, "-o", tmp_path / "m.safetensors")
    assert run.returncode == 0, run.stderr
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["producer"] == "gpucnn" and meta["model"] == "small" and json.loads(meta["input_shape"]) == [1, 8, 8]
    assert json.loads(meta["classes"]) == trained.classes
    numpy.testing.assert_allclose(json.loads(meta["std"]), trained.std)
    assert state.keys() == trained.model.state_dict().keys()
    for k, v in trained.model.state_dict().items():
        numpy.testing.assert_array_equal(state[k], v)



def test_export_replaces_only_its_own_files(trained_ckpt, tmp_path, capsys):
    for name in ("m.onnx", "m.safetensors"):
        assert cli.main(["export", "--checkpoint", str(trained_ckpt), "-o", str(tmp_path / name)]) == 0
    assert cli.main(["export", "--checkpoint", str(trained_ckpt), "-o", str(tmp_path / "m.onnx"), "--softmax"]) == 0
    assert [o.name for o in onnx.load(tmp_path / "m.onnx").graph.output] == ["probabilities"]
    assert cli.main(["export", "--checkpoint", str(trained_ckpt), "-o", str(tmp_path / "m.safetensors")]) == 0
    capsys.readouterr()
    for name in ("theirs.onnx", "theirs.safetensors"):
        (tmp_path / name).write_bytes(b"a user's file")
        assert cli.main(["export", "--checkpoint", str(trained_ckpt), "-o", str(tmp_path / name)]) == 2
        assert "refusing to overwrite" in capsys.readouterr().err
        assert (tmp_path / name).read_bytes() == b"a user's file"
    assert cli.main(["export", "--checkpoint", str(trained_ckpt), "-o", str(tmp_path / "m.pb")]) == 2
    assert ".onnx or .safetensors" in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(trained_ckpt), "-o", str(tmp_path / "new" / "m.safetensors"),
                     "--fold-bn"]) == 2
    assert "--fold-bn applies to .onnx exports only" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # refused before anything was made
    assert cli.main(["export", "--checkpoint", str(trained_ckpt), "-o", str(tmp_path / "m.onnx"), "--fold-bn"]) == 0


def test_cli_export_from_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "junk.ckpt"), "-o", str(tmp_path / "new" / "m.onnx")]) == 2
    assert "junk.ckpt: not a readable .npz (truncated or corrupt?)" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the output's directory is made only for a good checkpoint
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.gpu
def test_export_and_predict_on_cupy_match_numpy(rng):
    """The live-backend paths: a net whose arrays live on the GPU exports the same graph and
    predicts the same probabilities as its NumPy twin."""
    pytest.importorskip("cupy")
    from gpucnn.predict import predict_arrays
    from gpucnn.trained import Trained

    init.seed(3)
    host = _with_statistics(models.build("vgg_bn", (3, 16, 16), 10), rng)
    x = rng.random((9, 3, 16, 16)).astype(numpy.float32)
    mean, std = numpy.full(3, 0.5, numpy.float32), numpy.full(3, 0.25, numpy.float32)
    expected = predict_arrays(Trained(host, "vgg_bn", (3, 16, 16), list("0123456789"), mean, std, ""), x)
    backend.select("cupy")
    try:
        init.seed(0)
        gpu = models.build("vgg_bn", (3, 16, 16), 10)
        gpu.load_state_dict(host.state_dict())
        got = predict_arrays(Trained(gpu.eval(), "vgg_bn", (3, 16, 16), list("0123456789"), mean, std, ""), x)
        proto = to_onnx(gpu, (3, 16, 16))
    finally:
        backend.select("numpy")
    numpy.testing.assert_allclose(got, expected, atol=1e-5)
    numpy.testing.assert_allclose(_run_onnx(proto, x), _logits(host, x), atol=1e-5)


@pytest.mark.parametrize("name", cli_models())
def test_folded_batchnorm_gives_the_same_logits(name, rng):
    init.seed(5)
    model = _with_statistics(models.build(name, (3, 32, 32), 10), rng).train()
    proto = to_onnx(model, (3, 32, 32), fold_bn=True)
    assert model.training  # the caller's net is left as it was
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops
    x = rng.standard_normal((4, 3, 32, 32)).astype(numpy.float32)
    numpy.testing.assert_allclose(_run_onnx(proto, x), _logits(model, x), rtol=0, atol=1e-5)
    plain = [n.op_type for n in to_onnx(model, (3, 32, 32)).graph.node]
    assert ops.count("Conv") == plain.count("Conv") and len(ops) == len(plain) - plain.count("BatchNormalization")
