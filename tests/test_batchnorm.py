"""BatchNorm2d: gradient checks in both modes, PyTorch parity, running stats, errors, CuPy."""
import numpy
import pytest

from gpucnn import backend
from gpucnn.gradcheck import check_layer
from gpucnn.layers import BatchNorm2d

from helpers import close, matches_torch

F32, F64 = numpy.float32, numpy.float64



def randomised(c, rng, dtype=F64, eval_mode=False):
    """A BatchNorm2d with random gamma/beta (and random running stats for eval)."""
    bn = BatchNorm2d(c, dtype=dtype)
    bn.params["weight"][...] = rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)
    bn.params["bias"][...] = rng.standard_normal(c)
    if eval_mode:
        bn.running_mean = rng.standard_normal(c)
        bn.running_var = rng.uniform(0.3, 3.0, c)
        bn.eval()
    return bn


SHAPES = [(1, 3, 2, 3), (3, 3, 4, 1), (3, 5, 3, 2), (2, 5, 1, 1), (4, 1, 3, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_check_training_float64(shape, rng):
    bn = randomised(shape[1], rng)
    x = rng.standard_normal(shape) * 2 + 0.5
    errors = check_layer(bn, x)
    assert set(errors) == {"x", "weight", "bias"}
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("shape", SHAPES + [(1, 3, 1, 1)])
def test_gradient_check_eval_float64(shape, rng):
    bn = randomised(shape[1], rng, eval_mode=True)
    errors = check_layer(bn, rng.standard_normal(shape))
    assert max(errors.values()) < 1e-6, errors


def test_forward_normalises_each_channel(rng):
    x = rng.standard_normal((6, 3, 5, 4)) * numpy.array([1.0, 10.0, 0.1])[:, None, None] + 7.0
    y = BatchNorm2d(3, dtype=F64).forward(x)
    numpy.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    numpy.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0 / (1.0 + 1e-5 / x.var(axis=(0, 2, 3))), rtol=1e-10)


def test_variance_has_no_cancellation_in_float32(rng):
    # Mean 3000, spread 1: in float32, E[x^2] - E[x]^2 loses about 9e6 * 6e-8 ~ 0.5 of a
    # variance of 1; two passes keep it to rounding.
    x = (3000 + rng.standard_normal((8, 2, 6, 6))).astype(F32)
    xr = x.astype(F64)
    var = xr.var(axis=(0, 2, 3))
    naive = (x * x).mean(axis=(0, 2, 3)) - x.mean(axis=(0, 2, 3)) ** 2
    assert numpy.abs(naive - var).max() > 0.01 * var.max()  # the trap is real
    bn = BatchNorm2d(2, eps=1e-12, momentum=1.0)
    y = bn.forward(x)
    m = x.size // 2
    numpy.testing.assert_allclose(bn.running_var, var * m / (m - 1), rtol=1e-4)
    ref = (xr - xr.mean(axis=(0, 2, 3), keepdims=True)) / numpy.sqrt(var)[:, None, None]
    numpy.testing.assert_allclose(y, ref, atol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 3000.0])
def test_synchronised_statistics_keep_float32_precision_far_from_zero(offset, rng):
    """--sync-bn's statistics come from sum(x) and sum(x^2) (one collective), whose
    difference cancels about (mean / std)^2 of the digits. In float64 with exact squares
    that leaves var right to float32's rounding at |mean| / std = 3000 (a float32 square
    summed in float64 was off by about 1e-3 there), against a float64 two-pass reference."""
    from gpucnn.layers.batchnorm import _global_stats

    x = (offset * numpy.array([1.0, -1.0, 0.5])[:, None, None] + rng.standard_normal((8, 3, 12, 12))).astype(F32)
    ref = x.astype(F64)
    mean, var, m = _global_stats(x, reduce=lambda sums: None)  # one rank: the sum over ranks is itself
    assert mean.dtype == var.dtype == F32 and m == 8 * 12 * 12
    numpy.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1.2e-7)
    numpy.testing.assert_allclose(var, ref.var(axis=(0, 2, 3)), rtol=2.4e-7)


