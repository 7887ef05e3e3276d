"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay."""
import numpy

from gpucnn import kernels
from gpucnn.optim.base import Optimizer, _check_nonnegative, cast


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0). With g = grad + weight_decay * p:

        momentum == 0:  p <- p - lr * g
        otherwise:      buf <- momentum * buf + g
                        p   <- p - lr * buf                      (heavy ball)
                        p   <- p - lr * (g + momentum * buf)     (nesterov)

    buf starts at zero, so the first step sets buf = g, as torch does.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, fused=None):
        _check_nonnegative("SGD", "momentum", momentum)
        _check_nonnegative("SGD", "weight_decay", weight_decay)
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        hyper = {"momentum": float(momentum), "nesterov": bool(nesterov), "weight_decay": float(weight_decay)}
        super().__init__(params, lr, hyper, fused)

    def _buffer_names(self):
        return ("momentum_buffer",) if self.hyper["momentum"] else ()

    def _update(self, p, g, state, scalars):
        momentum, nesterov, wd = self.hyper["momentum"], self.hyper["nesterov"], self.hyper["weight_decay"]
        if wd:
            g = g + wd * p  # a new array: the layer's grad is left as it is
        if momentum:
            buf = state["momentum_buffer"]
            buf *= momentum
            buf += g
            g = g + momentum * buf if nesterov else buf
        p -= cast(scalars["lr"], p) * g

    def _fused_update(self, p, g, state):
        h, n = self.hyper, numpy.int64(p.size)
        wd = numpy.float64(h["weight_decay"])
        if h["momentum"]:
            kernels.launch("sgd.cu", "sgd_momentum_step", p.dtype, p.size,
                           (g, self._lr, numpy.float64(h["momentum"]), wd, numpy.int32(h["nesterov"]), p,
                            state["momentum_buffer"], n))
        else:
            kernels.launch("sgd.cu", "sgd_step", p.dtype, p.size, (g, self._lr, wd, p, n))

