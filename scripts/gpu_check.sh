#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU and a CUDA build of torch
# (under 8 minutes on one H100/H200): build cdred_fast with its CUDA kernels, run every
# CUDA test, run compute-sanitizer (memcheck, racecheck) on one small case per op
# family, run the GPU plan benchmark, and write the report bench/RESULTS-gpu.md
# (device, versions, pass/fail, plan times against the targets). Exit status 0 only
# when everything passed and every target was met.
#
# Needs: torch with CUDA, nvcc of torch's CUDA major, cmake >= 3.26, ninja,
# scikit-build-core, pytest, pytest-benchmark, and cdred_fast's dependencies
# (with no package registry, install them first from wheels: CDRED_FAST_WHEELS=DIR).
# Environment: GPU_CHECK_BENCH_K (pytest -k of the plan benchmark, default "A6";
# "A6 or A38" adds the large action space), GPU_CHECK_SKIP_BUILD=1 (use the installed build).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
REPORT=bench/RESULTS-gpu.md
log() { printf '\n[gpu_check] %s\n' "$*"; }
start=$(date +%s)
status=0

"$PY" -c "import torch, sys; sys.exit(not (torch.version.cuda and torch.cuda.is_available()))" || {
  echo "[gpu_check] needs a CUDA build of torch and a visible GPU" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$WORK/nvidia-smi.txt" 2>&1 || true

# 1. Build with CUDA (for the visible GPU's architecture unless TORCH_CUDA_ARCH_LIST says otherwise).
if [ -n "${CDRED_FAST_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --find-links "$CDRED_FAST_WHEELS" numpy gymnasium omegaconf click tqdm \
    tensorboard matplotlib pytest pytest-benchmark pyyaml || true
fi
if [ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then
  log "CDRED_FAST_WITH_CUDA=ON pip install --no-build-isolation --no-deps -e ."
  t0=$(date +%s)
  if CDRED_FAST_WITH_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install -v --no-build-isolation \
      --no-deps -e . > "$WORK/build.log" 2>&1; then
    echo "ok $(( $(date +%s) - t0 ))" > "$WORK/build.status"
  else
    echo "FAIL $(( $(date +%s) - t0 ))" > "$WORK/build.status"; tail -n 40 "$WORK/build.log"; status=1
  fi
fi
"$PY" -c "import cdred_fast, json; print(json.dumps(cdred_fast.build_info()))" > "$WORK/build_info.json" 2>&1 || status=1
cat "$WORK/build_info.json"

# 2. Every CUDA test.
log "pytest -m cuda"
"$PY" -m pytest -m cuda -q -p no:cacheprovider --benchmark-disable python_tests \
  --junitxml="$WORK/cuda-tests.xml" 2>&1 | tail -n 25 || true
[ -s "$WORK/cuda-tests.xml" ] || status=1

# 3. compute-sanitizer on one small case per op family.
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
: > "$WORK/sanitizer.txt"
for family in reward rnd block mppi; do
  for tool in memcheck racecheck; do
    if [ -z "$SANITIZER" ]; then echo "$family $tool unavailable 0" >> "$WORK/sanitizer.txt"; continue; fi
    t0=$(date +%s)
    if "$SANITIZER" --tool "$tool" --error-exitcode 99 "$PY" tools/gpu_cases.py "$family" \
        > "$WORK/sanitizer-$family-$tool.log" 2>&1; then r=ok; else r=FAIL; status=1; fi
    echo "$family $tool $r $(( $(date +%s) - t0 ))" >> "$WORK/sanitizer.txt"
    [ "$r" = ok ] || tail -n 20 "$WORK/sanitizer-$family-$tool.log"
  done
done
cat "$WORK/sanitizer.txt"

# 4. The GPU plan benchmark (fused, reference, reference under torch.compile, fused CUDA graph).
log "pytest bench/test_bench_plan_gpu.py -k '${GPU_CHECK_BENCH_K:-A6}' --benchmark-only"
"$PY" -m pytest -q -p no:cacheprovider bench/test_bench_plan_gpu.py -k "${GPU_CHECK_BENCH_K:-A6}" \
  --benchmark-only --benchmark-json="$WORK/bench.json" 2>&1 | tail -n 30 || true

# 5. The report.
"$PY" tools/gpu_report.py "$WORK" --out "$REPORT" --seconds $(( $(date +%s) - start )) || status=1
cat "$REPORT"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp -r "$WORK" "$OUT/gpu_check" && cp "$REPORT" "$OUT/"; fi
log "done in $(( $(date +%s) - start )) s, logs in $WORK; exit status $status"
exit $status
