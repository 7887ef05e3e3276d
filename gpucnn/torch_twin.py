"""The same net written in PyTorch, with the same weights: the reference for tests and
the benchmark. Imports torch only when called.

Containers map to containers (Sequential to nn.Sequential, Residual to a module with
`body` and `shortcut`), so the twin's state_dict keys are gpucnn's, nested ones included.
"""
import functools

from gpucnn.layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, MaxPool2d,
                           ReLU, Residual, Scale, Softmax)
from gpucnn.sequential import Sequential


def to_torch(model, device="cpu", dtype=None):
    """A torch.nn module mirroring `model` (a Sequential or a layer), loaded with its state_dict."""
    import torch

    from gpucnn import backend
    from gpucnn.sequential import walk

    dtype = dtype or getattr(torch, str(model.dtype))
    net = twin(model).to(dtype=dtype)  # before loading: a float32 module would round float64 weights
    net.load_state_dict({prefix + n: torch.from_numpy(backend.to_numpy(a).copy()) for prefix, leaf in walk(model)
                         for store in (leaf.params, leaf.buffers) for n, a in store.items()})
    return net.to(device=device)


def twin(layer):
    """The torch.nn module of one gpucnn layer or container (fresh weights; see to_torch)."""
    from torch import nn

    if isinstance(layer, Sequential):
        return nn.Sequential(*[twin(child) for child in layer.layers])
    if isinstance(layer, Residual):
        return _modules().Residual(twin(layer.body), None if layer.shortcut is None else twin(layer.shortcut))
    if isinstance(layer, Conv2d):
        w = layer.params["weight"]
        return nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.stride, padding=layer.padding,
                         bias="bias" in layer.params)
    if isinstance(layer, Linear):
        w = layer.params["weight"]
        return nn.Linear(w.shape[1], w.shape[0], bias="bias" in layer.params)
    if isinstance(layer, BatchNorm2d):
        return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
    if isinstance(layer, MaxPool2d):
        return nn.MaxPool2d(layer.kernel_size, stride=layer.stride)
    if isinstance(layer, AvgPool2d):
        return nn.AvgPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, GlobalAvgPool2d):
        return nn.AdaptiveAvgPool2d(1)
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p)  # its own masks: compare in eval mode or with p = 0
    if isinstance(layer, Scale):
        return _modules().Scale(layer.scale)
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Softmax):
        return nn.Softmax(dim=1)
    raise TypeError(f"no PyTorch twin for {type(layer).__name__}")


@functools.lru_cache(maxsize=None)
def _modules():
    from torch import nn

    class TorchResidual(nn.Module):
        """y = body(x) + shortcut(x), identity shortcut when None."""

        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class TorchScale(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    class Modules:
        Residual, Scale = TorchResidual, TorchScale

    return Modules
