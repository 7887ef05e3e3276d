#!/usr/bin/env bash
# The GPU check: what a session with a lent GPU runs first, in one command (docs/benchmarks.md
# gives the exact device invocation, data staging included).
#
#   bash scripts/gpu_checks.sh [--quick] OUT_DIR
#
# What it runs, each step under its own time limit (seconds), all inside one budget:
#   --quick, under 4.5 minutes (budget 270 s; a step gets what is left if that is less):
#     env 15          nvidia-smi; python, cupy and torch (optional) versions
#     nvrtc 30        the kernels compiled by NVRTC exactly as the loader does
#     check 75        gpucnn check --backend cupy (float64 gradient checks on the GPU)
#     gpu_tests 150   pytest -m gpu (every GPU test: CuPy vs NumPy, graphs, memory, NaN rule)
#     bench 45        scripts/bench.py, lenet-128, CUDA graphs, fp32, vs PyTorch
#     mnist 45        LeNet on MNIST, one epoch (test accuracy, seconds from process start)
#   The limits allow for a cold start, when CuPy compiles every kernel with NVRTC on first use
#   (0.25 to 0.7 s each; its disk cache then serves later steps and later runs on the machine).
#   Counted with tests/host/count_cold_kernels.py: nvrtc 16 compiles (8 files x 2 dtypes);
#   check about 60 kernels (4 of gpucnn's modules, about 56 of CuPy's), up to 42 s; a LeNet
#   training step about 34 (3 + 31), up to 24 s, in bench and in mnist if nothing before them
#   compiled float32; gpu_tests both dtypes of nearly everything, estimated 130, up to 95 s.
#   full, under 6 minutes (budget 345 s): env, nvrtc, check, gpu_tests (150), then
#     bench_graph 80  lenet-128 lenet-1024 vgg_bn-128 vgg_bn-256, CUDA graphs, fp32
#     mnist_to_99 70  LeNet on MNIST (README's recipe, 6 epochs), stopped at 99.0% test accuracy
#     bench_eager 70  the four cases without graphs, fp32
#     bench_tf32 70   the four cases with graphs, TF32
#     fashion 50      vgg_bn on Fashion-MNIST, one epoch: only if .data/fashion-mnist exists
# A step is ok only if its command exits 0 AND its output shows it did the work (pytest: some
# tests passed, none failed; bench: a row per case). A step that fails, runs out of time, or
# finds no budget left is FAILED (or SKIPPED), and then the exit status is 1. A GPU test that
# skips makes its step SKIPPED, listed by name and reason under the table: not ok, no ALL OK.
#
# Writes under OUT_DIR (at most 8 files, no folders, so the device tool returns them all):
#   summary.txt   printed last: the bench figures as a Markdown table (scripts/bench_table.py),
#                 then the steps' table: step, status, seconds, headline figure
#   summary.json  the same as JSON
#   all.log       every step's full output, in order
#   bench*.json, mnist.json   the figures, as the scripts wrote them
# Python: ${PYTHON:-python3}. MNIST: ${MNIST_DIR:-.data/mnist} (git-ignored; the four IDX .gz files).
# For tests: GPU_CHECKS_MAX_STEP_S caps every step's limit, GPU_CHECKS_BUDGET_S replaces the budget.
set -uo pipefail

mode=full
out=
for arg in "$@"; do
  case "$arg" in
    --quick) mode=quick ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu_checks.sh: unknown option $arg" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
if [ -z "$out" ]; then
  echo "usage: bash scripts/gpu_checks.sh [--quick] OUT_DIR" >&2
  exit 2
