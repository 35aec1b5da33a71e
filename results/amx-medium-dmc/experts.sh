#!/usr/bin/env bash
# A DMControl training curve under each precision (issue 16): the partly trained TD-MPC2 agent
# of results/cpu-gradnorm/expert.yaml (cheetah-run, 20,000 steps, the main job's model size),
# on seeds 1-3 (or the seeds given as arguments), with matmul_precision=medium (what "auto" is
# on an AMX CPU) and with =highest (IEEE float32), evaluated on 10 episodes every 5,000 steps.
# One run at a time, one thread; a finished run is skipped and a stopped one resumes.
# PRECS="auto" runs the default instead (on an AMX CPU: "medium" acting, "highest" update);
# PRECS="auto-q-rnd": the default with update_precision=bfloat16-q-rnd (bfloat16 products in
# the update's Q ensemble only: this TD-MPC2 agent has no CDRED reward networks);
# PRECS="w256 w256-q-rnd": a float32 and a "bfloat16-q-rnd" update with MLPs of 256.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
for seed in "${seeds[@]}"; do
  for prec in ${PRECS:-medium highest}; do
    case $prec in
      auto-q-rnd) settings=(matmul_precision=auto update_precision=bfloat16-q-rnd) ;;
      w256) settings=(matmul_precision=auto update_precision=float32 mlp_dim=256) ;;
      w256-q-rnd) settings=(matmul_precision=auto update_precision=bfloat16-q-rnd mlp_dim=256) ;;
      *) settings=(matmul_precision="$prec") ;;
    esac
    dir=runs/amx-medium-dmc/expert-$prec-s$seed
    [ -f "$dir/DONE" ] && continue
    resume=()
    if [ -f "$dir/checkpoint.pt" ]; then resume=(--resume); fi
    cdred-fast expert train cheetah-run --config results/cpu-gradnorm/expert.yaml --work-dir "$dir" \
      --no-progress "${resume[@]}" seed=$seed "${settings[@]}" eval_episodes=10
    touch "$dir/DONE"
  done
done
