#!/usr/bin/env bash
# A real CUDA-enabled build of cdred_fast on a machine without a GPU: configure,
# compile every .cu file, link against a CUDA build of torch, import, and check that
# the CUDA kernels are registered. No kernel runs here (scripts/gpu_check.sh does
# that on a GPU machine); this proves that `CDRED_FAST_WITH_CUDA=ON pip install .`
# works for a CUDA user, which compiling the .cu files with nvcc alone cannot.
#
# Everything lives in a cached virtual environment, never in the active Python:
#   ${CDRED_FAST_CUDA_VENV:-${XDG_CACHE_HOME:-~/.cache}/cdred_fast/cuda-build-venv}
# First run: a CUDA torch from the package registry (about 4 GB with its nvidia-*
# libraries) plus the build tools; later runs reuse it and the build tree, so they
# only recompile what changed (minutes).
#
# Environment:
#   CDRED_FAST_CUDA_TORCH   torch version to install (default: the active Python's torch
#                           version without its local tag, else 2.13.0)
#   TORCH_CUDA_ARCH_LIST    architectures to compile (default here: 9.0, to keep CI short)
#   CUDACXX                 the nvcc to use; when its CUDA major differs from torch's
#                           (or none is found), the registry's nvcc of torch's major is used
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
PY=${PYTHON:-python3}
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cdred_fast"
VENV=${CDRED_FAST_CUDA_VENV:-$CACHE/cuda-build-venv}
BUILD_DIR="$VENV/build-tree"
log() { printf '[check_cuda_build] %s\n' "$*"; }
fail() { printf '[check_cuda_build] FAILED: %s\n' "$*" >&2; exit 1; }
start=$(date +%s)

if [ -z "${CDRED_FAST_CUDA_TORCH:-}" ]; then
  CDRED_FAST_CUDA_TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo 2.13.0)
fi
# The machines' pip configuration prefers a local CPU wheel of torch; the CUDA build
# must come from the registry itself, so this script's pip ignores that configuration.
vpip() { PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_CONSTRAINT= "$VENV/bin/python" -m pip "$@"; }

# 1. The virtual environment with a CUDA torch (kept while its torch is the wanted one).
have=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0], torch.version.cuda)" 2>/dev/null || true)
if [ -n "$have" ] && [ "${have#* }" != "None" ] && [ "${have%% *}" = "$CDRED_FAST_CUDA_TORCH" ]; then
  log "reusing $VENV (torch $have)"
else
  log "creating $VENV with torch==$CDRED_FAST_CUDA_TORCH (CUDA build, from the registry)"
  "$PY" -m venv --clear "$VENV"
  vpip install -q "torch==$CDRED_FAST_CUDA_TORCH" || fail "could not install torch==$CDRED_FAST_CUDA_TORCH"
fi
read -r TORCH_FULL TORCH_CUDA < <("$VENV/bin/python" -c "import torch; print(torch.__version__, torch.version.cuda)")
[ "$TORCH_CUDA" != "None" ] || fail "torch $TORCH_FULL in $VENV is a CPU build; remove $VENV and re-run"
CUDA_MAJOR=${TORCH_CUDA%%.*}
log "torch $TORCH_FULL (CUDA $TORCH_CUDA)"
echo "torch==$TORCH_FULL" > "$VENV/constraints.txt"
# Build tools (cmake >= 3.26 knows the CUDA20 dialect) and the package's own dependencies.
if ! "$VENV/bin/python" -c "import scikit_build_core, ninja, cmake, numpy, gymnasium, omegaconf, click, tqdm, matplotlib, tensorboard" 2>/dev/null; then
  log "installing build tools and dependencies into $VENV"
  vpip install -q -c "$VENV/constraints.txt" "cmake>=3.26,<5" "scikit-build-core>=0.10" ninja \
    numpy "gymnasium>=1.0,<1.5" "click>=8.1" "omegaconf>=2.3" "tqdm>=4.66" "tensorboard>=2.15" "matplotlib>=3.7"
fi

