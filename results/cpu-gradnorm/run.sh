#!/usr/bin/env bash
# The gradient-norm comparison on cheetah-run: trains a partly trained TD-MPC2 agent
# (expert.yaml), records 10 of its episodes as demonstrations, runs sweep.yaml on the local
# Ray and copies the report (report.md, report.json, curves_*.png) here. Each step is skipped
# when its output exists, and the sweep resumes, so re-running continues after a stop.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=results/cpu-gradnorm
OUT=runs/cpu-gradnorm
EXPERT=$OUT/expert-cheetah-run
DEMOS=$OUT/demos/cheetah-run.npz
mkdir -p "$OUT/demos"
if [ ! -f "$EXPERT/DONE" ]; then
  resume=()
  if [ -f "$EXPERT/checkpoint.pt" ]; then resume=(--resume); fi
  cdred-fast expert train cheetah-run --config "$HERE/expert.yaml" --work-dir "$EXPERT" --no-progress "${resume[@]}"
  touch "$EXPERT/DONE"
fi
if [ ! -f "$DEMOS" ]; then
  cdred-fast collect cheetah-run --policy "$EXPERT/checkpoint.pt" --episodes 10 --seed 1000 --out "$DEMOS"
fi
cdred-fast data info "$DEMOS"
cdred-fast sweep "$HERE/sweep.yaml" --out "$OUT/sweep"
cdred-fast report "$OUT/sweep"
cp "$OUT"/sweep/report.md "$OUT"/sweep/report.json "$OUT"/sweep/curves_*.png "$HERE"/
echo "copied the report to $HERE"
