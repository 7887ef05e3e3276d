"""Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight decay)."""
import numpy

from gpucnn import kernels
from gpucnn.optim.base import Optimizer, _check_nonnegative, cast


class Adam(Optimizer):
    """torch.optim.Adam. At step t (from 1), with g = grad + weight_decay * p:

        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g * g
        p <- p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    t is a device counter, so the bias corrections are computed on the device.
    """

    decoupled = False  # AdamW: decay p itself instead of adding to the gradient

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=None):
        name = type(self).__name__
        beta1, beta2 = (float(b) for b in betas)
        for i, b in enumerate((beta1, beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name}: betas[{i}] must be in [0, 1), got {b}")
        _check_nonnegative(name, "eps", eps)
        _check_nonnegative(name, "weight_decay", weight_decay)
        hyper = {"betas": (beta1, beta2), "eps": float(eps), "weight_decay": float(weight_decay)}
        super().__init__(params, lr, hyper, fused)

    def _buffer_names(self):
        return ("exp_avg", "exp_avg_sq")

    def _scalars(self):
        beta1, beta2 = self.hyper["betas"]
        lr, t = self._lr, self._step
        return {
            "step_size": lr / (1 - beta1**t),
            "bias_correction2_sqrt": (1 - beta2**t) ** 0.5,
            "decay": 1 - lr * self.hyper["weight_decay"],  # AdamW only
        }

    def _update(self, p, g, state, scalars):
        (beta1, beta2), eps, wd = self.hyper["betas"], self.hyper["eps"], self.hyper["weight_decay"]
        if wd and self.decoupled:
            p *= cast(scalars["decay"], p)
        elif wd:
            g = g + wd * p  # a new array: the layer's grad is left as it is
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1 - beta1) * (g - m)  # = beta1*m + (1-beta1)*g, written as torch's lerp_ so rounding follows it
        v *= beta2
        v += (1 - beta2) * g * g
        denom = self.xp.sqrt(v) / cast(scalars["bias_correction2_sqrt"], v) + eps
        p -= cast(scalars["step_size"], p) * (m / denom)

    def _fused_update(self, p, g, state):
        (beta1, beta2), eps, wd = self.hyper["betas"], self.hyper["eps"], self.hyper["weight_decay"]
        l2, decoupled = (0.0, wd) if self.decoupled else (wd, 0.0)
        hyper = tuple(numpy.float64(v) for v in (beta1, beta2, eps, l2, decoupled))
        kernels.launch("adam.cu", "adam_step", p.dtype, p.size,
                       (g, self._lr, self._step, *hyper, p, state["exp_avg"], state["exp_avg_sq"], numpy.int64(p.size)))


class AdamW(Adam):
    """torch.optim.AdamW: p <- p * (1 - lr * weight_decay) first, then Adam's step on the
    plain gradient (decoupled weight decay, Loshchilov & Hutter)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, fused)

