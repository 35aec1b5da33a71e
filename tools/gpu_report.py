"""Write bench/RESULTS-gpu.md from the files scripts/gpu_check.sh leaves in its work folder.

Usage: python tools/gpu_report.py WORK_DIR --out bench/RESULTS-gpu.md [--seconds S]

Reads (each optional; a missing one is reported as not run): ``nvidia-smi.txt``,
``build.status`` ("ok|FAIL SECONDS"), ``build_info.json``, ``cuda-tests.xml`` (pytest
JUnit XML) and ``cuda-tests.rc``, ``sanitizer.txt`` (lines "family tool ok|FAIL|unavailable
seconds"), ``bench.json`` (pytest-benchmark JSON of bench/test_bench_plan_gpu.py) and
``bench.rc`` (the benchmark run's exit status; 124: stopped by its time limit).

Two verdicts. **Checks**: the build, the tests, the sanitizer runs and the benchmark run
(which must have a result for every variant of ``VARIANTS`` in each group it measured).
**Targets**, per benchmark group (one per action dimension): reference / fused >= 20x and
reference-compiled / fused >= 3x in IEEE float32 (the CUDA-graph plan when measured, else
eager; the default ``matmul_precision="auto"`` is ``"highest"`` on CUDA), and one plan <= 1 ms
at the SPEC defaults, judged on the fastest fused variant, which may be a reduced-precision one
(``fused-graph-tf32``, ``fused-graph-bf16``: a float32 plan there is ~185 GFLOP, no less than
~2.8 ms at an H100's float32 rate), with the float32 time beside it. Reduced-precision variants
are also listed with their speed-up over the float32 plan. Exit status 0 when both verdicts
pass, 3 when the checks pass and a target is missed, 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from bench_json import medians

PLAN_MS = 1.0
EAGER_SPEEDUP = 20.0
COMPILED_SPEEDUP = 3.0
# the variants of bench/test_bench_plan_gpu.py (python_tests/test_build.py checks they agree)
VARIANTS = ("fused", "reference", "reference-compiled", "fused-graph", "fused-graph-tf32", "fused-graph-bf16")


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def junit_summary(path: Path) -> tuple[dict, list[str]]:
    """``({tests, failures, errors, skipped}, [names of failed tests])``."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return counts, failed


def plan_targets(bench: dict) -> list[dict]:
    """One row per benchmark group: median ms per variant, the variants without a result, and
    the three targets."""
    groups = {group: {impl: t * 1e3 for impl, t in row.items()} for group, row in medians(bench).items()}
    rows = []
    for group, ms in sorted(groups.items()):
        fused_key = "fused-graph" if "fused-graph" in ms else "fused"
        fused = ms.get(fused_key)
        reduced = [(k, v, fused / v if fused else None) for k, v in sorted(ms.items()) if k.startswith("fused-graph-")]
        missing = [v for v in VARIANTS if v not in ms]
        row = {"group": group, "ms": ms, "fused_key": fused_key, "checks": [], "reduced": reduced, "missing": missing}
        fastest = min((k for k in ms if k.startswith("fused")), key=ms.get, default=None)
        if fastest is not None:
            also = f" (float32 {fused_key}: {fused:.3f} ms)" if fused is not None and fastest != fused_key else ""
            row["checks"].append(
                (
                    f"fastest fused plan ({fastest}) <= {PLAN_MS:g} ms",
                    f"{ms[fastest]:.3f} ms{also}",
                    ms[fastest] <= PLAN_MS,
                )
            )
        if fused is not None:
            if "reference" in ms:
                r = ms["reference"] / fused
                row["checks"].append(
                    (f"reference / {fused_key} >= {EAGER_SPEEDUP:g}x", f"{r:.1f}x", r >= EAGER_SPEEDUP)
                )
            if "reference-compiled" in ms:
                r = ms["reference-compiled"] / fused
                row["checks"].append(
                    (f"reference-compiled / {fused_key} >= {COMPILED_SPEEDUP:g}x", f"{r:.1f}x", r >= COMPILED_SPEEDUP)
                )
        rows.append(row)
    return rows


