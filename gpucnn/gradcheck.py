"""Central-difference gradient check: the judge of every backward in gpucnn.

Loss = sum(forward(x) * R) with a fixed random projection R, so every output element
matters and backward(R) must return dLoss/dx. Each input element and each parameter
element is nudged by +-eps and the loss difference compared with the analytic gradient.
"""
import numpy

from gpucnn import backend
from gpucnn.layers.base import walk


def rel_error(analytic, numeric):
    """max |a - n| / max(max|a|, max|n|): relative to the gradient's own scale."""
    a, n = backend.to_numpy(analytic).astype(numpy.float64), backend.to_numpy(numeric).astype(numpy.float64)
    scale = max(numpy.abs(a).max(initial=0.0), numpy.abs(n).max(initial=0.0), 1e-12)
    return float(numpy.abs(a - n).max(initial=0.0) / scale)


def numeric_grad(f, x, eps):
    """d f / d x by central differences, nudging x in place (x is restored)."""
    xp = backend.get_array_module(x)
    grad = numpy.zeros(x.shape)
    flat = x.reshape(-1)  # a view: writes reach x
    for i in range(flat.size):
        old = flat[i].item()
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return xp.asarray(grad)


def check_layer(layer, x, eps=1e-6, seed=0):
    """Return {array name: relative error} for the input ('x') and each parameter.

    `layer` and `x` should be float64. The layer's mode (train/eval) is used as set.
    A container (Residual, Sequential) has its leaves' parameters checked under their
    state_dict keys ("body.0.weight").
    """
    params = {prefix + n: (leaf, n) for prefix, leaf in walk(layer) for n in leaf.params}
    xp = backend.get_array_module(x)
    rng = numpy.random.default_rng(seed)
    y = layer.forward(x)
    proj = xp.asarray(rng.standard_normal(y.shape), dtype=y.dtype)

    def loss():
        return float((layer.forward(x) * proj).sum())

    layer.forward(x)
    dx = layer.backward(proj)
    analytic = {"x": dx, **{k: leaf.grads[n].copy() for k, (leaf, n) in params.items()}}
    errors = {"x": rel_error(analytic["x"], numeric_grad(loss, x, eps))}
    for key, (leaf, n) in params.items():
        errors[key] = rel_error(analytic[key], numeric_grad(loss, leaf.params[n], eps))
    return errors


def check_loss(loss_layer, logits, target, eps=1e-6):
    """Relative error of the fused backward of a loss layer: d loss / d logits."""
    loss_layer.forward(logits, target)
    analytic = loss_layer.backward()
    numeric = numeric_grad(lambda: float(loss_layer.forward(logits, target)), logits, eps)
    return {"logits": rel_error(analytic, numeric)}
