"""Softmax over the classes (axis 1) of an (N, C) input.

    y = exp(x - max(x)) / sum(exp(x - max(x)))     (subtracting the row max cannot overflow)
    dx = y * (dy - sum(dy * y, axis=1))            (the Jacobian diag(y) - y y^T applied to dy)
"""
from gpucnn import backend
from gpucnn.layers.base import Layer


def softmax(x):
    """Row-wise softmax of a 2-D array."""
    xp = backend.get_array_module(x)
    e = xp.exp(x - x.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


class Softmax(Layer):
    def forward(self, x):
        self.check_input(x, 2)
        y = softmax(x)
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved()
        self.check_grad(dy, y)
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))
