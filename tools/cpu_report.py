"""Write this CPU kind's section of bench/RESULTS-cpu.md from a benchmark run of
bench/test_bench_agent.py (scripts/cpu_check.sh runs both).

Usage: python tools/cpu_report.py BENCH_JSON --out bench/RESULTS-cpu.md

BENCH_JSON is pytest-benchmark's ``--benchmark-json`` output of the CPU groups of
bench/test_bench_agent.py: one plan at the SPEC defaults (A = 6 and A = 38) and one update
(B = 256), each as ``reference`` (float32, pure-PyTorch ops), ``fused`` (IEEE float32,
``matmul_precision="highest"``), ``fused-bf16`` (``planning_precision`` /
``update_precision="bfloat16"``), ``fused-medium`` (``matmul_precision="medium"``) and ``fused-default``
(``CDREDConfig()``'s own defaults, "auto" resolved on the machine). The section gives the median times, each
variant's speed-up over the float32 reference, and whether it reaches issue 16's goal of
>= 2x at every shape. The machine is described from this process (run it where the benchmark
ran): the CPU model, cores, torch's CPU capability and the native bf16 instruction sets.

The file keeps one section per CPU kind (``## <model> (CPU family <n>; <native bf16>)``): a rerun on the
same kind replaces its section, another kind adds one. The file is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench_json import medians

GOAL = 2.0
VARIANTS = ("fused-default", "fused", "fused-bf16", "fused-medium")
# the benchmark groups of bench/test_bench_agent.py on the CPU, in the order of the table
WORKLOADS = (
    ("plan SPEC defaults A=6 cpu", "one plan, A = 6"),
    ("plan SPEC defaults A=38 cpu", "one plan, A = 38"),
    ("update B=256 cpu", "one update, B = 256"),
)
HEADER = """# Benchmark results per CPU kind (issue 16)

One section per CPU kind, each written by `bash scripts/cpu_check.sh` (bench/test_bench_agent.py,
CPU groups, then tools/cpu_report.py) on an otherwise idle machine. Median seconds; the speed-up
is over the float32 reference path measured in the same run. The goal of issue 16 is >= 2x at
every shape. `fused` is IEEE float32 (`matmul_precision="highest"`). `fused-medium` is
`matmul_precision="medium"`: oneDNN's products, float32 on some CPUs (AMD EPYC Zen 5) and
bfloat16 on others (AMX). `fused-bf16` is the bfloat16 reward networks in the plan and
bfloat16 products in the update. `fused-default` is the agent of `CDREDConfig()`'s defaults,
their `"auto"` settings resolved on the machine; each section says to what (sections written
before it was added have no `fused-default` column and name the variant the default matched).
What these do to what the agent learns is in bench/RESULTS.md.
"""


def machine() -> dict:
    """This machine, as the section's heading and first line describe it."""
    import torch

    from cdred_fast._lib import cpu_native_bf16, cpuinfo_value

    return {
        "default": defaults_in_words(),
        "model": cpuinfo_value("model name") or "unknown CPU",
        "family": cpuinfo_value("cpu family") or "?",
        "native_bf16": cpu_native_bf16(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


def defaults_in_words() -> str:
    """What the defaults compute in on this CPU: the precisions of ``CDREDConfig()``, their
    ``"auto"`` resolved (:func:`cdred_fast.precision.describe`, without its native-bf16 part)."""
    from cdred_fast.config import CDREDConfig
    from cdred_fast.precision import describe

    return describe(CDREDConfig(), "cpu").removeprefix("precision: ").split(";")[0]


def heading(m: dict) -> str:
    return f"## {m['model']} (CPU family {m['family']}; {', '.join(m['native_bf16']) or 'no native bf16'})"


def section(bench: dict, m: dict, stamp: str, commit: str) -> str:
    """The markdown section of one CPU kind. Raises ValueError when a workload or the
    reference of one is missing from ``bench``."""
    times = medians(bench)
    lines = [
        heading(m),
        "",
        f"{m['cores']} cores, {m['threads']} torch threads, torch {m['torch']} (CPU capability "
        f"{m['capability']}); {stamp}, commit {commit}.",
        "",
        "| workload | reference (float32) | " + " | ".join(VARIANTS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in VARIANTS) + " |",
    ]
    speedups: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for group, name in WORKLOADS:
        row = times.get(group)
        if not row or "reference" not in row:
            raise ValueError(f"the benchmark JSON has no reference time for {group!r}; run scripts/cpu_check.sh")
        ref = row["reference"]
        cells = []
        for v in VARIANTS:
            if v in row:
                speedups[v].append(ref / row[v])
                cells.append(f"{row[v]:.3f} s ({ref / row[v]:.2f}x)")
            else:
                cells.append("-")
        lines.append(f"| {name} | {ref:.3f} s | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"`fused-default` on this CPU: {m['default']}. Goal, >= {GOAL:g}x the reference at every shape:",
    ]
    for v in VARIANTS:
        s = speedups[v]
        if len(s) < len(WORKLOADS):
            lines.append(f"- `{v}`: not measured at every shape")
            continue
        met = "**met**" if min(s) >= GOAL else "not met"
        lines.append(f"- `{v}`: {met} ({min(s):.2f}-{max(s):.2f}x)")
    return "\n".join(lines) + "\n"


def merge(existing: str, new_section: str) -> str:
    """``existing`` with the section under ``new_section``'s heading replaced in place, or
    ``new_section`` appended; the header above the sections is always :data:`HEADER`."""
    head = new_section.splitlines()[0].strip()
    parts = re.split(r"(?m)^(?=## )", existing) if existing.strip() else [HEADER]
    if parts[0].startswith("# "):
        parts[0] = HEADER  # the file's header is this tool's, as it is now
    else:
        parts.insert(0, HEADER)
    parts = [part.rstrip("\n") + "\n" for part in parts]
    titles = [part.splitlines()[0].strip() for part in parts]
    if head in titles:
        parts[titles.index(head)] = new_section
    else:
        parts.append(new_section)
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        bench = json.loads(args.bench_json.read_text())
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        text = section(bench, machine(), stamp, _commit())
    except (OSError, ValueError) as exc:
        print(f"cpu_report: {exc}", file=sys.stderr)
        return 1
    existing = args.out.read_text() if args.out.exists() else ""
    merged = merge(existing, text)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(merged)
    tmp.replace(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
