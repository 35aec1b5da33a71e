#!/usr/bin/env bash
# The cheetah-run demonstrations of the gradient-norm comparison (also used by
# results/amx-medium-dmc): trains the partly trained TD-MPC2 agent of expert.yaml into
# runs/cpu-gradnorm/expert-cheetah-run, then records 10 of its episodes as
# runs/cpu-gradnorm/demos/cheetah-run.npz. Each step is skipped when its output exists, and a
# stopped expert run resumes.
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
