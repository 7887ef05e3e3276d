#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one command (see docs/benchmarks.md).
# Before: copy the data into the git-ignored .data/ here and carry it:
#   mkdir -p .data && cp -r ../shared/data/mnist .data/ && cp -r /usr/share/datasets/fashion-mnist .data/
# Then on the device (repo root):  bash scripts/gpu_checks.sh "$OUT"
set -uo pipefail
out=${1:-/tmp/gpucnn-gpu}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__)" | tee -a "$out/gpu.txt"
python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.txt"
python -m pytest -q tests/test_kernels_compile.py 2>&1 | tee -a "$out/gpu_tests.txt"  # NVRTC, as the loader builds them
python -m gpucnn check --backend cupy 2>&1 | tee "$out/check.txt"
python scripts/bench.py --backend cupy --json "$out/bench_graph.json" 2>&1 | tee "$out/bench.txt"
python scripts/bench.py --backend cupy --no-graph --json "$out/bench_eager.json" 2>&1 | tee -a "$out/bench.txt"
python scripts/bench.py --backend cupy --tf32 --cases vgg_bn-128 vgg_bn-256 --json "$out/bench_tf32.json" 2>&1 | tee -a "$out/bench.txt"
if [ -d .data/mnist ]; then
  python -m gpucnn train --backend cupy --model lenet --dataset mnist --data-dir .data/mnist --epochs 10 \
    --no-progress --save "$out/lenet.ckpt" 2>&1 | tee "$out/train_lenet.txt"
fi
if [ -d .data/fashion-mnist ]; then
  python -m gpucnn train --backend cupy --model vgg_bn --dataset fashion-mnist --data-dir .data/fashion-mnist \
    --epochs 2 --optimizer sgd --lr 0.05 --weight-decay 5e-4 --no-progress --no-save 2>&1 | tee "$out/train_vgg.txt"
fi
