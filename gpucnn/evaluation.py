"""A net's predictions on a labelled set, kept on the host for every view of them.

`gpucnn eval` prints accuracy and per-class accuracy from them, writes the JSON report,
draws the confusion matrix and the grid of mistakes: all from one pass over the set.
The loss is the training loop's own (plain cross-entropy, no label smoothing), summed
per batch by the same loop (`batches`) gpucnn.train.evaluate runs.
"""
from dataclasses import dataclass

import numpy

from gpucnn import backend
from gpucnn.data.batches import iterate
from gpucnn.layers import SoftmaxCrossEntropy
from gpucnn.layers.base import leaf_dtype
from gpucnn.layers.softmax import softmax
from gpucnn.tta import predict_logits


@dataclass(eq=False)
class Predictions:
    """labels (N,) int64, predicted (N,) int64 (argmax of the logits), probabilities
    (N, K) float32 (softmax of the logits), loss: mean cross-entropy over the N images."""
    labels: numpy.ndarray
    predicted: numpy.ndarray
    probabilities: numpy.ndarray
    loss: float

    @property
    def num_classes(self):
        return self.probabilities.shape[1]

    @property
    def accuracy(self):
        return float((self.predicted == self.labels).mean()) if len(self.labels) else float("nan")

    @property
    def confidence(self):
        """The probability each image's predicted class was given."""
        return self.probabilities[numpy.arange(len(self.predicted)), self.predicted]

    def confusion_matrix(self):
        """(K, K) int64 counts: row = true class, column = predicted class."""
        k = self.num_classes
        return numpy.bincount(self.labels * k + self.predicted, minlength=k * k).reshape(k, k)

    def per_class_accuracy(self):
        """Recall of each class (NaN for a class with no images)."""
        cm = self.confusion_matrix()
        support = cm.sum(axis=1)
        with numpy.errstate(invalid="ignore", divide="ignore"):
            return [float(v) for v in numpy.diag(cm) / support]


def batches(model, x, y, mean, std, *, batch_size=1000, tta=False):
    """Each batch's (logits, labels, summed cross-entropy) on the device, `model` in eval
    mode meanwhile: the one evaluation loop, for predict and for the training loop's
    gpucnn.train.evaluate."""
    was_training = model.training
    model.eval()
    loss_fn = SoftmaxCrossEntropy(dtype=leaf_dtype(model))
    try:
        for xb, yb in iterate(x, y, batch_size, shuffle=False, seed=0, epoch=0, mean=mean, std=std,
                              dtype=loss_fn.dtype):
            logits = predict_logits(model, xb, tta)
            yield logits, yb, loss_fn.forward(logits, yb, check=False) * len(yb)
    finally:
        model.train(was_training)


def predict(model, x, y, mean, std, *, classes, batch_size=1000, tta=False):
    """Predictions of `model` in eval mode on images x (NCHW, as stored) with labels y."""
    xp = backend.xp
    total_loss = xp.zeros((), dtype=xp.float64)
    predicted, probabilities = [], []
    for logits, _, loss in batches(model, x, y, mean, std, batch_size=batch_size, tta=tta):
        total_loss += loss
        predicted.append(backend.to_numpy(logits.argmax(axis=1)))
        probabilities.append(backend.to_numpy(softmax(logits.astype(xp.float32))))
    n = len(y)
    return Predictions(
        labels=numpy.asarray(y, dtype=numpy.int64),
        predicted=numpy.concatenate(predicted).astype(numpy.int64) if n else numpy.zeros(0, numpy.int64),
        probabilities=numpy.concatenate(probabilities) if n else numpy.zeros((0, classes), numpy.float32),
        loss=float(total_loss) / n if n else float("nan"))
