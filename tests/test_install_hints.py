"""Every install hint gpucnn prints names an extra that exists, in the one spelling that works
from a clone (gpucnn is on no package index: 'gpucnn[plot]' would resolve nowhere)."""
import os
import re
import sys

from gpucnn.install_hint import install_hint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sources():
    for d, _, files in os.walk(os.path.join(ROOT, "gpucnn")):
        for name in files:
            if name.endswith(".py") and name != "install_hint.py":
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    yield os.path.relpath(os.path.join(d, name), ROOT), f.read()


def _extras():
    if sys.version_info >= (3, 11):
        import tomllib

        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            return set(tomllib.load(f)["project"]["optional-dependencies"])
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:  # 3.10: no tomllib
        text = f.read().split("[project.optional-dependencies]")[1].split("\n[")[0]
    return set(re.findall(r"^([\w-]+) = \[", text, re.M))


def test_no_hint_spells_the_package_by_its_index_name():
    offenders = [f"{path}: {m.group(0)}" for path, text in _sources() for m in re.finditer(r"gpucnn\[\w+\]", text)]
    assert offenders == []


def test_every_hinted_extra_exists_and_the_serve_extra_has_onnxruntime():
    hint = r"install_hint\(['\"]([\w-]+)['\"]\)|require\(\s*['\"][\w.]+['\"],\s*['\"]([\w-]+)['\"]"
    hinted = {m.group(1) or m.group(2) for _, text in _sources() for m in re.finditer(hint, text)}
    assert {"gpu", "dist", "plot", "image", "onnx", "safetensors", "digits"} <= hinted
    assert hinted <= _extras(), hinted - _extras()
    assert "serve" in _extras()
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        serve = re.search(r"^serve = \[(.*)\]", f.read(), re.M).group(1)
    assert "onnxruntime" in serve


def test_the_spelling():
    assert install_hint("plot") == 'pip install ".[plot]" (in the gpucnn clone)'


def test_require_gives_the_module_or_the_error_with_the_hint(monkeypatch):
    import pytest

    from gpucnn.errors import GpucnnError
    from gpucnn.install_hint import require

    import json.decoder

    assert require("json.decoder", "plot", "x") is json.decoder
    monkeypatch.setitem(sys.modules, "json", None)  # a blocked package blocks its loaded submodules too
    with pytest.raises(GpucnnError, match=r'^decoding needs json: pip install "\.\[plot\]" \(in the gpucnn clone\)$'):
        require("json.decoder", "plot", "decoding needs json")