def _rc(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text and text.lstrip("-").isdigit() else None


def render(work: Path, seconds: int | None) -> tuple[str, bool, bool]:
    """The report's text, whether every check passed, and whether every target was met."""
    ok = True  # the checks
    met = True  # the targets
    lines = ["# GPU check (scripts/gpu_check.sh)", ""]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"Written {stamp} by `bash scripts/gpu_check.sh`" + (f" in {seconds} s." if seconds else "."))
    lines += ["", "## Machine", ""]
    lines.append(f"- GPU: {_read(work / 'nvidia-smi.txt') or 'unknown (nvidia-smi gave nothing)'}")
    info_text = _read(work / "build_info.json")
    info = {}
    try:
        info = json.loads(info_text.splitlines()[-1]) if info_text else {}
    except json.JSONDecodeError:
        lines.append(f"- build_info: could not be read: {info_text}")
    if info:
        lines.append(
            f"- torch {info.get('torch_version_runtime')} (CUDA {info.get('cuda_version')}), nvcc "
            f"{info.get('nvcc_version')}, architectures {', '.join(info.get('cuda_arch_list', [])) or '-'}; "
            f"Python {platform.python_version()}"
        )
    lines += ["", "## Checks", "", "| check | result |", "| --- | --- |"]

    def row(name: str, result: str, passed: bool | None) -> None:
        nonlocal ok
        if passed is False:
            ok = False
        mark = {True: "pass", False: "**FAIL**", None: "not run"}[passed]
        lines.append(f"| {name} | {mark}: {result} |" if result else f"| {name} | {mark} |")

    build = _read(work / "build.status")
    if build:
        state, secs = build.split()
        row("CUDA build", f"{secs} s", state == "ok")
    else:
        row("CUDA build", "skipped (GPU_CHECK_SKIP_BUILD=1)", None)
    row(
        "extension loaded with CUDA kernels",
        "" if info else "no build_info",
        bool(info.get("extension_loaded") and info.get("cuda_kernels")),
    )
    failed: list[str] = []
    tests_rc = _rc(work / "cuda-tests.rc")
    if tests_rc == 124:
        row("pytest -m cuda", "stopped by its time limit", False)
    elif (work / "cuda-tests.xml").exists():
        counts, failed = junit_summary(work / "cuda-tests.xml")
        bad = counts["failures"] + counts["errors"]
        passed = counts["tests"] - bad - counts["skipped"]
        row("pytest -m cuda", f"{passed} passed, {bad} failed, {counts['skipped']} skipped", bad == 0 and passed > 0)
    else:
        row("pytest -m cuda", "no result file", False)
    sanitizer = _read(work / "sanitizer.txt")
    for line in (sanitizer or "").splitlines():
        family, tool, result, secs = line.split()
        row(
            f"compute-sanitizer {tool}: {family}",
            f"{secs} s" if result != "unavailable" else "compute-sanitizer not found",
            {"ok": True, "FAIL": False}.get(result),
        )
    bench_path = work / "bench.json"
    rows = plan_targets(json.loads(bench_path.read_text())) if bench_path.exists() else []
    bench_rc = _rc(work / "bench.rc")
    if bench_rc is not None or rows:
        why = {None: "", 0: "", 124: "stopped by its time limit"}.get(bench_rc, f"pytest exit status {bench_rc}")
        missing = [f"{r['group']}: no {', '.join(r['missing'])}" for r in rows if r["missing"]]
        row("plan benchmark run", "; ".join([why] * bool(why) + missing), not why and not missing and bool(rows))
    if failed:
        lines += ["", "Failed tests:", ""] + [f"- `{name}`" for name in failed]

    lines += ["", "## Plan benchmark (bench/test_bench_plan_gpu.py, median of 30 plans)", ""]
    if not rows:
        lines.append("Not run or no result.")
        ok = False
    for r in rows:
        lines.append(f"**{r['group']}**: " + ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(r["ms"].items())))
        lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
        for name, measured, hit in r["checks"]:
            met = met and hit
            lines.append(f"| {name} | {measured} | {'yes' if hit else '**no**'} |")
        if r["reduced"]:
            lines += ["", "Reduced precision, against the float32 plan:", ""]
            lines += [
                f"| variant | median | <= {PLAN_MS:g} ms | speed-up over {r['fused_key']} |",
                "| --- | --- | --- | --- |",
            ]
            for name, ms, speedup in r["reduced"]:
                ratio = f"{speedup:.2f}x" if speedup else "-"
                lines.append(f"| {name} | {ms:.3f} ms | {'yes' if ms <= PLAN_MS else 'no'} | {ratio} |")
        lines.append("")
    lines.append(f"Checks: {'PASS' if ok else 'FAIL'}. Targets: {'met' if met and rows else 'not met'}.")
    return "\n".join(lines) + "\n", ok, met and bool(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=None)
    args = parser.parse_args(argv)
    text, ok, met = render(args.work, args.seconds)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    return 1 if not ok else 0 if met else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