# 2. An nvcc of torch's CUDA major.
nvcc_major() { "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p'; }
NVCC=""
for cand in "${CUDACXX:-}" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
  if [ -n "$cand" ] && [ -x "$cand" ]; then
    if [ "$(nvcc_major "$cand")" = "$CUDA_MAJOR" ]; then NVCC=$cand; break; fi
    log "skipping $cand: CUDA $(nvcc_major "$cand"), torch needs CUDA $CUDA_MAJOR"
  fi
done
if [ -z "$NVCC" ]; then
  if [ "$CUDA_MAJOR" -ge 13 ]; then pkg="nvidia-cuda-nvcc==$TORCH_CUDA.*"; else pkg="nvidia-cuda-nvcc-cu$CUDA_MAJOR==$TORCH_CUDA.*"; fi
  log "installing $pkg (no local nvcc of CUDA $CUDA_MAJOR)"
  vpip install -q "$pkg" || fail "could not install $pkg"
  NVCC=$(find "$VENV/lib" -path '*/nvidia/*/bin/nvcc' -type f | head -n 1)
  [ -n "$NVCC" ] || fail "$pkg installed no nvcc"
fi
log "nvcc: $NVCC ($("$NVCC" --version | sed -n 's/.*\(release [^,]*\).*/\1/p'))"

# 3. The CUDA libraries torch's CMake links (cuBLAS, nvrtc, ...) come with torch as
#    nvidia-* wheels, which ship only versioned names (libnvrtc.so.13): give CMake's
#    find_library unversioned links to them. A full CUDA toolkit needs none of this.
LIBS="$VENV/cuda-libs"
rm -rf "$LIBS" && mkdir -p "$LIBS"
for f in "$VENV"/lib/python3*/site-packages/nvidia/*/lib/lib*.so.*; do
  [ -e "$f" ] || continue
  b=$(basename "$f")
  ln -sf "$f" "$LIBS/${b%%.so.*}.so"
done

# 4. The build: exactly a user's `CDRED_FAST_WITH_CUDA=ON pip install --no-build-isolation .`,
#    with a build tree kept in the cache (wiped when it belongs to another checkout).
if [ -f "$BUILD_DIR/CMakeCache.txt" ] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$SRC" "$BUILD_DIR/CMakeCache.txt"; then
  rm -rf "$BUILD_DIR"
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
log "CDRED_FAST_WITH_CUDA=ON pip install --no-build-isolation . (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
BUILD_LOG="$VENV/build.log"
if ! CDRED_FAST_WITH_CUDA=ON CUDACXX="$NVCC" CMAKE_LIBRARY_PATH="$LIBS" PATH="$VENV/bin:$PATH" \
  vpip install --no-build-isolation --no-deps -v -C build-dir="$BUILD_DIR" . > "$BUILD_LOG" 2>&1; then
  tail -n 60 "$BUILD_LOG" >&2
  fail "the CUDA build failed (whole log: $BUILD_LOG)"
fi
grep -E "cdred_fast: torch .*CUDA kernels" "$BUILD_LOG" | sed 's/^ *//' || true

# 5. Import the installed package (outside the source tree) and check the CUDA kernels.
(cd "$VENV" && "$VENV/bin/python" - <<'EOF'
import json
import torch
import cdred_fast

info = cdred_fast.build_info()
print("[check_cuda_build] build_info:", json.dumps(info))
assert info["extension_loaded"], f"the extension did not load: {info['load_error']}"
assert info["cuda_kernels"] is True, "the extension was built without CUDA kernels"
assert info["nvcc_version"].split(".")[0] == torch.version.cuda.split(".")[0], info
ops = ["moment_bonus", "cdred_reward", "mppi_sample", "mppi_elite_update", "mppi_select", "ensemble_mlp",
       "ensemble_reward", "layernorm_mish", "layernorm_mish_backward"]
for key in ("CPU", "CUDA"):
    missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cdred_fast::{op}", key)]
    assert not missing, f"no {key} kernel registered for {missing}"
print(f"[check_cuda_build] {len(ops)} ops have CPU and CUDA kernels")
EOF
) || fail "the built package does not provide its CUDA kernels"
# 6. An nvcc of another CUDA major must stop the configure with a message naming both
#    versions. The nvcc here is wrapped so that `--version` reports CUDA (torch's major - 1);
#    every other call goes to the real nvcc, so CMake's compiler checks still pass.
WRAP=$(mktemp -d)
trap 'rm -rf "$WRAP"' EXIT
other=$(( CUDA_MAJOR - 1 ))
cat > "$WRAP/nvcc" <<EOF_WRAP
#!/bin/sh
case " \$* " in *" --version "*) echo "Cuda compilation tools, release $other.8, V$other.8.93"; exit 0 ;; esac
exec "$NVCC" "\$@"
EOF_WRAP
chmod +x "$WRAP/nvcc"
if CUDACXX="$WRAP/nvcc" CMAKE_LIBRARY_PATH="$LIBS" "$VENV/bin/cmake" -S "$SRC" -B "$WRAP/build" -G Ninja \
    -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" -DPython_EXECUTABLE="$VENV/bin/python" -DCDRED_FAST_WITH_CUDA=ON \
    > "$WRAP/configure.log" 2>&1; then
  fail "configure accepted an nvcc of CUDA $other with torch's CUDA $TORCH_CUDA"
fi
said=$(tr -s ' \n' '  ' < "$WRAP/configure.log")  # CMake wraps its messages' lines
case "$said" in
  *"is CUDA $other.8, but torch"*"was built with CUDA $TORCH_CUDA"*"Their major versions must match"*) ;;
  *) cat "$WRAP/configure.log" >&2; fail "configure with a CUDA $other nvcc failed without naming both versions" ;;
esac
log "ok: an nvcc of CUDA $other is refused at configure, naming both versions"
log "ok: CUDA build of cdred_fast against torch $TORCH_FULL in $(( $(date +%s) - start )) s"
