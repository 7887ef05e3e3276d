"""A local pytest run tests the tree, or an installed copy identical to it, or stops and says so."""
import os
import shutil
import subprocess
import sys

from code_under_test import ROOT, describe, differences


def _tree_and_copy(tmp_path):
    """A miniature tree (gpucnn/, kernels/) and a wheel-style install of it (gpucnn/_kernels)."""
    tree, site = tmp_path / "tree", tmp_path / "site"
    (tree / "gpucnn" / "layers").mkdir(parents=True)
    (tree / "kernels").mkdir()
    (tree / "gpucnn" / "__init__.py").write_text("")
    (tree / "gpucnn" / "layers" / "conv.py").write_text("def forward(): pass\n")
    (tree / "kernels" / "im2col.cu").write_text("__global__ void col2im() {}\n")
    shutil.copytree(tree / "gpucnn", site / "gpucnn")
    shutil.copytree(tree / "kernels", site / "gpucnn" / "_kernels")
    return tree, site / "gpucnn"


def test_an_identical_install_or_the_tree_itself_passes(tmp_path):
    tree, package = _tree_and_copy(tmp_path)
    assert differences(str(package), str(tree)) == []
    line, error = describe(str(package), str(tree), environ={})
    assert error is None and "installed copy" in line and "identical" in line
    line, error = describe(str(tree / "gpucnn"), str(tree), environ={})
    assert error is None and "the tree" in line


def test_a_stale_install_is_named_file_by_file(tmp_path):
    tree, package = _tree_and_copy(tmp_path)
    (tree / "kernels" / "im2col.cu").write_text("__global__ void col2im() { /* an index changed */ }\n")
    (tree / "gpucnn" / "layers" / "conv.py").write_text("def forward(): return 1\n")
    (tree / "gpucnn" / "new.py").write_text("")
    (package / "old.py").write_text("")
    assert differences(str(package), str(tree)) == ["gpucnn/layers/conv.py", "gpucnn/new.py", "gpucnn/old.py",
                                                    "kernels/im2col.cu"]
    line, error = describe(str(package), str(tree), environ={})
    assert "DIFFERS" in line and "kernels/im2col.cu" in error and "PYTHONPATH=" in error
    line, error = describe(str(package), str(tree), environ={"GPUCNN_TEST_INSTALLED": "1"})
    assert error is None and "DIFFERS" in line and "tested anyway" in line


def test_pytest_stops_before_testing_a_stale_install(tmp_path):
    """The real thing: pytest importing a copy of gpucnn edited since it was 'installed'."""
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "gpucnn"), site / "gpucnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "kernels"), site / "gpucnn" / "_kernels")
    kernel = sorted(os.listdir(site / "gpucnn" / "_kernels"))[0]
    with open(site / "gpucnn" / "_kernels" / kernel, "a") as f:
        f.write("\n// not in the tree\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("GPUCNN_TEST_INSTALLED", None)
    # from tmp_path, so the tree is not on sys.path as the current directory
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                        os.path.join(ROOT, "tests", "test_code_under_test.py"), "-k", "identical"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert r.returncode == 4, r.stdout + r.stderr
    assert f"kernels/{kernel}" in r.stdout + r.stderr and "would not test your edits" in r.stdout + r.stderr
    env["GPUCNN_TEST_INSTALLED"] = "1"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests", "test_code_under_test.py"), "-k", "identical"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert r.returncode == 0 and "DIFFERS" in r.stdout, r.stdout + r.stderr
