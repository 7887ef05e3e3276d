"""What every layer shares: parameters, gradients, mode, dtype and input checks."""
import numpy

from gpucnn import backend


class Layer:
    """A layer is `forward(x) -> y` and `backward(dy) -> dx`.

    `params` holds the learnable arrays under PyTorch's names, `grads` their gradients
    after a backward (overwritten, not accumulated), `buffers` the state that is saved
    but not learned (BatchNorm's running statistics).

    Arrays may come in any memory order; results keep the order of what they were made
    from where NumPy allows (ufuncs do by themselves). On NumPy, the banded Conv2d hands
    out (N, H, C, W) memory order, and a net that keeps it end to end skips a transpose
    per conv each way (a LeNet step: 7.3 to 6.2 ms); mixing orders costs more than that.
    """

    # Layers whose backward takes input_grad=False and then skips computing dX.
    skips_input_grad = False

    def __init__(self, dtype=None):
        self.dtype = numpy.dtype(dtype or numpy.float32)
        if self.dtype.kind != "f":
            raise ValueError(f"{type(self).__name__}: dtype must be a float type, got {self.dtype}")
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self._saved = None

    def __call__(self, *args):
        return self.forward(*args)

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # --- what forward saves for backward ---------------------------------------
    def save(self, *items):
        self._saved = items

    def saved(self):
        if self._saved is None:
            raise ValueError(f"{type(self).__name__}: backward called before forward")
        return self._saved

    def release(self):
        """Drop what the last step left behind (saved activations, gradients), so that
        its memory can be freed; the next forward/backward make them afresh. Layers held
        as attributes (a block's inner layers) are released too."""
        self._saved = None
        self.grads = {}
        for value in vars(self).values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if item is not self and callable(getattr(item, "release", None)) and hasattr(item, "forward"):
                    item.release()

    def int_pair(self, v, what, low=1):
        """(h, w) from an int or a pair of ints, each >= low (PyTorch's kernel_size/stride/padding)."""
        pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        if len(pair) != 2 or not all(
            isinstance(p, (int, numpy.integer)) and not isinstance(p, bool) and p >= low for p in pair
        ):
            kind = "positive" if low >= 1 else "non-negative"
            raise ValueError(f"{type(self).__name__}: {what} must be a {kind} int or a pair of them, got {v!r}")
        return int(pair[0]), int(pair[1])

    # --- input checks: a clear ValueError instead of a traceback from deep in NumPy --
    def check_input(self, x, ndim=None, channels=None, what="input"):
        """ndim None: any rank (array-ness, dtype and device are still checked)."""
        name = type(self).__name__
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"{name}: expected an array as {what}, got {type(x).__name__}")
        if ndim is not None and x.ndim != ndim:
            layout = {2: "(N, features)", 4: "(N, C, H, W)"}.get(ndim, f"{ndim}-d")
            raise ValueError(f"{name}: expected a {ndim}-d {what} {layout}, got shape {tuple(x.shape)}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(
                f"{name}: expected {what} with {channels} channels/features on axis 1, "
                f"got shape {tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            raise ValueError(f"{name}: expected {what} of dtype {self.dtype}, got {x.dtype}")
        if self.params:
            p = next(iter(self.params.values()))
            if backend.get_array_module(x) is not backend.get_array_module(p):
                raise ValueError(
                    f"{name}: {what} is a {type(x).__module__} array but the parameters live on "
                    f"{type(p).__module__}; move one with gpucnn.backend.to_device/to_numpy"
                )

    def check_grad(self, dy, like):
        if tuple(dy.shape) != tuple(like.shape):
            raise ValueError(
                f"{type(self).__name__}: expected grad_out of shape {tuple(like.shape)} "
                f"(the forward output), got {tuple(dy.shape)}"
            )
        if dy.dtype != self.dtype:
            raise ValueError(f"{type(self).__name__}: expected grad_out of dtype {self.dtype}, got {dy.dtype}")


def walk(module, prefix=""):
    """(key prefix, leaf layer) for every leaf under `module`, depth first in PyTorch's order.
    The prefix ends in "." unless empty (a leaf walked on its own)."""
    children = getattr(module, "children", None)
    if children is None:
        yield prefix, module
        return
    for name, child in children():
        yield from walk(child, f"{prefix}{name}.")


def children_repr(module):
    """The indented "(name): child" lines of a container's repr, nested containers indented further."""
    return "".join(f"\n  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in module.children())


def leaf_dtype(module):
    """The dtype of the first leaf layer under `module` (None if it has none, or for None)."""
    if module is None:
        return None
    return next((leaf.dtype for _, leaf in walk(module) if getattr(leaf, "dtype", None) is not None), None)