fi
mkdir -p "$out" && out=$(cd "$out" && pwd) || { echo "gpu_checks.sh: cannot use $out" >&2; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

PY=${PYTHON:-python3}
MNIST_DIR=${MNIST_DIR:-.data/mnist}
FASHION_DIR=${FASHION_DIR:-.data/fashion-mnist}
export PY MNIST_DIR FASHION_DIR PYTHONPATH=. PYTHONUNBUFFERED=1
if [ "$mode" = quick ]; then budget=${GPU_CHECKS_BUDGET_S:-270}; else budget=${GPU_CHECKS_BUDGET_S:-345}; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_checks.XXXXXX")
trap 'rm -rf "$work"' EXIT
: > "$out/all.log"

names=() statuses=() seconds=() headlines=()

# step NAME CAP VERIFY HEADLINE COMMAND...: run COMMAND (a function) under a time limit,
# appending its output to all.log and to stdout; VERIFY and HEADLINE read its log.
step() {
  local name=$1 cap=$2 verify=$3 headline=$4
  shift 4
  local left=$((budget - SECONDS - 6)) limit=$cap
  [ "$left" -lt "$limit" ] && limit=$left
  if [ -n "${GPU_CHECKS_MAX_STEP_S:-}" ] && [ "$GPU_CHECKS_MAX_STEP_S" -lt "$limit" ]; then
    limit=$GPU_CHECKS_MAX_STEP_S
  fi
  local log="$work/$name.log" status t0=$SECONDS rc
  printf '\n===== %s: %s (limit %ss, %ss of the %ss budget used)\n' "$name" "$*" "$limit" "$SECONDS" "$budget" \
    | tee -a "$out/all.log"
  if [ "$left" -lt 3 ]; then
    status="SKIPPED (no time left)"
    : > "$log"
  else
    timeout --kill-after=5 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee "$log" | tee -a "$out/all.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      status="FAILED (timed out after ${limit}s)"
    elif [ "$rc" -ne 0 ]; then
      status="FAILED (exit $rc)"
    else
      why=$("$verify" "$log")
      case $? in
        0) status=ok ;;
        2) status="SKIPPED ($why)" ;;  # it ran, but not all of it: not ok either
        *) status="FAILED ($why)" ;;
      esac
    fi
  fi
  names+=("$name") statuses+=("$status") seconds+=($((SECONDS - t0)))
  headlines+=("$("$headline" "$log" | tr -d '\000-\037' | cut -c1-400)")
  echo "----- $name: $status" | tee -a "$out/all.log"
}

# --- what each step runs (exported: `timeout` runs them in a fresh bash) --------------------
run_env() {  # torch is optional (only the benchmarks compare against it)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || return 1
  "$PY" -c "import sys, cupy
try:
    import torch
    torch_version = torch.__version__
except ImportError:
    torch_version = 'not installed'
print('python', sys.version.split()[0], '| cupy', cupy.__version__, '| torch', torch_version,
      '| devices', cupy.cuda.runtime.getDeviceCount())"
}
run_nvrtc() { "$PY" -m pytest -q -p no:cacheprovider --tb=short -rfEs tests/test_kernels_compile.py -k nvrtc; }
run_check() { "$PY" -m gpucnn check --backend cupy; }
run_gpu_tests() { "$PY" -m pytest -q -p no:cacheprovider --tb=short -rfEs -m gpu tests; }
run_bench() {  # OUTFILE CASE-TIMEOUT FLAGS...
  local json=$1 case_timeout=$2
  shift 2
  "$PY" scripts/bench.py --backend cupy --repeats 3 --case-timeout "$case_timeout" --json "$json" "$@"
}
run_mnist() {  # OUTFILE TRAIN-FLAGS...
  local json=$1
  shift
  [ -f "$MNIST_DIR/train-images-idx3-ubyte.gz" ] || {
    echo "no MNIST in $MNIST_DIR: stage it first (docs/benchmarks.md: cp -rf ../shared/data/mnist .data/)"; return 2; }
  "$PY" scripts/time_to_accuracy.py --json "$json" "$@"
}
run_fashion() {
  "$PY" scripts/time_to_accuracy.py --json "$1" -- --backend cupy --model vgg_bn --dataset fashion-mnist \
    --data-dir "$FASHION_DIR" --epochs 1 --optimizer sgd --lr 0.05 --weight-decay 5e-4 --no-progress --no-save
}
export -f run_env run_nvrtc run_check run_gpu_tests run_bench run_mnist run_fashion

# --- how each step's log is judged and summed up --------------------------------------------
ran_cleanly() { :; }
pytest_passed() {  # some tests passed, none failed or errored, and (nvrtc) none skipped if asked
  local summary
  summary=$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$1" | tail -n 1)
  if ! grep -qE '[0-9]+ passed' <<<"$summary"; then echo "no test passed"; return 1; fi
  if grep -qE '[0-9]+ (failed|error)' <<<"$summary"; then echo "tests failed"; return 1; fi
}
pytest_all_ran() {
  pytest_passed "$1" || return 1
  if pytest_line "$1" | grep -q skipped; then echo "some were skipped"; return 1; fi
}
pytest_none_skipped() {  # as pytest_passed; a skipped test makes the step SKIPPED (status 2)
  pytest_passed "$1" || return 1
  local skipped
  skipped=$(pytest_line "$1" | grep -oE '[0-9]+ skipped')
  if [ -n "$skipped" ]; then echo "$skipped, listed below"; return 2; fi
}
check_passed() { grep -q "all passed" "$1" || { echo "no 'all passed' line"; return 1; }; }
bench_rows() {
  grep -qE '^(lenet|vgg_bn)-[0-9]+ +[0-9,]+ ' "$1" || { echo "no result row"; return 1; }
  ! grep -qE '^(lenet|vgg_bn)-[0-9]+ +FAILED' "$1" || { echo "a case failed"; return 1; }
}
last_line() { grep -v '^\s*$' "$1" | tail -n 1; }
pytest_line() { grep -E '[0-9]+ (passed|failed|skipped|error)' "$1" | tail -n 1 | sed 's/^=* *//; s/ *=*$//'; }
env_line() { awk 'NR == 1 { first = $0 } { last = $0 } END { print (NR > 1 ? first " | " last : first) }' "$1"; }
bench_line() {  # "lenet-128 2.10x torch, mem 0.80x; ..." from the table's rows
  awk '/^(lenet|vgg_bn)-[0-9]+ / { if ($2 == "FAILED:") printf "%s FAILED; ", $1;
       else printf "%s %s img/s %sx torch, mem %sx; ", $1, $2, $4, $7 }' "$1" | sed 's/; $//'
}

