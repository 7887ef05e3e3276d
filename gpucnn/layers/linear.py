"""Fully connected layer, PyTorch's nn.Linear.

    Y = X W^T + b                      X (N, in), W (out, in), b (out,), Y (N, out)
    dX = dY W      dW = dY^T X      db = sum_n dY[n]
"""
import numpy

from gpucnn import gemm, init
from gpucnn.layers.base import Layer


class Linear(Layer):
    skips_input_grad = True

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__(dtype)
        for what, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, numpy.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Linear: {what} must be a positive int, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.params["weight"] = init.uniform_fan_in((out_features, in_features), in_features, self.dtype)
        if bias:
            self.params["bias"] = init.uniform_fan_in((out_features,), in_features, self.dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={'bias' in self.params}"

    def forward(self, x):
        """Y = X W^T + b."""
        self.check_input(x, 2, self.in_features)
        # W is read transposed by BLAS, no copy.
        y = gemm.matmul(x, self.params["weight"], trans_b=True)
        if "bias" in self.params:
            y += self.params["bias"]
        self.save(x, y)
        return y

    def backward(self, dy, input_grad=True):
        """dX = dY W, dW = dY^T X, db = sum_n dY. input_grad=False skips dX (returns None)."""
        x, y = self.saved()
        self.check_grad(dy, y)
        self.grads["weight"] = gemm.matmul(dy, x, trans_a=True)
        if "bias" in self.params:
            self.grads["bias"] = dy.sum(axis=0)
        return gemm.matmul(dy, self.params["weight"]) if input_grad else None
