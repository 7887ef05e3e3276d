"""A residual connection: two branches over the same input, added.

    y = body(x) + shortcut(x)                 shortcut(x) = x when `shortcut` is None
    dx = body.backward(dy) + shortcut.backward(dy)      (dy reaches both: d(a + b)/da = 1)

`body` and `shortcut` are any layer or Sequential. A Residual holds no arrays of its own;
its branches' parameters and buffers are saved under "body." and "shortcut." (see
sequential.walk), the names a PyTorch module with attributes `body` and `shortcut` gives.
"""
from gpucnn.layers.base import Layer, children_repr, leaf_dtype


class Residual(Layer):
    def __init__(self, body, shortcut=None, dtype=None):
        for what, branch in (("body", body), ("shortcut", shortcut)):
            if branch is not None and not (hasattr(branch, "forward") and hasattr(branch, "backward")):
                raise ValueError(f"Residual: {what} ({type(branch).__name__}) is not a layer or Sequential")
        if body is None:
            raise ValueError("Residual: body must be a layer or Sequential, got None")
        super().__init__(dtype or leaf_dtype(body) or leaf_dtype(shortcut))
        self.body, self.shortcut = body, shortcut

    def __repr__(self):
        return f"Residual({children_repr(self)}\n)"

    def children(self):
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def train(self, mode=True):
        super().train(mode)
        for _, branch in self.children():
            branch.train(mode)
        return self

    def forward(self, x):
        self.check_input(x)
        a = self.body.forward(x)
        b = x if self.shortcut is None else self.shortcut.forward(x)
        if tuple(a.shape) != tuple(b.shape):
            other = "input (identity shortcut)" if self.shortcut is None else "shortcut output"
            raise ValueError(
                f"Residual: body output has shape {tuple(a.shape)} but the {other} has shape "
                f"{tuple(b.shape)}; they must match to be added (a stride or channel change needs "
                f"a projection shortcut)"
            )
        y = a + b  # a new array: a branch's last layer may have kept its output for backward
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved()
        self.check_grad(dy, y)
        # Not in place: a branch may hand back dy itself or a view of it (an empty Sequential, Flatten).
        return self.body.backward(dy) + (dy if self.shortcut is None else self.shortcut.backward(dy))
