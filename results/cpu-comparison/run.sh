#!/usr/bin/env bash
# Runs results/cpu-comparison/sweep.yaml (CDRED, BC) and sweep-iqmpc.yaml (IQ-MPC) on the local
# Ray (one core per trial), writes the report over both and copies it (report.md, report.json,
# curves_*.png, each trial's eval.csv) here.
# Re-running resumes an interrupted sweep; finished trials are not run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/cpu-comparison}
HERE=results/cpu-comparison
cdred-fast sweep "$HERE/sweep.yaml" --out "$OUT/cdred-bc"
cdred-fast sweep "$HERE/sweep-iqmpc.yaml" --out "$OUT/iqmpc"
cdred-fast report "$OUT"
cp "$OUT"/report.md "$OUT"/report.json "$OUT"/curves_*.png "$HERE"/
mkdir -p "$HERE/eval"
for trial in "$OUT"/*/*/; do
  name=$(basename "$trial")
  if [ -f "$trial/eval.csv" ]; then cp "$trial/eval.csv" "$HERE/eval/$name.csv"; fi
done
echo "copied the report to $HERE"
