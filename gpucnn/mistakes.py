"""The grid of `gpucnn eval --mistakes FILE`: the test images the net got wrong with the
highest probability on its (wrong) answer, most confident first, each titled with its
true class, the predicted class and that probability."""
import math

import numpy

from gpucnn.data.stats import pixel_scale
from gpucnn.plot import pyplot


def most_confident_mistakes(predictions, count):
    """Indices of up to `count` wrongly classified images, highest predicted probability
    first (ties: lower index first)."""
    wrong = numpy.flatnonzero(predictions.predicted != predictions.labels)
    order = numpy.argsort(-predictions.confidence[wrong], kind="stable")
    return wrong[order[:count]]


def displayable(image):
    """One stored image (C, H, W; uint8, or float scaled to ~0..1) as what imshow takes:
    (H, W) grey for one channel, (H, W, 3) RGB for three (others: the first channel)."""
    x = numpy.clip(numpy.asarray(image, dtype=numpy.float64) * pixel_scale(image.dtype), 0.0, 1.0)
    return x.transpose(1, 2, 0) if x.shape[0] == 3 else x[0]


def figure(images, predictions, names, count, title):
    """The grid figure for the `count` most confident mistakes among `images`, or a figure
    saying there were none."""
    plt = pyplot()
    picked = most_confident_mistakes(predictions, count)
    cols = max(1, math.ceil(math.sqrt(len(picked))))
    rows = max(1, math.ceil(len(picked) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 0.4, 2.1 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not len(picked):
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    for ax, i in zip(axes.flat, picked):
        ax.imshow(displayable(images[i]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"true {names[predictions.labels[i]]}\npred {names[predictions.predicted[i]]} "
                     f"({predictions.confidence[i]:.2f})", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
