"""The same Sequential written in PyTorch, with the same weights: the reference for tests
and the benchmark. Imports torch only when called."""
from gpucnn.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Softmax


def to_torch(model, device="cpu", dtype=None):
    """A torch.nn.Sequential mirroring `model`, loaded with its state_dict (keys match)."""
    import torch
    from torch import nn

    mods = []
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            w = layer.params["weight"]
            mods.append(nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.stride,
                                  padding=layer.padding, bias="bias" in layer.params))
        elif isinstance(layer, Linear):
            w = layer.params["weight"]
            mods.append(nn.Linear(w.shape[1], w.shape[0], bias="bias" in layer.params))
        elif isinstance(layer, BatchNorm2d):
            mods.append(nn.BatchNorm2d(layer.params["weight"].shape[0], eps=layer.eps, momentum=layer.momentum))
        elif isinstance(layer, MaxPool2d):
            mods.append(nn.MaxPool2d(layer.kernel_size, stride=layer.stride))
        elif isinstance(layer, ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, Softmax):
            mods.append(nn.Softmax(dim=1))
        else:
            raise TypeError(f"no PyTorch twin for {type(layer).__name__}")
    net = nn.Sequential(*mods)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    dtype = dtype or getattr(torch, str(model.layers[0].dtype))
    return net.to(device=device, dtype=dtype)
