"""What `gpucnn eval` shows of a checkpoint's predictions (gpucnn.evaluation): the text
table, the --json document, the --confusion-matrix and --mistakes images.

Precision, recall and F1 follow scikit-learn's classification_report: a class never
predicted has precision 0 (its zero_division default), and F1 is 0 when precision and
recall both are. The averages are the macro (plain mean over classes) and the weighted
(by support) ones. Every image is checked before the evaluation runs, by the rules of
`gpucnn plot -o` (gpucnn.plot.check_image_output).
"""
import json
import math
import sys

import numpy

from gpucnn.data.image import printable
from gpucnn.errors import GpucnnError
from gpucnn.outputs import check_outside
from gpucnn.plot import check_image_output, pyplot, save_figure

IMAGES = {"confusion_matrix": "--confusion-matrix", "mistakes": "--mistakes"}


def check_outputs(args, dataset_file=None):
    """Start-up check of eval's image flags; returns {key: (path, format)} for those given.
    A missing matplotlib is told here, before any work; an image inside a --dataset FOLDER
    is refused."""
    if args.mistakes_count < 1:
        raise GpucnnError(f"--mistakes-count must be at least 1, got {args.mistakes_count}")
    wanted = {key: getattr(args, key) for key in IMAGES if getattr(args, key)}
    if not wanted:
        return {}
    pyplot()
    from gpucnn.data.datasets import image_folder

    check_outside(image_folder(dataset_file) if dataset_file else None, **{IMAGES[k]: p for k, p in wanted.items()})
    inputs = {"--checkpoint": args.checkpoint, "--dataset": dataset_file}
    checked = {}
    for key, path in wanted.items():
        others = {**inputs, **{IMAGES[k]: p for k, (p, _) in checked.items()}}
        checked[key] = check_image_output(path, IMAGES[key], **others)
    return checked


def class_metrics(cm):
    """Per-class precision, recall, F1 and support from a confusion matrix (rows: true)."""
    cm = numpy.asarray(cm, dtype=numpy.int64)
    hits, support, chosen = numpy.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = numpy.divide(hits, chosen, out=numpy.zeros(len(cm)), where=chosen > 0)
    recall = numpy.divide(hits, support, out=numpy.zeros(len(cm)), where=support > 0)
    both = precision + recall
    f1 = numpy.divide(2 * precision * recall, both, out=numpy.zeros(len(cm)), where=both > 0)
    return precision, recall, f1, support


def report(predictions, names):
    """The --json document's numbers: accuracy, loss, per class and averaged metrics, and
    the confusion matrix (rows: true class, columns: predicted)."""
    cm = predictions.confusion_matrix()
    precision, recall, f1, support = class_metrics(cm)
    total = int(support.sum())

    def averaged(weights):
        return {"precision": float(numpy.average(precision, weights=weights)),
                "recall": float(numpy.average(recall, weights=weights)),
                "f1": float(numpy.average(f1, weights=weights)), "support": total}

    return {
        "accuracy": _finite(predictions.accuracy), "loss": _finite(predictions.loss), "images": total,
        "classes": [str(n) for n in names],
        "per_class": [{"class": str(n), "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for n, p, r, f, s in zip(names, precision, recall, f1, support)],
        "macro_avg": averaged(None) if len(cm) else None,
        "weighted_avg": averaged(support) if total else None,
        "confusion_matrix": cm.tolist(),
    }


def _finite(v):
    return v if math.isfinite(v) else None  # strict JSON has no NaN


def show(args, predictions, names, images, outputs, *, header, about):
    """Print the report (text, or one JSON document with --json), then write the images
    `outputs` (from check_outputs) asks for. `about`: what the JSON says of the run."""
    if args.json:
        print(json.dumps({**about, **report(predictions, names)}, allow_nan=False))
    else:
        print(f"{header}: loss {predictions.loss:.4f}, accuracy {predictions.accuracy:.4f}")
        print(f"{'class':<16} {'accuracy':>8}")
        for label, a in zip(names, predictions.per_class_accuracy()):
            print(f"{printable(str(label)):<16} {a:>8.4f}")  # a class name stays on its row
    said = sys.stderr if args.json else sys.stdout  # --json: stdout holds the document alone
    if "confusion_matrix" in outputs:
        from gpucnn import confusion

        path, fmt = outputs["confusion_matrix"]
        save_figure(confusion.figure(predictions.confusion_matrix(), names, f"confusion matrix: {header}"), path, fmt)
        print(f"wrote {path}", file=said)
    if "mistakes" in outputs:
        from gpucnn import mistakes

        path, fmt = outputs["mistakes"]
        fig = mistakes.figure(images, predictions, names, args.mistakes_count,
                              f"most confident mistakes: {header}")
        save_figure(fig, path, fmt)
        print(f"wrote {path}", file=said)
