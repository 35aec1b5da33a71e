"""Build the op library with its CUDA kernels run by the CPU emulator (tools/cuda_emu).

Every ``csrc/**/*.cu`` is rewritten into C++ (kernel launches ``k<<<g, b, s, st>>>(args)``
become ``cuda_emu::launch(k, g, b, s, st, args)``, ``__shared__`` arrays become block-shared
statics filled with 0xff at each block, ``extern __shared__`` the launch's dynamic shared
memory) and compiled with the host fronts, the registrations and the emulator into one library,
with ``CDRED_EMULATE_CUDA`` defined: every op then runs its CUDA launcher on CPU tensors.
Load it in a fresh process with ``CDRED_FAST_CUDA_EMULATION_LIBRARY=<path>`` (it registers the
``cdred_fast`` ops, so it replaces ``cdred_fast._C`` rather than joining it).

    python tools/cuda_emu/build.py [--build-dir build/cuda_emu] [--sanitizer asan|tsan]   # prints its path

``--sanitizer`` builds it with AddressSanitizer or ThreadSanitizer (build/cuda_emu_asan,
build/cuda_emu_tsan); a process runs it with :func:`sanitizer_environment`'s variables.

Rebuilds only what changed (ninja, through ``torch.utils.cpp_extension``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NAME = "cdred_fast_cuda_emu"


def _matching(text: str, at: int, open_ch: str, close_ch: str, step: int = 1) -> int:
    """Index of the bracket matching the one at ``at``: the ``close_ch`` of an ``open_ch``
    (``step`` 1, scanning forward) or the ``open_ch`` of a ``close_ch`` (``step`` -1)."""
    inward, outward = (open_ch, close_ch) if step == 1 else (close_ch, open_ch)
    depth, i = 0, at
    while 0 <= i < len(text):
        if text[i] == inward:
            depth += 1
        elif text[i] == outward:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise ValueError(f"unbalanced {open_ch}{close_ch} at offset {at}")


def _split_top_level(s: str) -> list[str]:
    """``s`` split at the commas outside (), <>, [] and {}."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def rewrite_launches(src: str) -> str:
    """``callee<<<config>>>(args)`` -> ``::cuda_emu::launch(callee, grid, block, smem, stream, args)``."""
    out = src
    while (pos := out.find("<<<")) != -1:
        # the callee: an identifier, possibly qualified, possibly with template arguments
        i = pos - 1
        while out[i].isspace():
            i -= 1
        if out[i] == ">":
            i = _matching(out, i, "<", ">", step=-1) - 1
        while i >= 0 and (out[i].isalnum() or out[i] in "_:"):
            i -= 1
        callee_start = i + 1
        callee = out[callee_start:pos].strip()
        close = out.index(">>>", pos)
        config = _split_top_level(out[pos + 3 : close])
        if not 2 <= len(config) <= 4:
            raise ValueError(f"a launch configuration of {len(config)} entries: {out[pos : close + 3]}")
        config += ["0", "nullptr"][len(config) - 2 :]
        paren = close + 3
        while out[paren].isspace():
            paren += 1
        if out[paren] != "(":
            raise ValueError(f"no argument list after {out[pos : close + 3]}")
        end = _matching(out, paren, "(", ")")
        args = out[paren + 1 : end]
        call = f"::cuda_emu::launch({callee}, {', '.join(config)}" + (f", {args})" if args.strip() else ")")
        out = out[:callee_start] + call + out[end + 1 :]
    return out


_DECLARATION = re.compile(r"(using|typedef|static_assert|constexpr|extern\s+__shared__|__shared__)\b")
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def mark_statics(src: str, name: str) -> str:
    """Put ``::cuda_emu::statics_declared();`` in every kernel right after its last static
    ``__shared__`` declaration (at its start when it has none): the emulator's discovery run
    measures the kernel's static shared memory up to there (cuda_emu.h). Only declarations may
    come before it; anything else is an error that names the kernel."""
    out, pos = src, 0
    while (m := re.search(r"__global__\b", out[pos:])) is not None:
        j = pos + m.end()
        while True:  # the parameter list: the first "(" that is not __launch_bounds__'s
            k = out.index("(", j)
            if out[j:k].rstrip().endswith("__launch_bounds__"):
                j = _matching(out, k, "(", ")") + 1
                continue
            break
        kernel = re.findall(r"\w+", out[j:k])[-1]
        brace = out.index("{", _matching(out, k, "(", ")"))
        body = out[brace + 1 : _matching(out, brace, "{", "}")]
        statics = [d for d in re.finditer(r"(extern\s+)?__shared__[^;]*;", body) if not d.group(1)]
        cut = statics[-1].end() if statics else 0
        for statement in _COMMENTS.sub("", body[:cut]).split(";"):
            if statement.strip() and not _DECLARATION.match(statement.strip()):
                raise ValueError(
                    f"{name}: kernel {kernel}: the emulator needs its static __shared__ arrays declared before "
                    f"any other statement, found {statement.strip()!r} first"
                )
        marker = " ::cuda_emu::statics_declared();"
        at = brace + 1 + cut
        out = out[:at] + marker + out[at:]
        pos = at + len(marker)
    return out


_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([\w:<>, ]+?)\s+(\w+)\s*\[\s*\]\s*;")
_SHARED = re.compile(r"__shared__\s+([\w:<>, ]+?)\s+(\w+)\s*(\[[^;]*\])\s*;")


