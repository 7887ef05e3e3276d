"""The benchmark script runs and writes its JSON (figures themselves live in docs/benchmarks.md)."""
import importlib.util
import json
import os
import platform
import subprocess
import sys

import pytest

from gpucnn.host_memory import user_configured_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("malloc_default", [False, True])
def test_bench_script_writes_rows(tmp_path, malloc_default):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(PYTHONPATH=ROOT, GPUCNN_BACKEND="numpy")
    args = ["--cases", "lenet-128", "--repeats", "1", "--steps", "2", "--warmup", "1", "--json", str(out)]
    if malloc_default:
        args.append("--malloc-default")
    if importlib.util.find_spec("torch") is None:
        args.append("--no-torch")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), *args],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "lenet-128" in proc.stdout
    report = json.loads(out.read_text())
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert report["keeps_freed_memory"] == (glibc and not malloc_default and not user_configured_malloc(env))
    rows = report["rows"]
    assert rows[0]["case"] == "lenet-128" and rows[0]["gpucnn_img_s"] > 0
    assert report["isolated"] and report["failed"] == []
    assert rows[0]["pid"] not in (report["pid"], os.getpid())  # measured in a process of its own
    if "--no-torch" not in args:
        assert rows[0]["torch_img_s"] > 0
        assert rows[0]["ratio"] == pytest.approx(rows[0]["gpucnn_img_s"] / rows[0]["torch_img_s"], rel=0.01)


def test_repeats_are_interleaved():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "scripts", "bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    order = []
    runners = [bench.Runner(lambda name=name: order.append(name), lambda: None, 8, 2, 1, 0) for name in "ab"]
    order.clear()  # drop the warm-up steps
    rates = bench.time_side_by_side(runners, 3)
    assert order == list("aabbaabbaabb")  # 2 steps a repeat, the frameworks alternating
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert [len(r.rates) for r in runners] == [3, 3]


def test_a_failed_case_is_reported_and_fails_the_run(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=ROOT, GPUCNN_BACKEND="numpy")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--cases", "lenet-128",
                           "--no-torch", "--case-timeout", "0.01", "--json", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "lenet-128    FAILED: timed out after 0.01 s" in proc.stdout
    report = json.loads(out.read_text())
    assert report["failed"] == ["lenet-128"] and report["rows"] == [{"case": "lenet-128", "error": "timed out after 0.01 s"}]


def test_bench_table_puts_runs_side_by_side(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_table", os.path.join(ROOT, "scripts", "bench_table.py"))
    bench_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_table)
    row = {"case": "lenet-128", "gpucnn_img_s": 250000, "torch_img_s": 100000, "ratio": 2.5,
           "gpucnn_peak_mib": 40.0, "torch_peak_mib": 80.0}
    graph = {"device": "GPU (H200)", "mode": "CUDA graphs, fp32", "rows": [row, {"case": "vgg_bn-256", "error": "exit status 1"}]}
    eager = {"device": "GPU (H200)", "mode": "eager, fp32", "rows": [dict(row, gpucnn_img_s=1530000, ratio=15.3)]}
    lines = bench_table.table([graph, eager])
    assert lines[0].endswith("| CUDA graphs, fp32 | eager, fp32 |")
    assert lines[2] == "| lenet-128 | 250.0k vs 100.0k = 2.50x; 40 vs 80 MiB | 1.53M vs 100.0k = 15.30x; 40 vs 80 MiB |"
    assert lines[3] == "| vgg_bn-256 | FAILED: exit status 1 |  |"
    assert lines[-1] == "Device: GPU (H200)."
