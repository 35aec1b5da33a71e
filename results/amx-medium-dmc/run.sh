#!/usr/bin/env bash
# "medium" against "highest" on a DMControl checkpoint (issue 16): a CDRED agent on cheetah-run,
# trained from the demonstrations of results/cpu-gradnorm (its partly trained TD-MPC2 expert,
# made here first if missing), then bench/precision_outcome.py on its checkpoint, planning
# with MPPI (--plan: the agent was trained acting with its policy prior, which no precision
# setting changes). Each step is skipped when its output exists; training resumes after a stop.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
DEMOS=runs/cpu-gradnorm/demos/cheetah-run.npz
RUN=runs/amx-medium-dmc/cdred-cheetah-run-s1
mkdir -p runs/amx-medium-dmc
bash results/cpu-gradnorm/demos.sh
if [ ! -f "$RUN/DONE" ]; then
  resume=()
  if [ -f "$RUN/checkpoint.pt" ]; then resume=(--resume); fi
  # the main job's model (--preset demo) on cheetah-run, as in results/cpu-gradnorm/sweep.yaml,
  # 20,000 steps instead of 5,000
  cdred-fast train --preset demo --demos "$DEMOS" --work-dir "$RUN" --no-progress "${resume[@]}" \
    task=cheetah-run mpc=false steps=20000 num_demos=10 seed_steps=1000 eval_freq=5000 \
    eval_episodes=3 save_freq=5000 seed=1
  touch "$RUN/DONE"
fi
python bench/precision_outcome.py "$RUN/checkpoint.pt" --plan --states 100 --episodes 20 --seeds 1 2 \
  --settings medium | tee runs/amx-medium-dmc/outcome.txt
