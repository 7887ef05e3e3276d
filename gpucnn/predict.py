"""`gpucnn predict`: class probabilities of a trained net for image files.

Each image is made to look like the training data before it reaches the net, by the same
code that decodes folder datasets for training (gpucnn/data/image.py, where the rules are):
grey or RGB as the net was trained, resized to its H x W by --fit (stretch, crop or pad),
pixels scaled to 0..1, then normalised on the device with the checkpoint's mean/std by the
code that normalises training batches. --invert makes the background white and takes
1 - v (black-on-white scans for white-on-black MNIST-style nets).
"""
import json
import os
import sys

import numpy
from tqdm import tqdm

from gpucnn import backend
from gpucnn.data import image
from gpucnn.data.image import FITS, UnreadableImage, pillow, printable, why_not_readable  # noqa: F401 (predict's API)
from gpucnn.errors import GpucnnError
from gpucnn.evaluation import batches
from gpucnn.layers.softmax import softmax

def image_paths(paths):
    """[(path, None)] for each file named, each image file under a named folder (sorted,
    recursive, by the extensions Pillow knows, hidden entries skipped), and (path, why)
    for each path that gives none. Only regular files are read: opening a FIFO or a
    device would block or never end; a dangling link or a link loop is named as such."""
    suffixes = image.extensions()
    out = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in sorted(files)
                          if not f.startswith(".") and os.path.splitext(f)[1].lower() in suffixes]
            out += [(f, why_not_readable(f)) for f in found] or [(path, "folder holds no image files")]
        else:
            out.append((path, why_not_readable(path)))
    return out


def read_image(path, input_shape, invert=False, fit="stretch", warn=None):
    """float32 (C, H, W) in 0..1 for a net trained on `input_shape` images (data/image.py's
    rules); with invert, transparent pixels and pad borders are white and v becomes 1 - v."""
    x = image.read_image(path, input_shape, fit, background=255 if invert else 0, warn=warn)
    return 1.0 - x if invert else x


def predict_arrays(trained, x, batch_size=256, tta=None):
    """Softmax probabilities (N, classes), float64 on the host, for images x float32
    (N, C, H, W) in 0..1: eval's loop (gpucnn.evaluation.batches) on the live backend, with
    the flip TTA the run was trained with (trained.tta) unless `tta` says otherwise."""
    tta = trained.tta if tta is None else tta
    out = []
    labels = numpy.zeros(len(x), dtype=numpy.int64)
    with numpy.errstate(over="ignore", invalid="ignore"):  # an overflow is reported per image, not as a raw warning
        for logits, _, _ in batches(trained.model, x, labels, trained.mean, trained.std, batch_size=batch_size, tta=tta):
            out.append(softmax(backend.to_numpy(logits).astype(numpy.float64)))
    return numpy.concatenate(out) if out else numpy.zeros((0, len(trained.classes)))


def predict_files(trained, paths, *, top_k=3, invert=False, fit=None, batch_size=256, progress=True, warn=None,
                  tta=None):
    """Yield, in input order, a result dict per image or (path, error message) per failure.

    A result: {"path", "class", "index", "probability", "top_k": [{"class", "index",
    "probability"}, ...]}. Files are read and run `batch_size` at a time. warn(path, line)
    hears each warning Pillow raised while reading a file (default: dropped). fit None: as the
    net's training images were (trained.fit); tta None: as the run was trained (trained.tta)."""
    fit = fit or trained.fit
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
                        images.append(read_image(path, trained.input_shape, invert, fit,
                                                  warn=warn and (lambda line, p=path: warn(p, line))))
                        outcome.append(path)
                        continue
                    except UnreadableImage as e:
                        why = str(e)
                outcome.append((path, why))
            probs = iter(predict_arrays(trained, numpy.stack(images), batch_size, tta) if images else [])
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
    top = ", ".join(f"{printable(t['class'])} {t['probability']:.4f}" for t in result["top_k"])
    return f"{printable(result['path'])}: {printable(result['class'])} ({result['probability']:.4f})  top-{len(result['top_k'])}: {top}"


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

    def warn(path, line):
        print(f"gpucnn: {printable(path)}: warning: {line}", file=sys.stderr)

    for item in predict_files(trained, args.images, top_k=args.top_k, invert=args.invert, fit=args.fit,
                              batch_size=args.batch_size, progress=not args.no_progress, warn=warn,
                              tta=args.tta):
        if isinstance(item, tuple):
            skipped += 1
            print(f"gpucnn: {printable(item[0])}: {item[1]}; skipped", file=sys.stderr)
        else:
            print_fn(json.dumps(item) if args.json else format_line(item))
    if skipped:
        print(f"gpucnn: {skipped} input{'s' if skipped > 1 else ''} skipped", file=sys.stderr)
    return 1 if skipped else 0
