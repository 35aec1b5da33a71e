#!/usr/bin/env bash
# The main job with the defaults as they are (`cdred-fast train --preset demo seed=N`, nothing
# else set) on the seeds given (default 1-8), two runs at a time, one thread each. A finished run
# (DONE) is skipped; a stopped one resumes from its checkpoint. Run on an Intel Xeon with AMX,
# where "auto" resolves, for the main job's widths (128) since 4fe56b6, to "highest" (IEEE
# float32 products) for acting and for the update.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3 4 5 6 7 8)
one() {
  local run=runs/amx-default-s$1
  [ -f "$run/DONE" ] && return 0
  local resume=()
  [ -f "$run/checkpoint.pt" ] && resume=(--resume)
  cdred-fast train --preset demo --work-dir "$run" --no-progress "${resume[@]}" seed="$1" > "$run.log" 2>&1
  touch "$run/DONE"
}
for ((i = 0; i < ${#seeds[@]}; i += 2)); do
  one "${seeds[i]}" &
  [ $((i + 1)) -lt ${#seeds[@]} ] && one "${seeds[i + 1]}" &
  wait
done