echo "gpu_checks ($mode, budget ${budget}s) -> $out"
echo "python: $PY ($(command -v "$PY" || echo 'not found')); MNIST: $MNIST_DIR; $(date -u '+%Y-%m-%d %H:%M:%S UTC')"

step env 15 ran_cleanly env_line run_env
step nvrtc 30 pytest_all_ran pytest_line run_nvrtc
step check 75 check_passed last_line run_check
if [ "$mode" = quick ]; then
  step gpu_tests 150 pytest_none_skipped pytest_line run_gpu_tests
  step bench 45 bench_rows bench_line run_bench "$out/bench.json" 40 --cases lenet-128
  step mnist 45 ran_cleanly last_line run_mnist "$out/mnist.json" -- --backend cupy --model lenet --dataset mnist \
    --data-dir "$MNIST_DIR" --epochs 1 --no-progress --no-save
else
  cases="lenet-128 lenet-1024 vgg_bn-128 vgg_bn-256"
  step gpu_tests 150 pytest_none_skipped pytest_line run_gpu_tests
  step bench_graph 80 bench_rows bench_line run_bench "$out/bench_graph.json" 25 --cases $cases
  step mnist_to_99 70 ran_cleanly last_line run_mnist "$out/mnist.json" --target 0.99 -- --backend cupy --model lenet \
    --dataset mnist --data-dir "$MNIST_DIR" --epochs 6 --no-progress --no-save
  step bench_eager 70 bench_rows bench_line run_bench "$out/bench_eager.json" 25 --no-graph --cases $cases
  step bench_tf32 70 bench_rows bench_line run_bench "$out/bench_tf32.json" 25 --tf32 --cases $cases
  if [ -d "$FASHION_DIR" ]; then
    step fashion 50 ran_cleanly last_line run_fashion "$out/fashion.json"
  fi
fi

# --- the summary: a table and its JSON, written by bash alone (no Python needed to report) ---
json_string() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
failed=0 any_failed=0
for i in "${!names[@]}"; do
  [ "${statuses[$i]}" = ok ] || failed=1
  case ${statuses[$i]} in FAILED*) any_failed=1 ;; esac
done
benches=()
for f in bench.json bench_graph.json bench_eager.json bench_tf32.json; do
  [ -f "$out/$f" ] && benches+=("$out/$f")
done
{
  if [ "${#benches[@]}" -gt 0 ]; then  # the figures, ready for docs/benchmarks.md (not a step)
    "$PY" scripts/bench_table.py "${benches[@]}" 2>/dev/null && echo
  fi
  printf '%-12s %-30s %5s  %s\n' step status s headline
  for i in "${!names[@]}"; do
    printf '%-12s %-30s %5s  %s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}" "${headlines[$i]}"
  done
  for i in "${!names[@]}"; do  # which tests skipped, and why (pytest's -rs lines)
    case ${statuses[$i]} in SKIPPED*)
      grep -E '^SKIPPED \[' "$work/${names[$i]}.log" | sed "s/^/${names[$i]}: /" ;;
    esac
  done
} > "$out/summary.txt"
{
  printf '{"mode": "%s", "seconds": %s, "steps": [' "$mode" "$SECONDS"
  for i in "${!names[@]}"; do
    [ "$i" -gt 0 ] && printf ', '
    printf '{"name": "%s", "status": %s, "seconds": %s, "headline": %s}' "${names[$i]}" \
      "$(json_string "${statuses[$i]}")" "${seconds[$i]}" "$(json_string "${headlines[$i]}")"
  done
  if [ "$failed" = 0 ]; then printf '], "ok": true}\n'; else printf '], "ok": false}\n'; fi
} > "$out/summary.json"

echo
echo "===== gpu_checks $mode summary (${SECONDS}s; logs in $out/all.log)"
cat "$out/summary.txt"
if [ "$failed" = 0 ]; then
  echo "ALL OK"
elif [ "$any_failed" = 1 ]; then
  echo "SOME STEPS FAILED"
else
  echo "NOT ALL OK: some steps or tests were skipped"
fi
exit "$failed"
