"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...) in C order; backward reshapes dy back."""
import math

from gpucnn.layers.base import Layer


class Flatten(Layer):
    def forward(self, x):
        name = type(self).__name__
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"{name}: expected an array as input, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"{name}: expected an input (N, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
        self.check_input(x, x.ndim)  # dtype
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        self.save(tuple(x.shape), y)
        return y

    def backward(self, dy):
        shape, y = self.saved()
        self.check_grad(dy, y)
        return dy.reshape(shape)
