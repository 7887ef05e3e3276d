"""Test-time augmentation: the logits of an image and of its horizontal mirror, averaged.

    logits(x) = (model(x) + model(x[..., ::-1])) / 2

Only the flip: the training augmentation's other half, the random crop, has no single
counterpart to add at test time (the DAWNBench ResNet-9 evaluates the same way).
"""
from gpucnn import backend


def predict_logits(model, x, tta=False):
    """model.forward(x), or with tta the mean of it and of the mirrored batch."""
    logits = model.forward(x)
    if not tta:
        return logits
    mirrored = backend.get_array_module(x).ascontiguousarray(x[..., ::-1])
    return (logits + model.forward(mirrored)) * logits.dtype.type(0.5)
