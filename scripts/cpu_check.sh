#!/usr/bin/env bash
# Issue 16's per-CPU-kind measurement in one command: the agent benchmarks at the SPEC defaults
# on this CPU (bench/test_bench_agent.py: one plan at A = 6 and A = 38, one update; float32
# reference, fused float32, fused bfloat16, fused with matmul_precision="medium"), then this CPU
# kind's section of bench/RESULTS-cpu.md (tools/cpu_report.py). Run on an otherwise idle machine
# after `bash scripts/setup.sh`; about 3 minutes on 2 cores. Commit the updated file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cpu_check.XXXXXX")
"$PY" -m pytest bench/test_bench_agent.py -k cpu --benchmark-only -q -p no:cacheprovider \
  --benchmark-columns=min,median,max,rounds --benchmark-json="$WORK/bench.json"
"$PY" tools/cpu_report.py "$WORK/bench.json" --out bench/RESULTS-cpu.md
echo "[cpu_check] wrote bench/RESULTS-cpu.md (benchmark JSON: $WORK/bench.json)"
