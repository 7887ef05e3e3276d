"""Sequential: layers run in order forward, in reverse backward.

One exception to the order: a ReLU directly before a MaxPool2d runs after it. ReLU is
monotone, so max(relu(x)) = relu(max(x)); and the gradients agree: where a window's
maximum is positive, both orders send dy to the same input (its first maximum), and where
it is not, both send nothing. With NaNs too: relu(NaN) = NaN, a window holding one pools
to NaN and sends its dy to the same last NaN in both orders, where ReLU's backward gives
0 (NaN > 0 is false) in both. Outputs and gradients are bit for bit the same, while the
ReLU touches only the pooled elements, a quarter for 2x2 pooling (LeNet on NumPy: about 8%
faster a step).

state_dict keys match PyTorch's module tree ("0.weight", "1.running_mean", and inside a
Residual "3.body.0.weight", "3.shortcut.1.running_mean"), so a PyTorch state_dict of the
same net converted to NumPy arrays loads as it is. They come from one recursive walk
(`walk`): a container is anything with `children()` -> [(name, module)], a leaf is a layer
with `params` and `buffers`; keys join the names on the way down with ".".
"""

from gpucnn import backend
from gpucnn.layers import MaxPool2d, ReLU
from gpucnn.layers.base import children_repr, leaf_dtype, walk  # noqa: F401 (gpucnn.sequential.walk: the module tree's walk)


def run_order(layers):
    """Indices of `layers` in the order forward runs them (see the module docstring)."""
    order = list(range(len(layers)))
    i = 0
    while i + 1 < len(order):
        if type(layers[i]) is ReLU and type(layers[i + 1]) is MaxPool2d:
            order[i], order[i + 1] = i + 1, i
            i += 2
        else:
            i += 1
    return order


class Param:
    """A handle on one learnable array: optimisers read `.value` and `.grad` through it,
    because a layer makes a fresh gradient array at every backward."""

    __slots__ = ("key", "layer", "name")

    def __init__(self, key, layer, name):
        self.key, self.layer, self.name = key, layer, name

    @property
    def value(self):
        return self.layer.params[self.name]

    @property
    def grad(self):
        return self.layer.grads.get(self.name)

    def __repr__(self):
        return f"Param({self.key}, shape={tuple(self.value.shape)})"


class Sequential:
    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not (hasattr(layer, "forward") and hasattr(layer, "backward")):
                raise ValueError(f"Sequential: item {i} ({type(layer).__name__}) is not a layer")
        self.layers = list(layers)
        self.training = True

    def __call__(self, x):
        return self.forward(x)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        return f"Sequential({children_repr(self)}\n)"

    def children(self):
        """(name, layer) pairs, named by position like nn.Sequential."""
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def leaves(self):
        """Every leaf layer, nested ones included, in state_dict order."""
        return [layer for _, layer in walk(self)]

    @property
    def dtype(self):
        """The float type of the first leaf layer (the net computes in it)."""
        return leaf_dtype(self)

    def forward(self, x):
        for i in run_order(self.layers):
            x = self.layers[i].forward(x)
        return x

    def backward(self, grad_out, input_grad=True):
        """Backward through every layer; input_grad=False lets the first layer skip dX
        (the trainer has no use for it) and returns None."""
        if not self.layers:
            return grad_out if input_grad else None
        first, *rest = [self.layers[i] for i in run_order(self.layers)]
        for layer in reversed(rest):
            grad_out = layer.backward(grad_out)
        if not input_grad and getattr(first, "skips_input_grad", False):
            first.backward(grad_out, input_grad=False)
            return None
        grad_in = first.backward(grad_out)
        return grad_in if input_grad else None

    def release(self):
        """Every layer drops its saved activations and gradients (see Layer.release)."""
        for layer in self.layers:
            layer.release()

    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return [Param(prefix + n, layer, n) for prefix, layer in walk(self) for n in layer.params]

    def num_parameters(self):
        return sum(int(p.value.size) for p in self.parameters())

    def _entries(self):
        """(key, layer, store, name) for every saved array, in PyTorch's order."""
        for prefix, layer in walk(self):
            for store in (layer.params, layer.buffers):
                for n in store:
                    yield prefix + n, layer, store, n

    def state_dict(self):
        """Host (NumPy) copies of every parameter and buffer."""
        return {key: backend.to_numpy(store[n]).copy() for key, _, store, n in self._entries()}

    def load_state_dict(self, state):
        """Load arrays by key; every key must match in name and shape (strict, like PyTorch)."""
        state = {k: _as_numpy(v) for k, v in state.items()}
        own = {key: (layer, store, n) for key, layer, store, n in self._entries()}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"Sequential.load_state_dict: keys do not match this model "
                f"(missing: {missing or 'none'}; unexpected: {unexpected or 'none'})"
            )
        for key, (layer, store, n) in own.items():
            old, new = store[n], state[key]
            if tuple(old.shape) != tuple(new.shape):
                raise ValueError(
                    f"Sequential.load_state_dict: {key} has shape {tuple(new.shape)}, "
                    f"this model's {type(layer).__name__} expects {tuple(old.shape)}"
                )
        for key, (layer, store, n) in own.items():
            # In place: optimisers and captured CUDA graphs hold these very arrays.
            xp = backend.get_array_module(store[n])
            store[n][...] = xp.asarray(state[key], dtype=store[n].dtype)


def _as_numpy(v):
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return backend.to_numpy(v)
