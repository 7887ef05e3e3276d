"""Random-resized-crop (torchvision's RandomResizedCrop) on the device, and the choice of
augmentation (--augmentation).

The boxes are drawn on the host, vectorised, from the epoch's augmentation generator
(batches.epoch_plan: seeded by (seed, epoch)), so a resumed run and both backends crop
the same boxes. The crop is resized back to the image's own size, bilinearly with
half-pixel centres (PyTorch's interpolate(mode="bilinear", align_corners=False), which
torchvision's resize of a tensor calls). A box never exceeds the image, so the resize
only enlarges and antialiasing never applies. NumPy: two batched matrix products, all
images at once; CuPy: kernels/rrc.cu, one thread per output pixel, the same weights.
"""
import math

import numpy

from .. import backend

KINDS = ("crop-flip", "rrc-flip")  # --augmentation's choices (the command line's help says what each does)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10  # torchvision's attempts before the centre-crop fallback


def rrc_boxes(rng, n, height, width, scale=SCALE, ratio=RATIO):
    """(n, 4) int64 boxes (top, left, h, w): torchvision's RandomResizedCrop.get_params
    for n images at once. Each image takes its first of TRIES draws (area fraction uniform in
    `scale`, log aspect uniform in log `ratio`, w = round(sqrt(area * aspect)), h =
    round(sqrt(area / aspect)), Python's round) that fits, placed uniformly; if none fits,
    the centre crop of the image clamped to `ratio`."""
    area = height * width
    target = area * rng.uniform(scale[0], scale[1], size=(n, TRIES))
    aspect = numpy.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, TRIES)))
    w = numpy.round(numpy.sqrt(target * aspect)).astype(numpy.int64)  # half to even, as Python's round
    h = numpy.round(numpy.sqrt(target / aspect)).astype(numpy.int64)
    place = rng.random(size=(n, 2))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    rows = numpy.arange(n)
    h, w = h[rows, first], w[rows, first]
    top = (place[:, 0] * (height - h + 1)).astype(numpy.int64)
    left = (place[:, 1] * (width - w + 1)).astype(numpy.int64)
    fh, fw = _fallback(height, width, ratio)
    none = ~fits.any(axis=1)
    h, w = numpy.where(none, fh, h), numpy.where(none, fw, w)
    top = numpy.where(none, (height - fh) // 2, top)
    left = numpy.where(none, (width - fw) // 2, left)
    return numpy.stack([top, left, h, w], axis=1)


def _fallback(height, width, ratio):
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def source_coords(start, size, out):
    """For each output index 0..out-1 of each image: (i0, i1, frac) into the image's axis,
    for a crop [start, start + size) resized to `out` with half-pixel centres (clamped at
    the crop's edges). start, size: (B,) ints. Float32 math, as the kernel does it."""
    f32 = numpy.float32
    scale = size.astype(f32) / f32(out)                                # (B,)
    src = (numpy.arange(out, dtype=f32) + f32(0.5)) * scale[:, None] - f32(0.5)
    src = numpy.maximum(src, f32(0))
    i0 = numpy.minimum(src.astype(numpy.int64), size[:, None] - 1)    # floor: src >= 0
    frac = src - i0.astype(f32)
    i1 = numpy.minimum(i0 + 1, size[:, None] - 1)
    return start[:, None] + i0, start[:, None] + i1, frac


def rrc_numpy(x, boxes, flips):
    """x (B, C, H, W) float32 -> the boxes resized back to (H, W), flipped where flips.

    Bilinear resizing is separable and linear: each axis is resampled by a per-image matrix
    with two weights a row (1 - frac at i0, frac at i1), so out = Wy @ x @ Wx^T, two batched
    matrix products (BLAS), several times faster than gathering four neighbours per pixel."""
    b, c, height, width = x.shape
    boxes = numpy.asarray(boxes)
    y0, y1, fy = source_coords(boxes[:, 0], boxes[:, 2], height)      # (B, H)
    x0, x1, fx = source_coords(boxes[:, 1], boxes[:, 3], width)       # (B, W)
    flip = numpy.asarray(flips, bool)[:, None]
    x0, x1, fx = (numpy.where(flip, a[:, ::-1], a) for a in (x0, x1, fx))  # a flip reads the columns backwards
    rows = _interpolation_matrix(y0, y1, fy, height)[:, None]                   # (B, 1, H, H)
    cols = _interpolation_matrix(x0, x1, fx, width).transpose(0, 2, 1)[:, None]  # (B, 1, W, W)
    return rows @ x.astype(numpy.float32, copy=False) @ cols


def _interpolation_matrix(i0, i1, frac, size):
    """(B, out, size) float32: row o of image b holds 1 - frac at i0 and frac at i1."""
    b, out = i0.shape
    m = numpy.zeros((b, out, size), numpy.float32)
    image, row = numpy.arange(b)[:, None], numpy.arange(out)[None, :]
    m[image, row, i0] = numpy.float32(1) - frac
    m[image, row, i1] += frac  # where i1 == i0 (the box's last pixel) the weights add up
    return m


def rrc_cupy(x, boxes, flips):
    """The same on CuPy, by kernels/rrc.cu (x float32 or float64, C-contiguous)."""
    from gpucnn import kernels

    cupy = backend.cupy_module()
    x = cupy.ascontiguousarray(x)
    out = cupy.empty_like(x)
    _, c, height, width = x.shape
    params = cupy.asarray(numpy.concatenate([numpy.asarray(boxes, numpy.int32),
                                             numpy.asarray(flips, numpy.int32)[:, None]], axis=1))
    kernels.launch("rrc.cu", "random_resized_crop", x.dtype, out.size,
                   (x, out, params, numpy.int64(out.size), numpy.int32(c), numpy.int32(height), numpy.int32(width)))
    return out


def random_resized_crop(x, boxes, flips):
    """On the backend that holds x."""
    return rrc_cupy(x, boxes, flips) if backend.is_cupy_array(x) else rrc_numpy(x, boxes, flips)
