"""Run code around every leaf layer's forward and backward, for a while, without touching
the layers' classes: summary reads output shapes and saved arrays, profile times each call.

Each leaf is named by its state_dict prefix ("0", "3.body.0"), the key `walk` gives it.
The wrappers are instance attributes, removed on exit, so the net is left as it was.
"""
import contextlib

from gpucnn.sequential import walk


def leaves(model):
    """[(name, leaf layer)] in state_dict order; name is the prefix without its last dot."""
    return [(prefix[:-1] or type(layer).__name__, layer) for prefix, layer in walk(model)]


@contextlib.contextmanager
def around(model, on_call):
    """While inside, every leaf's `forward` and `backward` call go through
    on_call(name, layer, "forward" | "backward", call, args, kwargs), which must call
    call(*args, **kwargs) and return its result."""
    wrapped = []
    try:
        for name, layer in leaves(model):
            for method in ("forward", "backward"):
                original = getattr(layer, method)

                def hook(*args, _name=name, _layer=layer, _method=method, _call=original, **kwargs):
                    return on_call(_name, _layer, _method, _call, args, kwargs)

                setattr(layer, method, hook)
                wrapped.append((layer, method))
        yield
    finally:
        for layer, method in wrapped:
            del layer.__dict__[method]
