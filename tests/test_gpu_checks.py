"""scripts/gpu_checks.sh cannot lie: run with a fake python (and nvidia-smi), a failed,
empty or timed-out step shows FAILED in the summary and makes the exit status non-zero;
only when every step did its work does it say ALL OK and exit 0."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_checks.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")

FAKE_PYTHON = r'''#!/usr/bin/env bash
# FAKE_MODE: ok | fail | skipped | gpu_skips | no_torch | slow_bench
mode=${FAKE_MODE:-ok}
if [ "$mode" = fail ]; then echo "fake python: failing on purpose" >&2; exit 3; fi
case "$*" in
  *"-m pytest"*"-m gpu"*)
    if [ "$mode" = gpu_skips ]; then
      echo "SKIPPED [1] tests/test_distributed_gpu.py:70: needs mpirun"
      echo "5 passed, 1 skipped, 11 deselected in 0.50s"
    elif [ "$mode" = skipped ]; then echo "129 skipped, 5 deselected in 3.12s"
    else echo "7 passed, 11 deselected in 0.50s"; fi ;;
  *"-m pytest"*)
    if [ "$mode" = skipped ]; then echo "129 skipped, 5 deselected in 3.12s"; else echo "7 passed, 11 deselected in 0.50s"; fi ;;
  *"-m gpucnn check"*) echo "gradient check on the cupy backend: all passed" ;;
  *bench_table.py*) exec "$REAL_PYTHON" "$@" ;;
  *bench.py*)
    if [ "$mode" = slow_bench ]; then sleep 30; fi
    json=$(echo "$*" | sed -n 's/.*--json \([^ ]*\).*/\1/p')
    echo '{"device": "GPU (fake)", "mode": "CUDA graphs, fp32", "rows": [{"case": "lenet-128",
      "gpucnn_img_s": 250000, "torch_img_s": 100000, "ratio": 2.5, "gpucnn_peak_mib": 4.0,
      "torch_peak_mib": 8.0}]}' > "$json"
    echo "case          gpucnn img/s  torch img/s  ratio  gpucnn MiB  torch MiB mem ratio"
    echo "lenet-128          250,000      100,000   2.50         4.0        8.0      0.50" ;;
  *time_to_accuracy.py*) echo "ran 1 epoch: test_acc 0.9800, 9.0 s from start" ;;
  "-c "*)  # the env step's own code, run by a real python on stand-in modules
    PYTHONPATH="$FAKE_MODULES/$mode:$FAKE_MODULES/common" exec "$REAL_PYTHON" "$@" ;;
  *) echo "fake python: not expected: $*" >&2; exit 9 ;;
esac
'''


def run(tmp_path, mode, *args, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", FAKE_PYTHON), ("nvidia-smi", "#!/bin/sh\necho 'NVIDIA Fake GPU, 580.0, 1000 MiB'\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    modules = tmp_path / "modules"
    for folder, name, text in (
            ("common", "cupy.py", "import types\n__version__ = '14.2.0'\n"
                                  "cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))\n"),
            ("common", "torch.py", "__version__ = '2.11.0'\n"),
            ("no_torch", "torch.py", "raise ImportError('No module named torch')\n")):
        (modules / folder).mkdir(parents=True, exist_ok=True)
        (modules / folder / name).write_text(text)
    mnist = tmp_path / "mnist"
    mnist.mkdir(exist_ok=True)
    (mnist / "train-images-idx3-ubyte.gz").write_bytes(b"")
    out = tmp_path / "out"
    full_env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=str(bin_dir / "python"),
                    MNIST_DIR=str(mnist), FASHION_DIR=str(tmp_path / "none"), FAKE_MODE=mode,
                    REAL_PYTHON=sys.executable, FAKE_MODULES=str(modules), **env)
    proc = subprocess.run(["bash", SCRIPT, *args, str(out)], capture_output=True, text=True, env=full_env, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    table = (out / "summary.txt").read_text()
    return proc, summary, table, out


def statuses(summary):
    return {s["name"]: s["status"] for s in summary["steps"]}


def test_all_steps_doing_their_work_is_all_ok(tmp_path):
    proc, summary, table, out = run(tmp_path, "ok", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert statuses(summary) == dict.fromkeys(["env", "nvrtc", "check", "gpu_tests", "bench", "mnist"], "ok")
    assert summary["ok"] is True and proc.stdout.rstrip().endswith("ALL OK")
    heads = {s["name"]: s["headline"] for s in summary["steps"]}
    assert heads["bench"] == "lenet-128 250,000 img/s 2.50x torch, mem 0.50x"
    assert heads["gpu_tests"] == "7 passed, 11 deselected in 0.50s"
    assert heads["mnist"].startswith("ran 1 epoch: test_acc 0.9800")
    assert "NVIDIA Fake GPU" in heads["env"] and "cupy 14.2.0" in heads["env"]
    assert table in proc.stdout  # the table is printed last
    assert "| lenet-128 | 250.0k vs 100.0k = 2.50x; 4 vs 8 MiB |" in table  # the figures, for the docs
    assert "7 passed" in (out / "all.log").read_text()


def test_a_failing_python_fails_every_step_and_the_run(tmp_path):
    proc, summary, table, _ = run(tmp_path, "fail", "--quick")
    assert proc.returncode == 1
    assert summary["ok"] is False and "SOME STEPS FAILED" in proc.stdout
    assert all(status.startswith("FAILED (exit ") for status in statuses(summary).values())
    assert table.count("FAILED") == 6


def test_tests_that_all_skip_are_not_a_pass(tmp_path):
    proc, summary, _, _ = run(tmp_path, "skipped", "--quick")
    assert proc.returncode == 1
    got = statuses(summary)
    assert got["gpu_tests"] == "FAILED (no test passed)" and got["nvrtc"] == "FAILED (no test passed)"
    assert got["bench"] == "ok"


def test_a_step_past_its_limit_is_stopped_and_failed(tmp_path):
    proc, summary, _, _ = run(tmp_path, "slow_bench", "--quick", GPU_CHECKS_MAX_STEP_S="1")
    assert proc.returncode == 1
    assert statuses(summary)["bench"] == "FAILED (timed out after 1s)"
    assert statuses(summary)["mnist"] == "ok"  # the steps after it still run


def test_steps_left_without_budget_are_skipped_and_fail_the_run(tmp_path):
    proc, summary, _, _ = run(tmp_path, "ok", "--quick", GPU_CHECKS_BUDGET_S="2")
    assert proc.returncode == 1
    assert set(statuses(summary).values()) == {"SKIPPED (no time left)"}


def test_full_mode_runs_every_step_and_returns_few_plain_files(tmp_path):
    proc, summary, _, out = run(tmp_path, "ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(statuses(summary)) == ["env", "nvrtc", "check", "gpu_tests", "bench_graph", "mnist_to_99",
                                       "bench_eager", "bench_tf32"]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # the device tool returns 8, no folders


def test_without_torch_the_env_step_is_ok_and_says_so(tmp_path):
    """torch is optional: its absence is reported, not a failure."""
    proc, summary, _, _ = run(tmp_path, "no_torch", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = next(s for s in summary["steps"] if s["name"] == "env")
    assert env["status"] == "ok" and "torch not installed" in env["headline"] and "cupy 14.2.0" in env["headline"]


@pytest.mark.parametrize("mode", ["--quick", "--full"])
def test_a_skipped_gpu_test_is_skipped_in_the_table_and_not_all_ok(tmp_path, mode):
    """The multi-rank GPU tests skip where mpirun or NCCL is missing: that is not a pass."""
    proc, summary, table, _ = run(tmp_path, "gpu_skips", *([mode] if mode == "--quick" else []))
    assert proc.returncode == 1
    got = statuses(summary)
    assert got["gpu_tests"] == "SKIPPED (1 skipped, listed below)"
    assert all(status == "ok" for name, status in got.items() if name != "gpu_tests")
    assert summary["ok"] is False
    assert "ALL OK" not in proc.stdout.replace("NOT ALL OK", "")
    assert proc.stdout.rstrip().endswith("NOT ALL OK: some steps or tests were skipped")
    assert "gpu_tests: SKIPPED [1] tests/test_distributed_gpu.py:70: needs mpirun" in table


def test_quick_limits_cover_a_cold_start():
    """On a fresh machine CuPy compiles every kernel on first use, 0.25 to 0.7 s each with
    NVRTC: each quick step's limit covers its kernels (counted on the host stand-in by
    tests/host/count_cold_kernels.py) at 0.7 s, plus 5 s to start, with 30% to spare."""
    import re

    from gpucnn import kernels

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "host", "count_cold_kernels.py"), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, GPUCNN_BACKEND="numpy"))
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["check"] >= 20 and counts["lenet_step"] >= 10  # the counter saw the work
    text = open(SCRIPT).read()
    quick = text[:text.index('else\n  cases=')]  # the common steps and the quick branch
    limits = {name: int(cap) for name, cap in re.findall(r"^\s*step (\w+) (\d+) ", quick, re.M)}
    assert set(limits) == {"env", "nvrtc", "check", "gpu_tests", "bench", "mnist"}

    def needed(n_kernels):
        return 1.3 * (0.7 * n_kernels + 5)

    assert limits["nvrtc"] >= needed(2 * len(kernels.source_files()))
    assert limits["check"] >= needed(counts["check"])
    assert limits["gpu_tests"] >= needed(counts["gpu_tests_at_least"])
    assert limits["bench"] >= needed(counts["lenet_step"]) and limits["mnist"] >= needed(counts["lenet_step"])
    budget = int(re.search(r'mode" = quick \]; then budget=\$\{GPU_CHECKS_BUDGET_S:-(\d+)\}', text).group(1))
    # a cold run: the check and the GPU tests compile, the later steps find CuPy's cache
    cold = needed(2 * len(kernels.source_files())) + needed(counts["check"]) + needed(counts["gpu_tests_at_least"])
    assert budget >= cold + 15 + 2 * 20, (budget, cold)
