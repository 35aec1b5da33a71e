#!/usr/bin/env bash
# Copies each finished run's config.yaml, eval.csv and train.csv from runs/amx-default-sN
# (run.sh) into runs/amx-default/seed=N here, then prints the paired table against bfloat16
# products in acting and update (results/amx-medium-seeds, the same CPU kind).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=results/amx-default-seeds
for run in runs/amx-default-s*/; do
  seed=${run%/}; seed=${seed##*-s}
  [ -f "$run/eval.csv" ] && grep -q '^6000,' "$run/eval.csv" || continue
  mkdir -p "$HERE/runs/amx-default/seed=$seed"
  cp "$run"/config.yaml "$run"/eval.csv "$run"/train.csv "$HERE/runs/amx-default/seed=$seed/"
done
mkdir -p "$HERE/runs"
ln -sfn ../../amx-medium-seeds/runs/amx-medium "$HERE/runs/amx-medium"
python results/precision-seeds/paired.py "$HERE/runs" --base amx-medium --arms amx-default
