"""Benchmark hook: a fused-vs-reference ratio table (device helpers live in bench_utils.py).

Each benchmark sets ``benchmark.group`` to the workload and ``benchmark.extra_info["impl"]``
to "fused" or "reference"; at the end of the run a table of reference/fused speed-ups
per group is printed (pytest-benchmark itself prints absolute times only). A group may hold
more variants, named "fused-..." or "reference-..." (e.g. "reference-compiled", "fused-graph"
in test_bench_plan_gpu.py); a second table then gives reference-like / fused-like for every
such pair of the group.
"""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not getattr(session, "benchmarks", None):
        return
    groups: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        impl = bench.extra_info.get("impl")
        if impl and bench.stats is not None:
            groups.setdefault(bench.group, {})[impl] = bench.stats.median
    rows = [(g, t) for g, t in sorted(groups.items()) if "fused" in t and "reference" in t]
    if rows:
        terminalreporter.section("fused vs reference (median times)")
        terminalreporter.write_line(f"{'group':<40} {'reference':>12} {'fused':>12} {'speed-up':>9}")
        for group, t in rows:
            terminalreporter.write_line(
                f"{group:<40} {t['reference'] * 1e3:>10.3f}ms {t['fused'] * 1e3:>10.3f}ms {t['reference'] / t['fused']:>8.2f}x"
            )
    variants = [(g, t) for g, t in sorted(groups.items()) if set(t) - {"fused", "reference"}]
    if variants:
        terminalreporter.section("variants (median times; speed-up = reference* / fused*)")
        for group, t in variants:
            terminalreporter.write_line(group)
            for impl in sorted(t):
                terminalreporter.write_line(f"    {impl:<36} {t[impl] * 1e3:>10.3f}ms")
            for r in sorted(k for k in t if k.startswith("reference")):
                for f in sorted(k for k in t if k.startswith("fused")):
                    terminalreporter.write_line(f"    {r + ' / ' + f:<36} {t[r] / t[f]:>10.2f}x")
