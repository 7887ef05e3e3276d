"""`gpucnn predict`: class probabilities of a trained net for image files.

Each image is made to look like the training data before it reaches the net:
  channels  converted to grey (Pillow's ITU-R 601-2 luma) or RGB, as the net was trained;
            transparent pixels show the background (black, or white with --invert)
  size      to the training images' H x W by one stated rule (--fit):
            stretch  the whole image resized to H x W (aspect ratio not kept; the default)
            crop     the largest centred region of the net's aspect ratio, then resized
            pad      resized to fit inside H x W, aspect kept, borders of background colour
            resampling is Pillow's bilinear filter, antialiased when shrinking
  values    8-bit pixels / 255 and 16-bit ones / 65535, so 0..1 like the training pixels;
            --invert takes 1 - v (black-on-white scans for white-on-black MNIST-style nets)
  normalise (v - mean) / std per channel with the checkpoint's training-set statistics,
            on the device, by the same code that normalises training batches
"""
import json
import os
import sys

import numpy
from tqdm import tqdm

from gpucnn import backend
from gpucnn.data.batches import iterate
from gpucnn.errors import GpucnnError, short
from gpucnn.layers.softmax import softmax

FITS = ("stretch", "crop", "pad")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UnreadableImage(ValueError):
    """One input file that is not an image Pillow can decode; the message says why."""


