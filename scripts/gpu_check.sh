#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU and a CUDA build of torch
# (under 8 minutes on one H100/H200): build cdred_fast with its CUDA kernels, run every
# CUDA test, run compute-sanitizer (memcheck, racecheck) on one small case per op
# family, run the GPU plan benchmark, and write the report bench/RESULTS-gpu.md
# (device, versions, pass/fail, plan times against the targets). Exit status: 0 when
# every check passed and every plan target was met, 3 when the checks passed but a
# target was missed, 1 when a check failed (tools/gpu_report.py). Each step has a time
# limit (GPU_CHECK_*_TIMEOUT seconds), and with $OUT set (the device tool) the work
# folder lives in $OUT, so a run stopped from outside still returns its logs.
#
# Needs: torch with CUDA, nvcc of torch's CUDA major, cmake >= 3.26, ninja,
# scikit-build-core, pytest, pytest-benchmark, and cdred_fast's dependencies
# (with no package registry, install them first from wheels: CDRED_FAST_WHEELS=DIR).
# Environment: GPU_CHECK_BENCH_K (pytest -k of the plan benchmark, default "A6";
# "A6 or A38" adds the large action space), GPU_CHECK_SKIP_BUILD=1 (use the installed build),
# GPU_CHECK_BUILD_TIMEOUT / _TESTS_TIMEOUT / _SANITIZER_TIMEOUT / _BENCH_TIMEOUT (seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then WORK="$OUT/gpu_check"; mkdir -p "$WORK"
else WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX"); fi
BUILD_TIMEOUT=${GPU_CHECK_BUILD_TIMEOUT:-420}
TESTS_TIMEOUT=${GPU_CHECK_TESTS_TIMEOUT:-300}
SANITIZER_TIMEOUT=${GPU_CHECK_SANITIZER_TIMEOUT:-150}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-300}
REPORT=bench/RESULTS-gpu.md
log() { printf '\n[gpu_check] %s\n' "$*"; }
start=$(date +%s)
status=0

"$PY" -c "import torch, sys; sys.exit(not (torch.version.cuda and torch.cuda.is_available()))" || {
  echo "[gpu_check] needs a CUDA build of torch and a visible GPU" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$WORK/nvidia-smi.txt" 2>&1 || true

# 1. Build with CUDA (for the visible GPU's architecture unless TORCH_CUDA_ARCH_LIST says otherwise).
if [ -n "${CDRED_FAST_WHEELS:-}" ]; then
  # cdred_fast's dependencies, what every test module imports at collection, and the build's tools
  "$PY" -m pip install -q --no-index --find-links "$CDRED_FAST_WHEELS" numpy gymnasium omegaconf click tqdm \
    tensorboard matplotlib pillow scipy pytest pytest-benchmark hypothesis pyyaml scikit-build-core cmake ninja || true
fi
if [ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then
  log "CDRED_FAST_WITH_CUDA=ON pip install --no-build-isolation --no-deps -e ."
  t0=$(date +%s)
  if CDRED_FAST_WITH_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout "$BUILD_TIMEOUT" "$PY" -m pip install -v \
      --no-build-isolation --no-deps -e . > "$WORK/build.log" 2>&1; then
    echo "ok $(( $(date +%s) - t0 ))" > "$WORK/build.status"
  else
    echo "FAIL $(( $(date +%s) - t0 ))" > "$WORK/build.status"; tail -n 40 "$WORK/build.log"; status=1
  fi
fi
"$PY" -c "import cdred_fast, json; print(json.dumps(cdred_fast.build_info()))" > "$WORK/build_info.json" 2>&1 || status=1
cat "$WORK/build_info.json"

# 2. Every CUDA test.
log "pytest -m cuda"
timeout "$TESTS_TIMEOUT" "$PY" -m pytest -m cuda -q -p no:cacheprovider --benchmark-disable python_tests \
  --junitxml="$WORK/cuda-tests.xml" > "$WORK/cuda-tests.log" 2>&1
echo "$?" > "$WORK/cuda-tests.rc"
tail -n 25 "$WORK/cuda-tests.log"
[ -s "$WORK/cuda-tests.xml" ] || status=1

# 3. compute-sanitizer on one small case per op family (all families in one process per tool:
# each process starts torch and CUDA under the tool, the slow part). Without PyTorch's caching
# allocator: its large segments would hide an access past a small tensor from memcheck.
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
: > "$WORK/sanitizer.txt"
for family in all; do
  for tool in memcheck racecheck; do
    if [ -z "$SANITIZER" ]; then echo "$family $tool unavailable 0" >> "$WORK/sanitizer.txt"; continue; fi
    t0=$(date +%s)
    if PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$SANITIZER_TIMEOUT" "$SANITIZER" --tool "$tool" --error-exitcode 99 \
        "$PY" tools/gpu_cases.py "$family" > "$WORK/sanitizer-$family-$tool.log" 2>&1; then r=ok; else r=FAIL; status=1; fi
    echo "$family $tool $r $(( $(date +%s) - t0 ))" >> "$WORK/sanitizer.txt"
    [ "$r" = ok ] || tail -n 20 "$WORK/sanitizer-$family-$tool.log"
  done
done
cat "$WORK/sanitizer.txt"

# 4. The GPU plan benchmark (fused, reference, reference under torch.compile, fused CUDA graph).
log "pytest bench/test_bench_plan_gpu.py -k '${GPU_CHECK_BENCH_K:-A6}' --benchmark-only"
timeout "$BENCH_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider bench/test_bench_plan_gpu.py -k "${GPU_CHECK_BENCH_K:-A6}" \
  --benchmark-only --benchmark-json="$WORK/bench.json" > "$WORK/bench.log" 2>&1
echo "$?" > "$WORK/bench.rc"
tail -n 30 "$WORK/bench.log"

# 5. The report.
"$PY" tools/gpu_report.py "$WORK" --out "$REPORT" --seconds $(( $(date +%s) - start ))
report=$?
[ "$status" = 0 ] || report=1  # a build or sanitizer failure the report did not see
cat "$REPORT"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$REPORT" "$OUT/"; fi
log "done in $(( $(date +%s) - start )) s, logs in $WORK; exit status $report"
exit $report
