"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...) in C order; backward reshapes dy back
(into the memory order x had)."""
import math

from gpucnn import backend
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
        self.save(x, y)
        return y

    def backward(self, dy):
        x, y = self.saved()
        self.check_grad(dy, y)
        if x.flags.c_contiguous:
            return dy.reshape(x.shape)
        # In x's memory order, which the layers below keep (see Layer): one small copy here
        # instead of mixed orders, several times slower, in every layer below.
        dx = backend.get_array_module(dy).empty_like(x)
        dx[...] = dy.reshape(x.shape)
        return dx