def pillow():
    """PIL.Image, or a GpucnnError naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise GpucnnError("gpucnn predict reads images with Pillow, which is not installed: "
                          "pip install 'gpucnn[image]'") from None
    return Image


def image_paths(paths):
    """[(path, None)] for each file named, each image file under a named folder (sorted,
    recursive, by the extensions Pillow knows, hidden entries skipped), and (path, why)
    for each path that gives none. Only regular files are read: opening a FIFO or a
    device would block or never end."""
    extensions = set(pillow().registered_extensions())
    out = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in sorted(files)
                          if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions]
            out += [(f, None if os.path.isfile(f) else _NOT_REGULAR) for f in found] \
                or [(path, "folder holds no image files")]
        elif os.path.isfile(path):
            out.append((path, None))
        elif os.path.exists(path):
            out.append((path, _NOT_REGULAR))
        else:
            out.append((path, "no such file or folder"))
    return out


_NOT_REGULAR = "not a regular file (a FIFO, socket or device is not read)"


def read_image(path, input_shape, invert=False, fit="stretch"):
    """float32 (C, H, W) in 0..1 for a net trained on `input_shape` images; UnreadableImage."""
    Image = pillow()
    from PIL import ImageOps

    channels, h, w = input_shape
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # a copy, with the rotation phone photos keep in EXIF
    except Exception as e:  # whatever a broken or hostile file makes a decoder raise: that file is skipped
        raise UnreadableImage(f"not a readable image ({_one_line(e)})") from None
    background = 255 if invert else 0
    try:
        if im.mode in _SIXTEEN_BIT:
            im, scale = Image.fromarray(numpy.asarray(im, dtype=numpy.float32)), 1 / 65535
            background = 65535 if invert else 0
        elif im.mode == "F":
            scale, background = 1.0, float(invert)
        else:
            im, scale = _flatten_alpha(Image, im, background), 1 / 255
            if im.mode not in ("1", "L", "RGB"):  # CMYK, YCbCr, LAB, ...: through RGB
                im = im.convert("RGB")
            im = im.convert("L" if channels == 1 else "RGB")
        im = _fit(Image, ImageOps, im, (w, h), fit, background)
    except (OSError, ValueError) as e:
        raise UnreadableImage(f"an image of mode {im.mode} that cannot be converted ({_one_line(e)})") from None
    x = numpy.clip(numpy.asarray(im, dtype=numpy.float32) * numpy.float32(scale), 0.0, 1.0)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if x.shape[0] != channels:  # a 16-bit or float grey image for an RGB net
        x = numpy.repeat(x, channels, axis=0)
    return 1.0 - x if invert else x



def _flatten_alpha(Image, im, background):
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode not in ("RGBA", "LA", "PA"):
        return im
    under = Image.new("RGBA", im.size, (background, background, background, 255))
    return Image.alpha_composite(under, im.convert("RGBA")).convert("RGB")


def _fit(Image, ImageOps, im, size, fit, background):
    bilinear = Image.Resampling.BILINEAR
    if fit == "stretch":
        return im.resize(size, bilinear)
    if fit == "crop":
        return ImageOps.fit(im, size, bilinear)
    if fit == "pad":
        fill = background if im.mode in ("L", "F") else (background,) * 3
        return ImageOps.pad(im, size, bilinear, color=fill)
    raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")


def predict_arrays(trained, x, batch_size=256):
    """Softmax probabilities (N, classes), float64 on the host, for images x float32
    (N, C, H, W) in 0..1, normalised and run in eval mode on the live backend."""
    model = trained.model.eval()
    out = []
    labels = numpy.zeros(len(x), dtype=numpy.int64)
    with numpy.errstate(over="ignore", invalid="ignore"):  # an overflow is reported per image, not as a raw warning
        for xb, _ in iterate(x, labels, batch_size, shuffle=False, seed=0, epoch=0, mean=trained.mean, std=trained.std):
            out.append(softmax(backend.to_numpy(model.forward(xb)).astype(numpy.float64)))
    return numpy.concatenate(out) if out else numpy.zeros((0, len(trained.classes)))


def predict_files(trained, paths, *, top_k=3, invert=False, fit="stretch", batch_size=256, progress=True):
    """Yield, in input order, a result dict per image or (path, error message) per failure.

    A result: {"path", "class", "index", "probability", "top_k": [{"class", "index",
    "probability"}, ...]}. Files are read and run `batch_size` at a time."""
    entries = image_paths(paths)
    k = max(1, min(top_k, len(trained.classes)))
    bar = tqdm(total=len(entries), unit="image", desc="predict", leave=False, dynamic_ncols=True,
               disable=not progress or len(entries) <= batch_size, file=sys.stderr)
    try:
        for start in range(0, len(entries), batch_size):
            chunk = entries[start:start + batch_size]
            images, outcome = [], []
            for path, why in chunk:
                if why is None:
                    try:
                        images.append(read_image(path, trained.input_shape, invert, fit))
                        outcome.append(path)
                        continue
                    except UnreadableImage as e:
                        why = str(e)
                outcome.append((path, why))
            probs = iter(predict_arrays(trained, numpy.stack(images), batch_size) if images else [])
            for item in outcome:
                yield item if isinstance(item, tuple) else _result_or_why(item, next(probs), trained.classes, k)
            bar.update(len(chunk))
    finally:
        bar.close()


def _result_or_why(path, p, classes, k):
    """The result, or (path, why) when the net's outputs overflowed: a NaN is no probability
    (and no JSON), and finite weights large enough can still overflow float32."""
    if not numpy.isfinite(p).all():
        return path, "the net's outputs for it are not finite numbers (its weights or this image overflow float32)"
    return _result(path, p, classes, k)


def _result(path, p, classes, k):
    order = numpy.argsort(-p, kind="stable")[:k]
    top = [{"class": classes[i], "index": int(i), "probability": float(p[i])} for i in order]
    return {"path": path, **top[0], "top_k": top}


def format_line(result):
    """path: class (probability)  top-k: class p, class p, ..."""
    top = ", ".join(f"{t['class']} {t['probability']:.4f}" for t in result["top_k"])
    return f"{result['path']}: {result['class']} ({result['probability']:.4f})  top-{len(result['top_k'])}: {top}"


def run(args, print_fn=print):
    """The command: print one line (or JSON object) per image; 1 if any file was skipped."""
    from gpucnn.trained import load_trained

    pillow()
    if args.top_k < 1:
        raise GpucnnError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise GpucnnError(f"--batch-size must be at least 1, got {args.batch_size}")
    trained = load_trained(args.checkpoint)
    skipped = 0
    for item in predict_files(trained, args.images, top_k=args.top_k, invert=args.invert, fit=args.fit,
                              batch_size=args.batch_size, progress=not args.no_progress):
        if isinstance(item, tuple):
            skipped += 1
            print(f"gpucnn: {item[0]}: {item[1]}; skipped", file=sys.stderr)
        else:
            print_fn(json.dumps(item) if args.json else format_line(item))
    if skipped:
        print(f"gpucnn: {skipped} input{'s' if skipped > 1 else ''} skipped", file=sys.stderr)
    return 1 if skipped else 0


def _one_line(e):
    return short(e) if str(e) else type(e).__name__
