#!/usr/bin/env bash
# Copies each finished run's config.yaml, eval.csv and train.csv from runs/amx-medium-sN (as
# `cdred-fast train --preset demo --work-dir runs/amx-medium-sN --no-progress
# matmul_precision=medium planning_precision=float32 update_precision=float32 seed=N`, one
# thread each, writes them) into runs/amx-medium/seed=N here, then prints the paired table.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=results/amx-medium-seeds
for run in runs/amx-medium-s*/; do
  seed=${run%/}; seed=${seed##*-s}
  [ -f "$run/eval.csv" ] && grep -q '^6000,' "$run/eval.csv" || continue
  mkdir -p "$HERE/runs/amx-medium/seed=$seed"
  cp "$run"/config.yaml "$run"/eval.csv "$run"/train.csv "$HERE/runs/amx-medium/seed=$seed/"
done
python results/precision-seeds/paired.py "$HERE/runs" --base fused-update --arms amx-medium
