"""Comparisons shared by the layer tests."""
import numpy

from gpucnn import backend
from gpucnn.gradcheck import check_layer

F64 = numpy.float64


def close(actual, expected, rtol=1e-4):
    """rtol, plus an atol of rtol * max|expected| so near-zero entries of sums can pass."""
    expected = numpy.asarray(backend.to_numpy(expected), dtype=F64)
    atol = rtol * max(float(numpy.abs(expected).max(initial=0.0)), 1e-12)
    numpy.testing.assert_allclose(backend.to_numpy(actual).astype(F64), expected, rtol=rtol, atol=atol)


def matches_torch(layer, ref, x, dy, rtol=1e-4):
    """Forward, input gradient and every parameter gradient of `layer` against torch module `ref`
    (already holding the same parameters) on the same input and output gradient."""
    import torch

    xt = torch.from_numpy(numpy.array(x)).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(numpy.array(dy)))
    y = layer.forward(x)
    assert y.shape == tuple(yt.shape) and y.dtype == x.dtype
    close(y, yt.detach().numpy(), rtol)
    close(layer.backward(dy), xt.grad.numpy(), rtol)
    torch_params = dict(ref.named_parameters())
    assert set(layer.params) == set(torch_params)
    for name in layer.params:
        close(layer.grads[name], torch_params[name].grad.numpy(), rtol)


def passes_gradient_check(layer, x, tol=1e-6):
    """float64 central differences agree with backward for the input and every parameter."""
    errors = check_layer(layer, x)
    assert set(errors) == {"x", *layer.params}
    assert max(errors.values()) < tol, errors


def cupy_matches_numpy(layer, twin, x, rng, cupy):
    """`twin` (the same layer holding CuPy copies of `layer`'s parameters) gives NumPy's
    forward, input gradient and parameter gradients within float32 tolerance."""
    y = layer.forward(x)
    y_gpu = twin.forward(cupy.asarray(x))
    assert isinstance(y_gpu, cupy.ndarray) and y_gpu.shape == y.shape and y_gpu.dtype == y.dtype
    close(y_gpu, y)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    close(twin.backward(cupy.asarray(dy)), layer.backward(dy))
    assert set(twin.grads) == set(layer.grads)
    for name in layer.grads:
        assert isinstance(twin.grads[name], cupy.ndarray)
        close(twin.grads[name], layer.grads[name])


def in_memory_order(a, order):
    """The values of `a`, same shape, with axes laid out in memory in `order` (outermost first):
    (0, 2, 1, 3) gives an NCHW array whose memory is (N, H, C, W)."""
    return numpy.ascontiguousarray(a.transpose(order)).transpose(numpy.argsort(order))


def memory_order(a):
    """The axes of `a` from the largest stride to the smallest."""
    return tuple(sorted(range(a.ndim), key=lambda i: -a.strides[i]))


def module_to_cupy(module, cupy):
    """Move every parameter and buffer of a layer or container (nested ones too) onto CuPy."""
    from gpucnn.sequential import walk

    for _, leaf in walk(module):
        for store in (leaf.params, leaf.buffers):
            for n in store:
                store[n] = cupy.asarray(store[n])
        if hasattr(leaf, "draws"):
            leaf.draws = cupy.asarray(leaf.draws)
    return module
