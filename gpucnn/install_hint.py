"""How to install an optional extra, spelt one way in every message and help text.

gpucnn is on no package index, so `pip install 'gpucnn[plot]'` resolves only where gpucnn
is already installed from a local copy. What works for everyone who has the source is pip
run in the clone, naming the extra of the project there.
"""
import importlib

from gpucnn.errors import GpucnnError


def install_hint(extra):
    """'pip install ".[EXTRA]" (in the gpucnn clone)', the one spelling."""
    return f'pip install ".[{extra}]" (in the gpucnn clone)'


def require(module, extra, needs, error=GpucnnError):
    """`module` imported (importlib.import_module), or error('NEEDS: <install_hint(extra)>')
    when it is not installed: the one way an optional package is asked for."""
    try:
        importlib.import_module(module.partition(".")[0])  # a blocked package blocks its loaded submodules, as `import` does
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{needs}: {install_hint(extra)}") from None