def test_running_stats_and_counter(rng):
    bn = BatchNorm2d(2, momentum=0.25, dtype=F64)
    x = rng.standard_normal((3, 2, 2, 2)) + 4.0
    bn.forward(x)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    numpy.testing.assert_allclose(bn.running_mean, 0.25 * x.mean(axis=(0, 2, 3)))
    numpy.testing.assert_allclose(bn.running_var, 0.75 + 0.25 * x.var(axis=(0, 2, 3)) * m / (m - 1))
    counter = bn.buffers["num_batches_tracked"]
    assert counter.dtype == numpy.int64 and counter.shape == () and int(counter) == 1
    bn.eval().forward(x)
    assert int(bn.buffers["num_batches_tracked"]) == 1  # eval does not count


def test_buffers_are_updated_in_place(rng):
    bn = BatchNorm2d(3)
    held = [bn.buffers[k] for k in ("running_mean", "running_var", "num_batches_tracked")]
    bn.forward(rng.standard_normal((2, 3, 2, 2)).astype(F32))
    bn.running_mean = numpy.ones(3)
    now = [bn.buffers[k] for k in ("running_mean", "running_var", "num_batches_tracked")]
    assert all(a is b for a, b in zip(now, held))
    assert bn.running_mean is held[0] and (held[0] == 1).all()


def test_eval_backward_is_the_affine_gradient(rng):
    bn = randomised(3, rng, eval_mode=True)
    x = rng.standard_normal((2, 3, 2, 2))
    bn.forward(x)
    dy = rng.standard_normal(x.shape)
    dx = bn.backward(dy)
    invstd = 1 / numpy.sqrt(bn.running_var + bn.eps)
    numpy.testing.assert_allclose(dx, dy * (bn.params["weight"] * invstd)[:, None, None])
    xhat = (x - bn.running_mean[:, None, None]) * invstd[:, None, None]
    numpy.testing.assert_allclose(bn.grads["weight"], (dy * xhat).sum(axis=(0, 2, 3)))
    numpy.testing.assert_allclose(bn.grads["bias"], dy.sum(axis=(0, 2, 3)))


def test_backward_uses_the_mode_of_its_forward(rng):
    bn = randomised(3, rng)
    x = rng.standard_normal((4, 3, 2, 2))
    bn.forward(x)  # training
    bn.eval()  # switched before backward: the batch statistics still apply
    dx = bn.backward(numpy.ones(x.shape))
    numpy.testing.assert_allclose(dx, 0.0, atol=1e-12)  # d(sum y)/dx = 0 with batch stats


# --- PyTorch --------------------------------------------------------------------------------------


def torch_twin(bn, torch):
    ref = torch.nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum)
    state = {k: torch.from_numpy(numpy.array(backend.to_numpy(v))) for k, v in {**bn.params, **bn.buffers}.items()}
    ref.load_state_dict(state)
    return ref


@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (1, 5, 3, 3), (16, 4, 1, 1)])
def test_matches_torch_training_float32(shape, rng):
    torch = pytest.importorskip("torch")
    bn = randomised(shape[1], rng, dtype=F32)
    ref = torch_twin(bn, torch)
    assert set(ref.state_dict()) == set(bn.params) | set(bn.buffers)
    for step in range(3):  # running statistics after 3 steps
        x = (rng.standard_normal(shape) * 3 + step).astype(F32)
        dy = rng.standard_normal(shape).astype(F32)
        y = bn.forward(x)
        dx = bn.backward(dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.tensor(dy))
        close(y, yt.detach().numpy())
        close(dx, xt.grad.numpy(), rtol=2e-4)
        close(bn.grads["weight"], ref.weight.grad.numpy())
        close(bn.grads["bias"], ref.bias.grad.numpy())
        ref.weight.grad = ref.bias.grad = None
    close(bn.running_mean, ref.running_mean.numpy())
    close(bn.running_var, ref.running_var.numpy())
    assert int(bn.buffers["num_batches_tracked"]) == int(ref.num_batches_tracked) == 3


def test_matches_torch_eval_float32(rng):
    torch = pytest.importorskip("torch")
    bn = randomised(5, rng, dtype=F32, eval_mode=True)
    ref = torch_twin(bn, torch).eval()
    x = rng.standard_normal((3, 5, 4, 6)).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    matches_torch(bn, ref, x, dy)


# --- errors -----------------------------------------------------------------------------------------


