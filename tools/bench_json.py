"""Reading pytest-benchmark's ``--benchmark-json`` output, shared by tools/gpu_report.py and
tools/cpu_report.py: each benchmark of this project names its workload in ``group`` and its
variant in ``extra_info["impl"]``."""

from __future__ import annotations


def medians(bench: dict) -> dict[str, dict[str, float]]:
    """``{group: {impl: median seconds}}`` of a pytest-benchmark JSON (benchmarks without an
    ``impl`` are left out)."""
    out: dict[str, dict[str, float]] = {}
    for b in bench.get("benchmarks", []):
        impl = b.get("extra_info", {}).get("impl")
        if impl:
            out.setdefault(b["group"], {})[impl] = float(b["stats"]["median"])
    return out
