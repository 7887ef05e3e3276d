"""The nets gpucnn trains, as plain Sequentials (residual blocks nest Sequentials).

Layer order equals the same net written with torch.nn.Sequential, so state_dict keys match
("0.weight", "1.running_mean", "3.body.0.weight", ...). Every net is sized from the
dataset's image shape and channel count.
"""
from gpucnn.layers import (BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, MaxPool2d, ReLU, Residual,
                           Scale)
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


def _conv_bn(c_in, c_out, dtype, stride=1, kernel=3, zero_init=False):
    """conv (no bias: the BatchNorm's shift replaces it) then BatchNorm."""
    return [Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False, dtype=dtype),
            BatchNorm2d(c_out, zero_init=zero_init, dtype=dtype)]


def basic_block(c_in, c_out, stride, dtype=None, zero_init_residual=False):
    """He et al.'s basic block before its ReLU: body conv3x3-BN-ReLU-conv3x3-BN; the shortcut
    is the identity, or option B (conv1x1 with the stride, then BN) when the shape changes."""
    body = Sequential(*_conv_bn(c_in, c_out, dtype, stride), ReLU(dtype=dtype),
                      *_conv_bn(c_out, c_out, dtype, zero_init=zero_init_residual))
    shortcut = Sequential(*_conv_bn(c_in, c_out, dtype, stride, kernel=1)) if stride != 1 or c_in != c_out else None
    return Residual(body, shortcut)


def cifar_resnet(depth, in_shape=(3, 32, 32), classes=10, dtype=None, widths=(16, 32, 64), zero_init_residual=False):
    """He et al. (2016), section 4.2: conv3x3(16)-BN-ReLU, then 3 stages of n = (depth - 2) / 6
    basic blocks (each followed by ReLU) at 16, 32, 64 channels, the first block of stages 2
    and 3 with stride 2; global average pool; Linear(classes). Shortcuts: option B."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    c, h, w = in_shape
    layers = [*_conv_bn(c, widths[0], dtype), ReLU(dtype=dtype)]
    c = widths[0]
    for stage, width in enumerate(widths):
        for i in range((depth - 2) // 6):
            stride = 2 if stage > 0 and i == 0 else 1
            layers += [basic_block(c, width, stride, dtype, zero_init_residual), ReLU(dtype=dtype)]
            c = width
    layers += [GlobalAvgPool2d(dtype=dtype), Flatten(dtype=dtype), Linear(c, classes, dtype=dtype)]
    return Sequential(*layers)


def resnet20(in_shape=(3, 32, 32), classes=10, dtype=None, zero_init_residual=False):
    """ResNet-20 (0.27M parameters for 3x32x32, 10 classes)."""
    return cifar_resnet(20, in_shape, classes, dtype, zero_init_residual=zero_init_residual)


def resnet56(in_shape=(3, 32, 32), classes=10, dtype=None, zero_init_residual=False):
    """ResNet-56 (0.86M parameters for 3x32x32, 10 classes)."""
    return cifar_resnet(56, in_shape, classes, dtype, zero_init_residual=zero_init_residual)


def resnet9(in_shape=(3, 32, 32), classes=10, dtype=None, zero_init_residual=False):
    """The DAWNBench ResNet-9 (Page, 2018): each "conv" is conv3x3 (no bias)-BN-ReLU.

    prep conv(64); layer1 conv(128) pool2 + Residual(conv(128), conv(128)); layer2 conv(256)
    pool2; layer3 conv(512) pool2 + Residual(conv(512), conv(512)); global max pool
    (MaxPool2d over what is left: 4x4 for 32x32 input); flatten; Linear(512, classes, no
    bias); Scale(0.125). The residuals' shortcuts are identities.
    """
    c, h, w = in_shape
    if h < 8 or w < 8:
        raise ValueError(f"resnet9: images of {h}x{w} are too small (needs at least 8x8)")

    def conv(c_in, c_out, zero_init=False):
        return [*_conv_bn(c_in, c_out, dtype, zero_init=zero_init), ReLU(dtype=dtype)]

    def residual(width):
        return Residual(Sequential(*conv(width, width), *conv(width, width, zero_init_residual)))

    fh, fw = _pooled(h, 3), _pooled(w, 3)
    return Sequential(
        *conv(c, 64),
        *conv(64, 128), MaxPool2d(2, dtype=dtype), residual(128),
        *conv(128, 256), MaxPool2d(2, dtype=dtype),
        *conv(256, 512), MaxPool2d(2, dtype=dtype), residual(512),
        MaxPool2d((fh, fw), dtype=dtype), Flatten(dtype=dtype),
        Linear(512, classes, bias=False, dtype=dtype), Scale(0.125, dtype=dtype),
    )


MODELS = {"lenet": lenet, "vgg_bn": vgg_bn, "small": small, "resnet20": resnet20, "resnet56": resnet56,
          "resnet9": resnet9}


def build(name, in_shape, classes, dtype=None):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](in_shape, classes, dtype=dtype)