def test_errors_name_the_layer(rng):
    bn = BatchNorm2d(3)
    with pytest.raises(ValueError, match="BatchNorm2d: backward called before forward"):
        bn.backward(numpy.zeros((2, 3, 2, 2), F32))
    with pytest.raises(ValueError, match="BatchNorm2d: expected a 4-d input"):
        bn.forward(numpy.zeros((2, 3), F32))
    with pytest.raises(ValueError, match="BatchNorm2d: expected input with 3 channels"):
        bn.forward(numpy.zeros((2, 4, 2, 2), F32))
    with pytest.raises(ValueError, match="BatchNorm2d: expected input of dtype float32"):
        bn.forward(numpy.zeros((2, 3, 2, 2), F64))
    with pytest.raises(ValueError, match="BatchNorm2d: expected more than 1 value per channel"):
        bn.forward(numpy.zeros((1, 3, 1, 1), F32))
    bn.eval().forward(numpy.zeros((1, 3, 1, 1), F32))  # fine in eval, as in PyTorch
    with pytest.raises(ValueError, match="BatchNorm2d: expected grad_out of shape"):
        bn.backward(numpy.zeros((1, 3, 2, 1), F32))
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="BatchNorm2d: num_features"):
            BatchNorm2d(bad)
    with pytest.raises(ValueError, match="BatchNorm2d: momentum"):
        BatchNorm2d(3, momentum=1.5)
    with pytest.raises(ValueError, match="BatchNorm2d: eps"):
        BatchNorm2d(3, eps=0)


# --- CuPy vs NumPy (kernels/batchnorm.cu) ----------------------------------------------------------


def to_cupy(layer, cupy):
    for store in (layer.params, layer.buffers):
        for k in store:
            store[k] = cupy.asarray(store[k])
    return layer


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (2, 5, 1, 1), (128, 16, 16, 16), (3, 4, 33, 35), (50, 6, 31, 29)])
def test_cupy_matches_numpy_training(shape, rng):
    cupy = pytest.importorskip("cupy")
    cpu = randomised(shape[1], rng, dtype=F32)
    gpu = to_cupy(BatchNorm2d(shape[1]), cupy)
    for k in cpu.params:
        gpu.params[k][...] = cupy.asarray(cpu.params[k])
    for step in range(2):
        x = (rng.standard_normal(shape) * 2 + 3).astype(F32)
        dy = rng.standard_normal(shape).astype(F32)
        y = gpu.forward(cupy.asarray(x))
        assert isinstance(y, cupy.ndarray)
        close(y, cpu.forward(x))
        close(gpu.backward(cupy.asarray(dy)), cpu.backward(dy), rtol=2e-4)
        for k in ("weight", "bias"):
            close(gpu.grads[k], cpu.grads[k])
    for k in ("running_mean", "running_var"):
        close(gpu.buffers[k], cpu.buffers[k])
    assert int(gpu.buffers["num_batches_tracked"]) == 2


@pytest.mark.gpu
def test_cupy_matches_numpy_eval(rng):
    cupy = pytest.importorskip("cupy")
    cpu = randomised(5, rng, dtype=F32, eval_mode=True)
    gpu = to_cupy(BatchNorm2d(5), cupy).eval()
    for store in ("params", "buffers"):
        for k, v in getattr(cpu, store).items():
            getattr(gpu, store)[k][...] = cupy.asarray(v)
    x = rng.standard_normal((4, 5, 6, 3)).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    close(gpu.forward(cupy.asarray(x)), cpu.forward(x))
    close(gpu.backward(cupy.asarray(dy)), cpu.backward(dy))
    for k in ("weight", "bias"):
        close(gpu.grads[k], cpu.grads[k])


@pytest.mark.gpu
@pytest.mark.parametrize("eval_mode", [False, True], ids=["train", "eval"])
def test_cupy_gradient_check_float64(eval_mode, rng):
    cupy = pytest.importorskip("cupy")
    bn = to_cupy(randomised(3, rng, eval_mode=eval_mode), cupy)
    errors = check_layer(bn, cupy.asarray(rng.standard_normal((3, 3, 4, 2))))
    assert max(errors.values()) < 1e-6, errors


# --- how the CUDA reductions split a channel over blocks (kernels/batchnorm.cu) -----------


def test_splits_fill_a_large_gpu_only_when_there_is_work():
    from gpucnn.layers.batchnorm import splits_for

    assert splits_for(256 * 32 * 32, 64, sm_count=132) == 9  # vgg_bn b256 stage 1: 576 blocks
    assert splits_for(256 * 8 * 8, 256, sm_count=132) == 3  # stage 3
    assert splits_for(8 * 5 * 4, 3, sm_count=132) == 1  # too little to share out
    assert splits_for(10**9, 1, sm_count=10**6) == 1024  # capped

