"""The nets gpucnn trains, as plain Sequentials.

Layer order equals the same net written with torch.nn.Sequential, so state_dict keys match
("0.weight", "1.running_mean", ...). Every net is sized from the dataset's image shape.
"""
from gpucnn.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from gpucnn.sequential import Sequential


def _pooled(size, times):
    for _ in range(times):
        size //= 2
    return size


def lenet(in_shape=(1, 28, 28), classes=10, dtype=None):
    """LeNet-5: conv5(6) relu pool2, conv5(16) relu pool2, fc120 relu fc84 relu fc(classes)."""
    c, h, w = in_shape
    fh, fw = (h - 4) // 2, (w - 4) // 2
    fh, fw = (fh - 4) // 2, (fw - 4) // 2
    if fh < 1 or fw < 1:
        raise ValueError(f"lenet: images of {h}x{w} are too small (needs at least 16x16)")
    return Sequential(
        Conv2d(c, 6, 5, dtype=dtype), ReLU(dtype=dtype), MaxPool2d(2, dtype=dtype),
        Conv2d(6, 16, 5, dtype=dtype), ReLU(dtype=dtype), MaxPool2d(2, dtype=dtype),
        Flatten(dtype=dtype),
        Linear(16 * fh * fw, 120, dtype=dtype), ReLU(dtype=dtype),
        Linear(120, 84, dtype=dtype), ReLU(dtype=dtype),
        Linear(84, classes, dtype=dtype),
    )


def vgg_bn(in_shape=(3, 32, 32), classes=10, dtype=None, widths=(64, 128, 256)):
    """Three stages of [conv3x3 pad1 (no bias) -> BN -> ReLU] x 2, each then pool2; one Linear."""
    c, h, w = in_shape
    layers = []
    for width in widths:
        for _ in range(2):
            layers += [Conv2d(c, width, 3, padding=1, bias=False, dtype=dtype), BatchNorm2d(width, dtype=dtype), ReLU(dtype=dtype)]
            c = width
        layers.append(MaxPool2d(2, dtype=dtype))
    fh, fw = _pooled(h, len(widths)), _pooled(w, len(widths))
    if fh < 1 or fw < 1:
        raise ValueError(f"vgg_bn: images of {h}x{w} are too small (needs at least 8x8)")
    layers += [Flatten(dtype=dtype), Linear(c * fh * fw, classes, dtype=dtype)]
    return Sequential(*layers)


def small(in_shape=(1, 8, 8), classes=10, dtype=None):
    """For the built-in 8x8 digits: conv3x3(16) relu pool2, conv3x3(32) relu pool2, fc(classes)."""
    c, h, w = in_shape
    fh, fw = _pooled(h, 2), _pooled(w, 2)
    if fh < 1 or fw < 1:
        raise ValueError(f"small: images of {h}x{w} are too small (needs at least 4x4)")
    return Sequential(
        Conv2d(c, 16, 3, padding=1, dtype=dtype), ReLU(dtype=dtype), MaxPool2d(2, dtype=dtype),
        Conv2d(16, 32, 3, padding=1, dtype=dtype), ReLU(dtype=dtype), MaxPool2d(2, dtype=dtype),
        Flatten(dtype=dtype),
        Linear(32 * fh * fw, classes, dtype=dtype),
    )


MODELS = {"lenet": lenet, "vgg_bn": vgg_bn, "small": small}


def build(name, in_shape, classes, dtype=None):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](in_shape, classes, dtype=dtype)
