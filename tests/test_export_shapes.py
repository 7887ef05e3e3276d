"""ONNX export of non-square kernels, strides and padding, and a BatchNorm fold where eps
matters. Every model in gpucnn.models is square, so these nets are built from the layers:
a pad order, a stride order or a fold that dropped eps shows up here, not in the models' tests.
Compared in float64 by onnx's reference evaluator (onnxruntime has no double Conv), so
agreement to 1e-10 is exactness, and by onnxruntime in float32 with a tolerance relative to
the logits' size."""
import numpy
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gpucnn import backend, init  # noqa: E402
from gpucnn.export import to_onnx  # noqa: E402
from gpucnn.layers import AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU  # noqa: E402
from gpucnn.sequential import Sequential  # noqa: E402

F64 = numpy.float64
SHAPE = (2, 11, 8)  # C, H, W: H != W, so a transposed axis changes the output's shape or values


def _net(dtype, rng):
    """Each spatial layer with different (h, w) kernel, stride and padding, BatchNorm with
    statistics far from their defaults."""
    bn = BatchNorm2d(3, dtype=dtype)
    bn.buffers["running_mean"][...] = backend.to_device(rng.standard_normal(3))
    bn.buffers["running_var"][...] = backend.to_device(rng.uniform(0.3, 3.0, 3))
    bn.params["weight"][...] = backend.to_device(rng.uniform(0.5, 1.5, 3))
    bn.params["bias"][...] = backend.to_device(rng.standard_normal(3))
    body = [Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dtype=dtype), bn, ReLU(dtype=dtype),
            Conv2d(3, 4, (1, 3), stride=(1, 2), padding=(2, 1), dtype=dtype), ReLU(dtype=dtype),
            AvgPool2d((3, 2), stride=(1, 2), padding=(1, 0), dtype=dtype),
            MaxPool2d((2, 1), stride=(1, 2), dtype=dtype)]
    probe = Sequential(*body).eval()
    n = int(numpy.prod(probe.forward(backend.xp.zeros((1, *SHAPE), dtype=dtype)).shape))
    return Sequential(*body, Flatten(dtype=dtype), Linear(n, 5, dtype=dtype)).eval()


def _onnx_logits(proto, x):
    """The graph run by onnx.reference (float64: NumPy, op by op) or onnxruntime (float32)."""
    if x.dtype == F64:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(proto).run(None, {"input": x})[0]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _gpucnn_logits(model, x):
    return backend.to_numpy(model.forward(backend.to_device(x)))


def test_the_net_is_really_non_square(rng):
    init.seed(0)
    model = _net(F64, rng)
    shapes, x = [], backend.xp.zeros((1, *SHAPE))
    for layer in model.layers[:7]:
        x = layer.forward(x)
        shapes.append(tuple(x.shape[2:]))
    assert all(h != w for h, w in shapes), shapes  # so no axis mix-up can leave a shape unchanged


@pytest.mark.parametrize("fold_bn", [False, True], ids=["bn_node", "bn_folded"])
def test_non_square_net_exact_in_float64(fold_bn, rng):
    init.seed(0)
    model = _net(F64, rng)
    x = rng.standard_normal((3, *SHAPE))
    got, expected = _onnx_logits(to_onnx(model, SHAPE, fold_bn=fold_bn), x), _gpucnn_logits(model, x)
    assert got.dtype == F64 and got.shape == expected.shape == (3, 5)
    numpy.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fold_bn", [False, True], ids=["bn_node", "bn_folded"])
def test_non_square_net_in_float32(fold_bn, rng):
    init.seed(0)
    model = _net(numpy.float32, rng)
    x = rng.standard_normal((3, *SHAPE)).astype(numpy.float32)
    got, expected = _onnx_logits(to_onnx(model, SHAPE, fold_bn=fold_bn), x), _gpucnn_logits(model, x)
    numpy.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * numpy.abs(expected).max())


@pytest.mark.parametrize("dtype", [F64, numpy.float32])
def test_batchnorm_fold_where_eps_matters(dtype, rng):
    """running_var of the order of eps: dropping eps (or adding it twice) changes the scale by a
    factor, far outside any rounding. eps is 2**-10: ONNX holds the attribute as a float32, so
    an eps float32 cannot hold exactly differs in the graph by 5e-8 of itself."""
    init.seed(0)
    conv = Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), dtype=dtype)
    bn = BatchNorm2d(3, eps=2.0**-10, dtype=dtype)
    bn.buffers["running_var"][...] = backend.to_device(numpy.array([1e-3, 2e-4, 5e-3]))
    bn.buffers["running_mean"][...] = backend.to_device(numpy.array([0.1, -0.2, 0.05]))
    model = Sequential(conv, bn, Flatten(dtype=dtype)).eval()
    x = rng.standard_normal((4, 2, 5, 7)).astype(dtype)
    expected = _gpucnn_logits(model, x)
    for fold_bn in (False, True):
        proto = to_onnx(model, (2, 5, 7), fold_bn=fold_bn)
        assert ("BatchNormalization" in [n.op_type for n in proto.graph.node]) != fold_bn
        rtol = 1e-10 if dtype == F64 else 1e-4
        numpy.testing.assert_allclose(_onnx_logits(proto, x), expected, rtol=0,
                                      atol=rtol * numpy.abs(expected).max(), err_msg=f"fold_bn={fold_bn}")
