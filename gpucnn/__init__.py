"""gpucnn: a CNN trainer whose every layer's forward and backward is written out.

The backend (NumPy or CuPy) is chosen when `gpucnn.backend` is first imported, from
GPUCNN_BACKEND. Attributes here load lazily so the command line can read --backend
before that happens.
"""
__version__ = "0.1.0"

_LAZY = {
    "Sequential": ("gpucnn.sequential", "Sequential"),
    "backend": ("gpucnn.backend", None),
    "layers": ("gpucnn.layers", None),
    "seed": ("gpucnn.init", "seed"),
}


def __getattr__(attr):
    if attr not in _LAZY:
        raise AttributeError(f"module 'gpucnn' has no attribute {attr!r}")
    import importlib

    module_name, member = _LAZY[attr]
    module = importlib.import_module(module_name)
    return module if member is None else getattr(module, member)


__all__ = ["Sequential", "backend", "layers", "seed", "__version__"]
