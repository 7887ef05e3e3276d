"""Every kernels/*.cu compiles with nvcc (when nvcc is on PATH), for float and double."""
import shutil

import pytest

from gpucnn import kernels

SOURCES = kernels.source_files()


def test_kernel_sources_exist():
    names = {p.name for p in SOURCES}
    assert {"im2col.cu", "maxpool.cu", "batchnorm.cu", "batchnorm_elementwise.cu", "sgd.cu", "adam.cu",
            "ema.cu", "rrc.cu"} <= names


def test_no_cuda_source_is_written_inline_in_python():
    """Every kernel is a kernels/*.cu, so the tests here compile it and tests/test_kernels_on_host.py
    runs it; CuPy's inline kernel classes would escape both."""
    import pathlib
    import re

    package = pathlib.Path(kernels.__file__).resolve().parent
    inline = re.compile(r"\b(ElementwiseKernel|ReductionKernel|RawKernel|RawModule|fuse)\(")
    found = [f"{path.relative_to(package.parent)}:{n}" for path in sorted(package.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if inline.search(line) and path.name != "kernels.py"]
    assert not found, found


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("scalar_t", ["float", "double"])
@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_nvcc_compiles(path, scalar_t):
    ok, log = kernels.nvcc_check(path, scalar_t)
    assert ok, f"{path.name} does not compile with scalar_t={scalar_t}:\n{log}"


def _nvrtc():
    """CuPy's NVRTC binding, where CuPy and its CUDA toolkit are installed (no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:
        return None


@pytest.mark.skipif(_nvrtc() is None, reason="NVRTC (CuPy with its CUDA toolkit) is not installed")
@pytest.mark.parametrize("scalar_t", ["float", "double"])
@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_nvrtc_compiles_what_the_loader_builds(path, scalar_t):
    """The exact text and options the GPU path hands NVRTC: headers inlined, no host includes."""
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(kernels.source_text(path.name), path.name, [], [])
    try:
        nvrtc.compileProgram(prog, [*kernels.nvrtc_options(scalar_t), "--gpu-architecture=compute_90"])
    except Exception as e:
        pytest.fail(f"{path.name} (scalar_t={scalar_t}) fails under NVRTC: {e}\n{nvrtc.getProgramLog(prog)}")
    assert nvrtc.getPTX(prog)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_nvcc_check_reports_a_broken_kernel(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text('extern "C" __global__ void k(scalar_t* x) { x[0] = undefined_name; }\n')
    ok, log = kernels.nvcc_check(bad)
    assert not ok and "undefined_name" in log


def test_unsupported_dtype_is_named():
    with pytest.raises(kernels.KernelError, match="float16"):
        kernels._scalar_t("float16")


def test_kernels_ship_with_the_package():
    """An installed (non-editable) gpucnn finds the .cu files inside itself, gpucnn/_kernels;
    a source checkout finds them in the top-level kernels/."""
    import pathlib

    import gpucnn

    package = pathlib.Path(gpucnn.__file__).resolve().parent
    found = kernels.kernel_dir()
    if (package.parent / "kernels").is_dir() and (package.parent / "pyproject.toml").is_file():
        assert found == package.parent / "kernels"
    else:
        assert found == package / "_kernels"


def test_shared_header_is_inlined_for_nvrtc():
    """NVRTC gets one self-contained source: the local header's text, no #include left."""
    text = kernels.source_text("im2col.cu")
    assert '#include "' not in text and "bool index32_ok(" in text


def test_missing_header_is_named(tmp_path, monkeypatch):
    (tmp_path / "k.cu").write_text('#include "nowhere.cuh"\n')
    monkeypatch.setattr(kernels, "kernel_dir", lambda: tmp_path)
    with pytest.raises(kernels.KernelError, match="k.cu includes nowhere.cuh"):
        kernels.source_text("k.cu")
