"""Numbers entering from files must be finite: a NaN or infinite weight is refused, named,
before any work, as a NaN pixel in the training data is (gpucnn.data.npz)."""
import numpy


def check_finite(arrays, where, error):
    """error(message) naming the first array in `arrays` ({name: array}) holding a NaN or an
    infinity, with how many it holds, and how many arrays do; `where` starts the message."""
    bad = [(name, a) for name, a in arrays.items() if _has_non_finite(a)]
    if not bad:
        return
    name, a = bad[0]
    a = numpy.asarray(a)
    nans, infs = int(numpy.isnan(a).sum()), int(numpy.isinf(a).sum())
    what = " and ".join(f"{n:,} {kind}" for n, kind in ((nans, "NaN"), (infs, "infinite")) if n)
    more = f" ({len(bad)} arrays hold such values)" if len(bad) > 1 else ""
    raise error(f"{where}: {name} holds {what} value{'s' if nans + infs > 1 else ''} of {a.size:,}{more}; "
                f"weights must be finite numbers (the file is damaged, or saved from a diverged run)")


def _has_non_finite(a):
    a = numpy.asarray(a)
    return a.dtype.kind in "fc" and not numpy.isfinite(a).all()
