"""Compile every CUDA source against the installed torch headers, without linking.

This catches CUDA compile errors (host calls from device code, template errors,
missing includes) on machines without a GPU or a full CUDA toolkit: only `nvcc`
is needed. The sources may include only c10/cuda headers (not ATen/cuda), which
the CPU wheel of torch ships.

Usage: python tools/check_cuda_compile.py [--arch 90] [--jobs 2]
Exit status 0 when every file compiles; 1 (with nvcc's messages) otherwise;
2 when nvcc is not found (so CI cannot silently skip the check).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="SM architectures, e.g. 80 90 (default: 90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    nvcc = find_nvcc()
    if nvcc is None:
        print("check_cuda_compile: nvcc not found (set CUDACXX or put nvcc on PATH)", file=sys.stderr)
        return 2
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()] + [f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}"]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in (args.arch or ["90"])]
    sources = sorted((ROOT / "csrc").rglob("*.cu"))
    if not sources:
        print("check_cuda_compile: no .cu files found under csrc/", file=sys.stderr)
        return 1
    flags = ["-std=c++20", "--expt-relaxed-constexpr", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-Xcompiler=-fPIC"]

    def compile_one(src: Path) -> tuple[Path, int, str, float]:
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [nvcc, *flags, *gencode, *includes, "-c", str(src), "-o", str(Path(tmp) / "out.o")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
        return src, proc.returncode, proc.stdout + proc.stderr, time.time() - start

    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for src, rc, log, seconds in pool.map(compile_one, sources):
            rel = src.relative_to(ROOT)
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {rel} ({seconds:.0f} s)")
            if rc != 0:
                failed += 1
                print(log)
    print(f"check_cuda_compile: {len(sources) - failed} of {len(sources)} CUDA sources compile ({nvcc})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
