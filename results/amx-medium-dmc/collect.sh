#!/usr/bin/env bash
# Copies each finished expert run of experts.sh (runs/amx-medium-dmc/expert-PREC-sN) as
# runs/PREC/seed=N (config.yaml, eval.csv, train.csv) here, prints each run's evaluation
# returns, then the seed-by-seed difference of medium (and auto, auto-q-rnd, when run) from
# highest in return, and of auto-q-rnd from auto.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=results/amx-medium-dmc
for run in runs/amx-medium-dmc/expert-*-s*/; do
  [ -f "$run/DONE" ] || continue
  name=$(basename "$run"); prec=${name#expert-}; prec=${prec%-s*}; seed=${name##*-s}
  mkdir -p "$HERE/runs/$prec/seed=$seed"
  cp "$run"/config.yaml "$run"/eval.csv "$run"/train.csv "$HERE/runs/$prec/seed=$seed/"
done
for f in "$HERE"/runs/*/seed=*/eval.csv; do
  echo "$f: $(tail -n +2 "$f" | cut -d, -f1,2 | awk -F, '{printf "%s:%.0f ", $1, $2}')"
done
arms=(medium)
for arm in auto auto-q-rnd; do
  if [ -d "$HERE/runs/$arm" ]; then arms+=("$arm"); fi
done
python results/precision-seeds/paired.py "$HERE/runs" --base highest --arms "${arms[@]}" --metric episode_return \
  --mean-of 10000 15000 20000
if [ -d "$HERE/runs/auto-q-rnd" ]; then
  python results/precision-seeds/paired.py "$HERE/runs" --base auto --arms auto-q-rnd --metric episode_return \
    --mean-of 10000 15000 20000
fi
if [ -d "$HERE/runs/w256-q-rnd" ]; then
  python results/precision-seeds/paired.py "$HERE/runs" --base w256 --arms w256-q-rnd --metric episode_return \
    --mean-of 10000 15000 20000
fi
