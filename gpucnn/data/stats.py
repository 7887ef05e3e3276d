"""The pixel-scale convention and per-channel statistics used for normalisation.

Convention: uint8 images are scaled by 1/255 (to 0..1); float images are taken as
already scaled. mean and std are of the scaled training pixels, one per channel, and
a batch is normalised as (x * scale - mean) / std.
"""
import numpy


def pixel_scale(dtype):
    """1/255 for uint8 images, 1 for float images."""
    return 1.0 / 255.0 if numpy.dtype(dtype) == numpy.uint8 else 1.0


def channel_stats(x, chunk=None):
    """(mean, std) per channel, float32 (C,), of x (N, C, H, W) after pixel scaling.

    Summed in float64 a chunk of images at a time (about 4M pixels, 32 MB, whatever the image
    size), so neither CIFAR-10 nor a memory-mapped folder cache larger than memory needs a
    full float64 copy. A constant channel gets std 1 so normalising never divides by zero.
    """
    n, c = x.shape[:2]
    chunk = chunk or max(1, (1 << 22) // max(1, int(numpy.prod(x.shape[1:]))))
    total = numpy.zeros(c)
    squares = numpy.zeros(c)
    for i in range(0, n, chunk):
        part = x[i:i + chunk].astype(numpy.float64) * pixel_scale(x.dtype)
        total += part.sum(axis=(0, 2, 3))
        squares += (part * part).sum(axis=(0, 2, 3))
    count = n * x.shape[2] * x.shape[3]
    if count == 0:  # no pixels (an empty split): nothing to normalise by
        return numpy.zeros(c, numpy.float32), numpy.ones(c, numpy.float32)
    mean = total / count
    std = numpy.sqrt(numpy.maximum(squares / count - mean * mean, 0.0))
    std[std < 1e-8] = 1.0
    return mean.astype(numpy.float32), std.astype(numpy.float32)
