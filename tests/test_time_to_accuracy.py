"""scripts/time_to_accuracy.py: reads the trainer's epoch lines, stops at the target, and
says plainly when it was not reached (a fake trainer for the paths; the real one once)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "time_to_accuracy.py")

FAKE_TRAIN = '''import sys, time
accs = [float(a) for a in sys.argv[2:]]  # "train" then one accuracy per epoch
for i, acc in enumerate(accs, 1):
    print(f"epoch {i}/{len(accs)} - 0.1s - loss 0.5 - acc 0.9 - test_loss 0.1 - test_acc {acc:.4f} - 10 img/s", flush=True)
    time.sleep(0.05)
'''


def run(tmp_path, *args, fake=True):
    if fake:
        (tmp_path / "gpucnn").mkdir(exist_ok=True)
        (tmp_path / "gpucnn" / "__init__.py").write_text("")
        (tmp_path / "gpucnn" / "__main__.py").write_text(FAKE_TRAIN)
    env = dict(os.environ, PYTHONPATH=str(tmp_path) if fake else ROOT, GPUCNN_BACKEND="numpy")
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--json", str(out), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path)  # -m looks in the working directory first
    return proc, json.loads(out.read_text())


def test_stops_at_the_first_epoch_that_reaches_the_target(tmp_path):
    proc, report = run(tmp_path, "--target", "0.99", "--", "0.97", "0.985", "0.991", "0.995", "0.996")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("reached test_acc 0.9910 >= 0.99 at epoch 3, ")
    assert report["reached"] and [e["epoch"] for e in report["epochs"]] == [1, 2, 3]  # stopped there
    seconds = [e["seconds_from_start"] for e in report["epochs"]]
    assert seconds == sorted(seconds) and seconds[0] > 0


def test_a_missed_target_fails(tmp_path):
    proc, report = run(tmp_path, "--target", "0.99", "--", "0.97", "0.98")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1].startswith("target 0.99 not reached: best test_acc 0.9800 (epoch 2)")
    assert not report["reached"]


def test_reads_the_real_trainers_epoch_lines(tmp_path):
    proc, report = run(tmp_path, "--", "--model", "small", "--dataset", "digits", "--epochs", "1",
                       "--no-progress", "--no-save", fake=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("ran 1 epoch: test_acc ")
    assert len(report["epochs"]) == 1 and 0 < report["epochs"][0]["test_acc"] <= 1
