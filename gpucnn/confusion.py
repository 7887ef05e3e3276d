"""The confusion-matrix figure of `gpucnn eval --confusion-matrix FILE`: counts on the left,
each row divided by its class's number of images on the right (so the diagonal is each
class's recall), rows the true class and columns the predicted one, labelled with the
class names."""
import numpy

from gpucnn.plot import pyplot

ANNOTATE_UP_TO = 20  # classes; beyond that the cells are too small to hold a number


def row_normalised(cm):
    """Each row of `cm` divided by its sum; a class with no images is a row of NaN."""
    support = cm.sum(axis=1, keepdims=True)
    with numpy.errstate(invalid="ignore", divide="ignore"):
        return numpy.where(support > 0, cm / numpy.maximum(support, 1), numpy.nan)


def figure(cm, names, title):
    """A matplotlib figure of the (K, K) count matrix `cm` with class `names`."""
    plt = pyplot()
    k, labels = len(names), [str(n) for n in names]
    tilt = k > 10 or max(map(len, labels), default=0) > 3  # long names overlap when upright
    side = min(max(4.0, 0.45 * k + 2.0), 14.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side + 0.6))
    for ax, values, label, fmt in ((axes[0], cm, "images", "d"), (axes[1], row_normalised(cm), "fraction of the row", ".2f")):
        top = max(float(cm.max(initial=0)), 1.0) if fmt == "d" else 1.0
        im = ax.imshow(numpy.ma.masked_invalid(values.astype(float)), cmap="Blues", vmin=0, vmax=top)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
        ticks = numpy.arange(k)
        ax.set_xticks(ticks, labels, rotation=45 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
        ax.set_yticks(ticks, labels, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title("counts" if fmt == "d" else "row-normalised (recall on the diagonal)")
        if k <= ANNOTATE_UP_TO:
            _annotate(ax, values, fmt, threshold=0.5 * top)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _annotate(ax, values, fmt, threshold):
    for (i, j), v in numpy.ndenumerate(values):
        if numpy.isnan(v) or (fmt == "d" and v == 0):
            continue
        ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                color="white" if v > threshold else "black")
