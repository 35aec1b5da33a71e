#!/usr/bin/env bash
# Installs everything cdred_fast needs into the active Python, idempotently:
# torch (kept if already installed), build tools, the system libraries the
# simulators load, and cdred_fast itself (editable, with the C++ extension built
# against that torch). Safe to re-run; a re-run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${CDRED_FAST_EXTRAS:-all}

log() { printf '\n[setup] %s\n' "$*"; }

# 1. torch: keep the user's; otherwise install the pinned release (on the project
#    machines this takes the local CPU wheel).
if ! "$PY" -c "import torch" 2>/dev/null; then
  log "installing torch==2.13.0"
  "$PY" -m pip install -q "torch==2.13.0"
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)")
log "building against torch $TORCH_VERSION"
# Every later install is constrained to this exact torch, so no dependency can swap it.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

# 2. System libraries: OpenGL/EGL/OSMesa for MuJoCo (dm_control imports a GL
#    backend; pixel observations render headless with EGL or OSMesa).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for lib in libOSMesa.so.8:libosmesa6 libEGL.so.1:libegl1 libGL.so.1:libgl1; do
    ldconfig -p | grep -q "${lib%%:*}" || missing+=("${lib##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# 3. Build tools needed by --no-build-isolation (cmake from PyPI if the system one is older than 3.24).
"$PY" -m pip install -q -c "$CONSTRAINTS" "scikit-build-core>=0.10" ninja
if ! cmake --version 2>/dev/null | awk 'NR==1{split($3,v,"."); exit !(v[1]>3 || (v[1]==3 && v[2]>=24))}'; then
  "$PY" -m pip install -q "cmake>=3.24"
fi

# 4. cdred_fast itself with its optional dependencies.
log "pip install --no-build-isolation -e .[$EXTRAS]"
"$PY" -m pip install -q -c "$CONSTRAINTS" --no-build-isolation -e ".[$EXTRAS]"
"$PY" -c "import cdred_fast, json; info = cdred_fast.build_info(); print(json.dumps(info)); assert info['extension_loaded'], info['load_error']"
