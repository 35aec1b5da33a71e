"""Paired per-seed differences of the precision arms against float32 (issue 16), or of any arms.

A run of seed N starts from the same initial weights, demonstrations and environment seeds in
every arm, so the arms can be compared seed by seed. For each arm and each evaluation step:
the mean over seeds of (arm - float32) in last-step success (or in ``--metric``, another column
of eval.csv), with a 95 % percentile-bootstrap interval over seeds (10,000 resamples, seed 0),
and how many seeds are lower / equal / higher.

Usage: python results/precision-seeds/paired.py [RUNS_DIR] [--base ARM] [--arms ARM ...]
[--metric success|episode_return|success_any] [--mean-of STEP ...] (default: the runs/ beside
it, float32 against the three precision arms, last-step success; ``--mean-of`` adds a row of
each seed's mean over those evaluation steps). RUNS_DIR holds one folder per arm with
``seed=N/eval.csv`` in each. Writes nothing; prints a markdown table
(results/precision-seeds/README.md and results/main-job.md quote it).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from cdred_fast.report import paired_bootstrap

BASE = "float32"
ARMS = ("bfloat16", "planning-bfloat16", "medium")


METRICS = ("success", "episode_return", "success_any")


def eval_values(runs: Path, arm: str, metric: str = "success") -> dict[int, dict[int, float]]:
    """``{seed: {step: metric}}`` of one arm's runs (last-step success by default)."""
    out: dict[int, dict[int, float]] = {}
    for run in sorted((runs / arm).glob("seed=*")):
        with open(run / "eval.csv", newline="") as f:
            out[int(run.name.split("=")[1])] = {int(r["step"]): float(r[metric]) for r in csv.DictReader(f)}
    if not out:
        raise SystemExit(f"no runs of arm {arm!r}: expected {runs / arm}/seed=N/eval.csv")
    return out


def main(runs: Path, base_arm: str = BASE, arms: tuple = ARMS, metric: str = "success", mean_of: tuple = ()) -> None:
    base = eval_values(runs, base_arm, metric)
    name = {"success": "last-step success", "success_any": "any-step success", "episode_return": "return"}[metric]
    fmt = "{:+.1f}" if metric == "episode_return" else "{:+.2f}"
    print(f"| arm | step | seeds | mean difference in {name} [95 % CI] | lower / equal / higher |")
    print("|---|---|---|---|---|")
    for arm in arms:
        other = eval_values(runs, arm, metric)
        seeds = sorted(set(base) & set(other))
        steps = sorted(set.intersection(*(set(base[s]) & set(other[s]) for s in seeds)) - {0})
        rows = [(str(step), np.array([other[s][step] - base[s][step] for s in seeds])) for step in steps]
        if mean_of:  # each seed's mean over these evaluations, then the difference
            missing = set(mean_of) - set(steps)
            if missing:
                raise SystemExit(f"--mean-of: no evaluation at step(s) {sorted(missing)} in every run")
            label = "mean of " + ", ".join(str(x) for x in mean_of)
            rows.append((label, np.array([np.mean([other[s][x] - base[s][x] for x in mean_of]) for s in seeds])))
        for label, d in rows:
            lo, hi = paired_bootstrap(d)
            counts = f"{int((d < 0).sum())} / {int((d == 0).sum())} / {int((d > 0).sum())}"
            cell = f"{fmt.format(d.mean())} [{fmt.format(lo)}, {fmt.format(hi)}]"
            print(f"| {arm} | {label} | {len(seeds)} | {cell} | {counts} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=Path, default=Path(__file__).parent / "runs")
    parser.add_argument("--base", default=BASE, help=f"the arm the others are compared with ({BASE})")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help="the arms compared with it")
    parser.add_argument("--metric", default="success", choices=METRICS, help="the eval.csv column compared")
    parser.add_argument(
        "--mean-of",
        nargs="+",
        type=int,
        default=[],
        metavar="STEP",
        help="also a row of each seed's mean over these steps",
    )
    args = parser.parse_args()
    main(args.runs, args.base, tuple(args.arms), args.metric, tuple(args.mean_of))
