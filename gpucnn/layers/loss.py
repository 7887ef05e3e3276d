"""Softmax followed by cross-entropy, fused, averaged over the batch (F.cross_entropy's mean).

With z = logits of one row and p its target distribution (one-hot for a class index):

    log softmax(z) = z - max(z) - log(sum(exp(z - max(z))))      (log-sum-exp: no overflow)
    loss = -(1/N) * sum_rows sum_c p_c * log softmax(z)_c
    d loss / d z = (softmax(z) * sum_c p_c - p) / N              (= (softmax(z) - p) / N)

Label smoothing eps (PyTorch's label_smoothing) mixes the target with the uniform
distribution over the C classes before the formulas above: p <- (1 - eps) * p + eps / C
(for class indices p is one-hot first), so with indices

    loss = -(1/N) * sum_rows [(1 - eps) * log softmax(z)_y + (eps / C) * sum_c log softmax(z)_c]

Fusing the two is what makes it stable: the gradient never divides by a probability that
underflowed to 0, and logits like 1e4 give a finite loss and the exact gradient. No argmax
is taken, so tied maximum logits need no tie rule: each gets an equal share of probability.
"""

from gpucnn import backend
from gpucnn.layers.base import Layer


class SoftmaxCrossEntropy(Layer):
    def __init__(self, label_smoothing=0.0, dtype=None):
        super().__init__(dtype)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.probs = None

    def forward(self, logits, target, check=True):
        """Mean loss as a 0-d array on the logits' backend.

        `target`: class indices, an integer array of shape (N,), or class probabilities of
        shape (N, C) and the logits' dtype. `check=False` skips the class-index range check,
        the only step that reads device memory back to the host (for CUDA-graph capture,
        where the data loader has already validated the labels).
        """
        self.check_input(logits, 2, what="logits")
        xp = backend.get_array_module(logits)
        n, c = logits.shape
        indices = self._check_target(logits, target, check)
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = xp.exp(shifted)  # one exp pass serves both the probabilities and log-sum-exp
        total = e.sum(axis=1, keepdims=True)
        self.probs = e / total
        log_total = xp.log(total)
        eps = self.label_smoothing
        if indices:  # only the target entries of log softmax are needed
            picked = xp.take_along_axis(shifted, target.reshape(n, 1), axis=1) - log_total
            loss = -picked.sum() / n
            if eps:  # the uniform part: the mean of log softmax over the classes
                loss = (1 - eps) * loss - eps * (shifted.sum() / c - log_total.sum()) / n
        else:
            if eps:
                target = target * (1 - eps) + eps / c
            loss = -(target * (shifted - log_total)).sum() / n
        self.save(target, indices)
        return xp.asarray(loss, dtype=self.dtype)

    def release(self):
        super().release()
        self.probs = None

    def backward(self, grad_out=None):
        """d loss / d logits, times grad_out (a scalar) if one is given."""
        target, indices = self.saved()
        xp = backend.get_array_module(self.probs)
        n = self.probs.shape[0]
        eps = self.label_smoothing
        if indices:
            grad = self.probs - eps / self.probs.shape[1] if eps else self.probs.copy()
            grad[xp.arange(n), target] -= 1 - eps  # one (row, class) pair per row: no repeats
        else:
            grad = self.probs * target.sum(axis=1, keepdims=True) - target
        grad /= n
        if grad_out is not None:
            if getattr(grad_out, "size", 1) != 1:
                raise ValueError(f"SoftmaxCrossEntropy: grad_out must be a scalar, got shape {tuple(grad_out.shape)}")
            if backend.is_cupy_array(grad_out):
                grad *= grad_out.reshape(()).astype(grad.dtype)  # stays on the device: no sync
            else:
                grad *= grad.dtype.type(backend.to_numpy(grad_out).reshape(()))
        return grad

    def _check_target(self, logits, target, check):
        """Validate target's kind and shape; return True for class indices, False for probabilities."""
        n, c = logits.shape
        if not hasattr(target, "shape") or not hasattr(target, "dtype"):
            raise ValueError(f"SoftmaxCrossEntropy: expected an array as target, got {type(target).__name__}")
        if backend.get_array_module(target) is not backend.get_array_module(logits):
            raise ValueError(
                f"SoftmaxCrossEntropy: target is a {type(target).__module__} array but the logits are "
                f"{type(logits).__module__}; move one with gpucnn.backend.to_device/to_numpy"
            )
        if target.dtype.kind in "iu":
            if tuple(target.shape) != (n,):
                raise ValueError(
                    f"SoftmaxCrossEntropy: class-index target must have shape ({n},) to match logits "
                    f"{tuple(logits.shape)}, got {tuple(target.shape)}"
                )
            if check:
                # One reduction and one read-back (a GPU would silently index out of bounds).
                out_of_range = (target < 0) | (target >= c)
                if bool(out_of_range.any()):
                    bad = backend.to_numpy(target[out_of_range])[0]
                    raise ValueError(f"SoftmaxCrossEntropy: target class {bad} is out of range 0..{c - 1}")
            return True
        if target.dtype != logits.dtype:
            raise ValueError(
                f"SoftmaxCrossEntropy: target must be integer class indices or probabilities of dtype "
                f"{logits.dtype}, got {target.dtype}"
            )
        if tuple(target.shape) != (n, c):
            raise ValueError(
                f"SoftmaxCrossEntropy: probability target must have the logits' shape {(n, c)}, "
                f"got {tuple(target.shape)}"
            )
        return False
