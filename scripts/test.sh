#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, CUDA compile check, pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k reward`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh

echo; echo "[test] CUDA compile check (every csrc/**/*.cu against the installed torch headers)"
"$PY" tools/check_cuda_compile.py --jobs 2

echo; echo "[test] pytest (unit, parity, end-to-end; benchmarks run once each as smoke tests)"
"$PY" -m pytest -q -p no:cacheprovider --benchmark-disable --durations=15 "$@"
