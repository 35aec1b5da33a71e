#!/usr/bin/env bash
# Runs sweep-float32.yaml and sweep-bfloat16.yaml (the main job on seeds 1-8 in each precision),
# sweep-planning-bfloat16.yaml (bfloat16 in planning only) and sweep-medium.yaml
# (matmul_precision=medium), each on seeds 1-8, on the local Ray, one core per trial, writes the
# report over all four and copies it (report.md, report.json, curves_*.png, each trial's eval.csv
# and train.csv) here. Re-running resumes an interrupted sweep; finished trials are not run
# again. 32 runs of 15-25 minutes each on one core: about 5 hours on 2 cores. The seed-by-seed
# differences: python paired.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/precision-seeds}
HERE=results/precision-seeds
for p in float32 bfloat16 planning-bfloat16 medium; do
  cdred-fast sweep "$HERE/sweep-$p.yaml" --out "$OUT/$p"
done
cdred-fast report "$OUT"
cp "$OUT"/report.md "$OUT"/report.json "$OUT"/curves_*.png "$HERE"/
for p in float32 bfloat16 planning-bfloat16 medium; do
  mkdir -p "$HERE/runs/$p"
  for trial in "$OUT/$p"/*/; do
    name=$(basename "$trial")
    mkdir -p "$HERE/runs/$p/$name"
    cp "$trial"/config.yaml "$trial"/eval.csv "$trial"/train.csv "$HERE/runs/$p/$name/"
  done
done
echo "copied the report to $HERE"
