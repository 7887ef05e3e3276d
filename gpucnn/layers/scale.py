"""Multiply by a constant: y = scale * x, dx = scale * dy (ResNet-9's output scale 0.125).
`scale` is a plain float, fixed at construction, not learned."""
from gpucnn.layers.base import Layer


class Scale(Layer):
    def __init__(self, scale, dtype=None):
        super().__init__(dtype)
        try:
            self.scale = float(scale)
        except (TypeError, ValueError):
            raise ValueError(f"Scale: scale must be a number, got {scale!r}") from None

    def extra_repr(self):
        return f"{self.scale}"

    def forward(self, x):
        self.check_input(x)
        y = x * x.dtype.type(self.scale)
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved()
        self.check_grad(dy, y)
        return dy * dy.dtype.type(self.scale)
