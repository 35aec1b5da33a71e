#!/usr/bin/env bash
# Installs everything cdred_fast needs into the active Python, idempotently:
# torch (kept if already installed), build tools, the system libraries the
# simulators load, cdred_fast itself (editable, with the C++ extension built
# against that torch) and, in a virtual environment of its own, ManiSkill2.
# Safe to re-run; a re-run only rebuilds what changed.
#
# CDRED_FAST_EXTRAS (default "all"): comma-separated extras of pyproject.toml, plus
# "maniskill2", which is not a pip extra (step 5); "all" and "envs" include it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${CDRED_FAST_EXTRAS:-all}
case ",$EXTRAS," in
  *,all,*|*,envs,*|*,maniskill2,*) WITH_MS2=1 ;;
  *) WITH_MS2=0 ;;
esac
PIP_EXTRAS=$(printf ',%s,' "$EXTRAS" | sed -e 's/,maniskill2,/,/g' -e 's/^,*//' -e 's/,*$//')

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
#    backend; pixel observations render headless with EGL or OSMesa), and the Vulkan
#    loader for ManiSkill2 (SAPIEN's module links libvulkan.so.1 even without a GPU).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  libs="libOSMesa.so.8:libosmesa6 libEGL.so.1:libegl1 libGL.so.1:libgl1"
  if [ "$WITH_MS2" = 1 ]; then libs="$libs libvulkan.so.1:libvulkan1"; fi
  for lib in $libs; do
    ldconfig -p | grep -q "${lib%%:*}" || missing+=("${lib##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# 3. Build tools needed by --no-build-isolation (cmake from PyPI if the system one is older
#    than 3.26, the first that configures CUDA with C++20).
"$PY" -m pip install -q -c "$CONSTRAINTS" "scikit-build-core>=0.10" ninja
if ! cmake --version 2>/dev/null | awk 'NR==1{split($3,v,"."); exit !(v[1]>3 || (v[1]==3 && v[2]>=26))}'; then
  "$PY" -m pip install -q -c "$CONSTRAINTS" "cmake>=3.26,<5"
fi

# 4. cdred_fast itself with its optional dependencies.
TARGET=.${PIP_EXTRAS:+[$PIP_EXTRAS]}
log "pip install --no-build-isolation -e $TARGET"
"$PY" -m pip install -q -c "$CONSTRAINTS" --no-build-isolation -e "$TARGET"
"$PY" -c "import cdred_fast, json; info = cdred_fast.build_info(); print(json.dumps(info)); assert info['extension_loaded'], info['load_error']"

# 5. ManiSkill2, in a virtual environment of its own that the ms2-* tasks run in a
#    worker process (cdred_fast/envs/maniskill2.py): mani-skill2 0.5.3 needs sapien
#    2.2.2, whose compiled bindings silently return wrong arrays and crash under numpy 2
#    (and mani-skill2 pins numpy<1.24). Nothing is installed into $PY for it. sapien
#    2.2.2 has wheels for CPython 3.7-3.11 only, so the venv is made from such a Python:
#    $CDRED_FAST_MS2_BASE_PYTHON, else $PY, python3.11, ..., python3.8 (first that fits).
#    With CDRED_FAST_MS2_PYTHON set (an existing ManiSkill2 environment) it is only checked.
if [ "$WITH_MS2" = 1 ]; then
  ms2_ok() { "$1" -c "import mani_skill2.envs, sapien.core; from importlib.metadata import version; assert version('mani-skill2') == '0.5.3'" >/dev/null 2>&1; }
  if [ -n "${CDRED_FAST_MS2_PYTHON:-}" ]; then
    if ms2_ok "$CDRED_FAST_MS2_PYTHON"; then log "ManiSkill2: using $CDRED_FAST_MS2_PYTHON"
    else log "WARNING: CDRED_FAST_MS2_PYTHON=$CDRED_FAST_MS2_PYTHON cannot import mani_skill2 0.5.3; ms2-* tasks will not run"; fi
  else
    MS2_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/cdred_fast/maniskill2-venv"
    if ms2_ok "$MS2_VENV/bin/python"; then
      log "ManiSkill2: $MS2_VENV is ready"
    else
      BASE=""
      for cand in ${CDRED_FAST_MS2_BASE_PYTHON:-} "$PY" python3.11 python3.10 python3.9 python3.8; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys, venv; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 11))' 2>/dev/null; then
          BASE=$cand; break
        fi
      done
      if [ -z "$BASE" ]; then
        log "WARNING: skipping ManiSkill2: it needs a Python 3.8-3.11 (sapien 2.2.2 wheels); set CDRED_FAST_MS2_BASE_PYTHON"
      else
        log "ManiSkill2: creating $MS2_VENV from $("$BASE" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
        "$BASE" -m venv --clear "$MS2_VENV"
        "$MS2_VENV/bin/python" -m pip install -q "mani-skill2==0.5.3" "sapien==2.2.2" "numpy==1.23.5" \
          "gymnasium==0.29.1" "setuptools<82"
        if ! ms2_ok "$MS2_VENV/bin/python"; then
          "$MS2_VENV/bin/python" -c "import mani_skill2.envs, sapien.core" || true
          echo "[setup] ManiSkill2 does not import in $MS2_VENV (error above; SAPIEN needs libvulkan.so.1)." \
               "To skip it, set CDRED_FAST_EXTRAS without maniskill2, e.g. CDRED_FAST_EXTRAS=dmc,metaworld,test,bench" >&2
          exit 1
        fi
      fi
    fi
  fi
fi