def rewrite_shared(src: str) -> str:
    src = _EXTERN_SHARED.sub(r"\1* \2 = static_cast<\1*>(::cuda_emu::dynamic_shared());", src)
    return _SHARED.sub(r"static \1 \2\3; ::cuda_emu::fresh_shared(\2, sizeof(\2));", src)


def rewrite(path: Path) -> str:
    """The C++ text of the CUDA source ``path`` for the emulator (line numbers kept)."""
    text = path.read_text()
    rel = path.relative_to(ROOT)
    body = rewrite_shared(mark_statics(rewrite_launches(text), str(rel)))
    # device code: the device branches of csrc's math headers (common/macros.h)
    return f'#define CDRED_EMULATED_DEVICE_CODE 1\n#include "cuda_emu.h"\n#line 1 "{rel}"\n{body}'


SANITIZERS = {  # build.py --sanitizer NAME: compiler flag, runtime library, runtime options
    "asan": ("-fsanitize=address", "libasan.so", {"ASAN_OPTIONS": "detect_leaks=0"}),
    # one torch thread: torch's OpenMP workers synchronise in code TSan does not see
    "tsan": ("-fsanitize=thread", "libtsan.so", {"TSAN_OPTIONS": "halt_on_error=0", "OMP_NUM_THREADS": "1"}),
}


def host_has_fma() -> bool:
    """Whether this CPU has FMA instructions (the library contracts into them, as nvcc does)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " fma " in f"{line} " for line in text.splitlines())


def build(build_dir: Path, verbose: bool = False, sanitizer: str | None = None) -> Path:
    import torch
    from torch.utils.cpp_extension import load

    if not host_has_fma():
        raise RuntimeError("the CUDA emulator's library uses FMA instructions (-mfma), which this CPU lacks")

    gen = build_dir / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    sources = [str(HERE / "cuda_emu.cpp")]
    # one generated file per source, named after its path (csrc has several cpu.cpp): the .cu
    # rewritten, a .cpp included as it is
    csrc = sorted((ROOT / "csrc").rglob("*.cpp")) + sorted((ROOT / "csrc").rglob("*.cu"))
    for path in csrc + [HERE / "selftest.cu"]:
        rel = str(path.relative_to(ROOT / "csrc" if path.is_relative_to(ROOT / "csrc") else HERE.parent))
        target = gen / (rel.replace("/", "__").replace(".", "_") + ".cpp")
        text = rewrite(path) if path.suffix == ".cu" else f'#include "{path}"\n'
        if not target.exists() or target.read_text() != text:  # keep ninja's timestamps when unchanged
            target.write_text(text)
        sources.append(str(target))
    for stale in set(gen.iterdir()) - {Path(s) for s in sources}:
        stale.unlink()
    flag = [SANITIZERS[sanitizer][0]] if sanitizer else []
    name = NAME + (f"_{sanitizer}" if sanitizer else "")
    load(
        name=name,
        sources=sources,
        extra_include_paths=[str(HERE / "include"), str(HERE), str(ROOT / "csrc")],
        extra_cflags=[
            *flag,
            *(["-fno-omit-frame-pointer"] if sanitizer else []),
            "-O2",
            # as nvcc's --fmad=true: a product and a sum may contract into one fused multiply-add
            # (the host files are compiled so too, but the emulator's ops never run their kernels)
            "-mfma",
            "-ffp-contract=fast",
            "-std=c++20",
            "-fopenmp",
            "-Wno-unused-function",
            "-DCDRED_EMULATE_CUDA=1",
            f'-DCDRED_TORCH_VERSION=\\"{torch.__version__.split("+")[0]}\\"',  # quoted through ninja's shell
        ],
        extra_ldflags=["-fopenmp", *flag],
        build_directory=str(build_dir),
        is_python_module=False,
        with_cuda=False,
        verbose=verbose,
    )
    return build_dir / f"{name}.so"


def sanitizer_environment(sanitizer: str) -> dict[str, str]:
    """What runs a sanitizer build (``"asan"``, ``"tsan"``) in a Python process: GCC's runtime
    of the sanitizer preloaded first, then libstdc++ (whose __cxa_throw the runtime intercepts),
    and the runtime's options (no leak checks: Python's)."""
    flag, runtime, options = SANITIZERS[sanitizer]
    libs = []
    for name in (runtime, "libstdc++.so"):
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path):
            raise RuntimeError(f"{flag} builds need GCC's {name} (gcc -print-file-name={name} found none)")
        libs.append(path)
    return {"LD_PRELOAD": " ".join(libs), **options}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "cuda_emu")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--sanitizer",
        choices=sorted(SANITIZERS),
        help="instrument with AddressSanitizer (asan: accesses outside the tensors) or ThreadSanitizer "
        "(tsan: data races between a block's threads); default directory build/cuda_emu_NAME. Run the "
        "library with the environment of sanitizer_environment(NAME) (LD_PRELOAD of the runtime, ...)",
    )
    args = parser.parse_args()
    runtime = SANITIZERS[args.sanitizer][1] if args.sanitizer else None
    if runtime and runtime.removesuffix(".so") not in os.environ.get("LD_PRELOAD", ""):
        # torch's builder loads what it built, which a sanitizer build allows only in a process
        # started with its runtime preloaded: start again so
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **sanitizer_environment(args.sanitizer)})
    if runtime:
        os.environ.pop("LD_PRELOAD")  # the compilers run without it
    if args.sanitizer and args.build_dir == ROOT / "build" / "cuda_emu":
        args.build_dir = ROOT / "build" / f"cuda_emu_{args.sanitizer}"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    path = build(args.build_dir.resolve(), verbose=args.verbose, sanitizer=args.sanitizer)
    print(path)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
