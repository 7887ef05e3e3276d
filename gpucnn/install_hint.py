"""How to install an optional extra, spelt one way in every message and help text.

gpucnn is on no package index, so `pip install 'gpucnn[plot]'` resolves only where gpucnn
is already installed from a local copy. What works for everyone who has the source is pip
run in the clone, naming the extra of the project there.
"""


def install_hint(extra):
    """'pip install ".[EXTRA]" (in the gpucnn clone)', the one spelling."""
    return f'pip install ".[{extra}]" (in the gpucnn clone)'
