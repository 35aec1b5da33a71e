#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, a real CUDA-enabled build (no GPU
# needed; CDRED_FAST_SKIP_CUDA_BUILD=1 skips it, saying so), pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k reward`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh

echo; echo "[test] lint: ruff (check + format) and clang-format (configs: pyproject.toml, .clang-format)"
"$PY" -m ruff check .
"$PY" -m ruff format --check .
clang-format --dry-run -Werror csrc/*.cpp csrc/*.h csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh \
  tools/cuda_emu/*.h tools/cuda_emu/*.cpp tools/cuda_emu/*.cu tools/cuda_emu/include/*.h tools/cuda_emu/include/*/*/*.h

echo; echo "[test] CUDA build (configure, compile every csrc/**/*.cu, link against a CUDA torch, import)"
if [ "${CDRED_FAST_SKIP_CUDA_BUILD:-0}" = 1 ]; then
  echo "[test] SKIPPED: CDRED_FAST_SKIP_CUDA_BUILD=1 (CI never sets it)"
else
  bash scripts/check_cuda_build.sh
fi

echo; echo "[test] pytest (unit, parity, end-to-end; benchmarks run once each as smoke tests)"
"$PY" -m pytest -q -p no:cacheprovider --benchmark-disable --durations=15 "$@"
