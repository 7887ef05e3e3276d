"""The benchmark script runs and writes its JSON (figures themselves live in docs/benchmarks.md)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_script_writes_rows(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=ROOT, GPUCNN_BACKEND="numpy")
    args = ["--cases", "lenet-128", "--repeats", "1", "--steps", "2", "--warmup", "1", "--json", str(out)]
    if importlib.util.find_spec("torch") is None:
        args.append("--no-torch")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), *args],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "lenet-128" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["case"] == "lenet-128" and rows[0]["gpucnn_img_s"] > 0
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
