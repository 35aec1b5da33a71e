#!/usr/bin/env bash
# The gradient-norm comparison on cheetah-run: trains a partly trained TD-MPC2 agent
# (expert.yaml) and records 10 of its episodes as demonstrations (demos.sh), runs sweep.yaml on
# the local Ray and copies the report (report.md, report.json, curves_*.png) here. Each step is
# skipped when its output exists, and the sweep resumes, so re-running continues after a stop.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=results/cpu-gradnorm
OUT=runs/cpu-gradnorm
bash "$HERE/demos.sh"
cdred-fast sweep "$HERE/sweep.yaml" --out "$OUT/sweep"
cdred-fast report "$OUT/sweep"
cp "$OUT"/sweep/report.md "$OUT"/sweep/report.json "$OUT"/sweep/curves_*.png "$HERE"/
echo "copied the report to $HERE"
