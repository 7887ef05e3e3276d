"""Which gpucnn the tests import: the tree they sit in, or an installed copy of it.

CI installs the package (`pip install ".[test]"`) and tests that copy, which is what a user
gets. Locally, a copy installed before an edit is stale: pytest would pass or fail on code
that is no longer the tree's. conftest.py names the code under test in pytest's header, and
stops the run when the imported copy differs from the tree (GPUCNN_TEST_INSTALLED=1 lets a
run test a differing copy on purpose, still saying so first).
"""
import filecmp
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDE = "GPUCNN_TEST_INSTALLED"


def _files(top, suffixes):
    """{path relative to top: absolute path} of the files under top ending in `suffixes`."""
    found = {}
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        for name in files:
            if name.endswith(suffixes):
                found[os.path.relpath(os.path.join(d, name), top)] = os.path.join(d, name)
    return found


def differences(package_dir, root=ROOT):
    """Files (tree-relative) in which the package at package_dir differs from the tree at root:
    gpucnn/**.py, and kernels/* (an installed wheel carries them as gpucnn/_kernels)."""
    diffs = []
    pairs = [(os.path.join(root, "gpucnn"), package_dir, "gpucnn", (".py",)),
             (os.path.join(root, "kernels"), os.path.join(package_dir, "_kernels"), "kernels", ("",))]
    for tree, copy, label, suffixes in pairs:
        if label == "kernels" and not os.path.isdir(copy):
            continue  # not a wheel install: kernels.py reads the tree's kernels/ itself
        ours, theirs = _files(tree, suffixes), _files(copy, suffixes)
        for rel in sorted(set(ours) | set(theirs)):
            if rel not in ours or rel not in theirs or not filecmp.cmp(ours[rel], theirs[rel], shallow=False):
                diffs.append(os.path.join(label, rel))
    return diffs


def describe(package_dir, root=ROOT, environ=os.environ):
    """(header line, error or None): what pytest tests, and why it must not, if it must not."""
    tree = os.path.join(root, "gpucnn")
    if os.path.realpath(package_dir) == os.path.realpath(tree):
        return f"gpucnn under test: the tree, {tree}", None
    diffs = differences(package_dir, root)
    if not diffs:
        return f"gpucnn under test: the installed copy at {package_dir}, identical to the tree", None
    shown = ", ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")
    line = (f"gpucnn under test: the installed copy at {package_dir}, which DIFFERS from the tree "
            f"{root} in {shown}")
    if environ.get(OVERRIDE) == "1":
        return line + f" (tested anyway: {OVERRIDE}=1)", None
    return line, (f"{line}.\nThese tests would not test your edits. Reinstall (pip install \".[test]\"), or install "
                  f"editable (pip install -e \".[test]\"), or run with PYTHONPATH={root}; "
                  f"{OVERRIDE}=1 tests the installed copy anyway.")
