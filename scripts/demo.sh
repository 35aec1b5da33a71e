#!/usr/bin/env bash
# The main job: install, then a short real CDRED run on the embedded default task
# (Meta-World door-close, scripted expert demonstrations collected on the fly, a small
# model; about 15 minutes on 2 CPU cores, two runs at once). Prints the evaluation success before and
# after training and where the learning curve (PNG) was written, then writes
# final_vs_expert.gif in the run directory (`cdred-fast video`: the trained agent
# beside the scripted expert on the first evaluation episode). Each invocation
# uses a new run directory, so an earlier run is never overwritten; extra arguments
# are passed to `cdred-fast train` (e.g. `bash scripts/demo.sh seed=2`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/demo-$(date +%Y%m%d-%H%M%S)}
echo; echo "[demo] cdred-fast train --preset demo --work-dir $RUN_DIR $*"
START=$SECONDS
"$PY" -m cdred_fast.cli train --preset demo --work-dir "$RUN_DIR" "$@"
echo "[demo] training took $((SECONDS - START)) s (setup excluded)"
echo; echo "[demo] cdred-fast video $RUN_DIR"
"$PY" -m cdred_fast.cli video "$RUN_DIR"
