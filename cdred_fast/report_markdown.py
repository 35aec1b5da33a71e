"""The markdown of ``cdred-fast report`` (:mod:`cdred_fast.report`): the runs, the results per
task x method, the learning-curve figures, the gradient-norm table in the layout of the
paper's Table 6, and the paper's Tables 1, 5 and 6 next to ours."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from . import paper
from .report import BOOTSTRAP_SEED, CONFIDENCE, METRICS, N_RESAMPLES, _label, _method_key

__all__ = ["render_markdown"]


def _num(x, key: str = "success") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if key == "episode_return":
        return f"{x:.2f}"
    if key == "grad":
        return f"{x:.4g}"
    return f"{x:.3f}"


def _mean_std(stats: Optional[dict], key: str) -> str:
    if stats is None:
        return "no evaluations"
    if stats["n"] == 1:
        return f"{_num(stats['mean'], key)} (n=1)"
    return f"{_num(stats['mean'], key)} ± {_num(stats['std'], key)}"


def _ci(stats: Optional[dict], key: str) -> str:
    if stats is None:
        return "—"
    if stats["n"] == 1:
        return "n=1"
    return f"[{_num(stats['ci_low'], key)}, {_num(stats['ci_high'], key)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _runs_section(groups: list[dict], root: Path) -> list[str]:
    rows = []
    for g in groups:
        for r in g["runs"]:
            evals = r["eval_rows"] or "no evaluations"
            last = _num(r["last_step"], "grad") if r["last_step"] is not None else "—"
            rel = os.path.relpath(r["dir"], root)
            rows.append([g["task"], _label(g), r["seed"], evals, last, r["train_rows"], f"`{rel}`"])
    header = ["task", "method", "seed", "eval rows", "last eval step", "train rows", "directory"]
    return ["## Runs", "", *_table(header, rows), ""]


def _results_section(groups: list[dict], n_resamples: int) -> list[str]:
    ci = f"{CONFIDENCE:.0%} CI"
    lines = [
        "## Results per task × method",
        "",
        f"Over seeds: mean ± sample std (ddof=1) and the {ci} of the mean (percentile bootstrap, "
        f"{n_resamples} resamples, seed {BOOTSTRAP_SEED}). *Final*: the last evaluation of each run; "
        "*best*: the largest over its evaluations. n: runs with evaluations.",
        "",
    ]
    for key, title in METRICS:
        rows = []
        for g in groups:
            final, best = g["metrics"][key]["final"], g["metrics"][key]["best"]
            n = final["n"] if final else 0
            rows.append(
                [
                    g["task"],
                    _label(g),
                    n,
                    _mean_std(final, key),
                    _ci(final, key),
                    _mean_std(best, key),
                    _ci(best, key),
                ]
            )
        header = ["task", "method", "n", "final mean ± std", f"final {ci}", "best mean ± std", f"best {ci}"]
        lines += [f"### {title}", "", *_table(header, rows), ""]
    return lines


def _curves_section(figures: dict[str, Path]) -> list[str]:
    lines = ["## Learning curves", ""]
    if not figures:
        return lines + ["No evaluations to draw.", ""]
    lines += [
        "Mean over seeds on the union of the evaluation steps (each run interpolated inside its own "
        f"step range), shaded with the {CONFIDENCE:.0%} percentile-bootstrap interval where two or more runs "
        "cover a step.",
        "",
    ]
    for task, path in figures.items():
        lines += [f"### {task}", "", f"![{task}]({path.name})", ""]
    return lines


def _grad_columns(groups: list[dict]) -> list[dict]:
    """One representative per (method, variant) label, in table order."""
    seen: dict[str, dict] = {}
    for g in sorted(groups, key=lambda g: (_method_key(g["method"]), g["variant"])):
        seen.setdefault(_label(g), g)
    return list(seen.values())


def _grad_section(groups: list[dict]) -> list[str]:
    lines = [
        "## Gradient norms (layout of the paper's Table 6)",
        "",
        "Per run: the mean over training (train.csv interval means weighted by `updates`) and the largest "
        "`*_max`; per task × method: the mean of the run means and the largest run maximum.",
        "",
    ]
    for key, title in (
        ("grad_norm_release", "`grad_norm_release` (each release's own norm, as in the paper)"),
        ("grad_norm", "`grad_norm` (the world-model optimiser's parameters)"),
    ):
        tasks = sorted({g["task"] for g in groups if g["grad_norm"][key] is not None})
        if not tasks:
            lines += [f"### {title}", "", "No training logs with this column.", ""]
            continue
        cells = {(g["task"], _label(g)): g["grad_norm"][key] for g in groups}
        # only the methods with this norm somewhere (BC has no grad_norm_release)
        columns = [c for c in _grad_columns(groups) if any(cells.get((t, _label(c))) for t in tasks)]
        header = ["task"] + [f"{_label(c)} ({s})" for s in ("mean", "max") for c in columns] + ["runs"]
        rows = []
        for task in tasks:
            row: list[str] = [task]
            for s in ("mean", "max"):
                for c in columns:
                    stats = cells.get((task, _label(c)))
                    nan = f" ({stats['nan_rows']} NaN rows)" if stats and stats["nan_rows"] else ""
                    row.append(_num(stats[s], "grad") + nan if stats else "—")
            ns = [str(cells[(task, _label(c))]["n"]) for c in columns if cells.get((task, _label(c)))]
            rows.append(row + ["/".join(ns)])
        lines += [f"### {title}", "", *_table(header, rows), ""]
    return lines


def _ours(groups: list[dict], task: str, method: str, fmt) -> str:
    """``fmt(group)`` of our groups of (task, method), variants labelled; "—" for none."""
    found = [g for g in groups if g["task"] == task and g["method"] == method]
    if not found:
        return "—"
    return "; ".join(fmt(g) + (f" [{g['variant']}]" if g["variant"] else "") for g in found)


def _success_cell(g: dict) -> str:
    last, anywhere = g["metrics"]["success"]["final"], g["metrics"]["success_any"]["final"]
    if last is None:
        return "no evaluations"
    return f"{_mean_std(last, 'success')} / {_mean_std(anywhere, 'success')}"


def _paper_section(groups: list[dict]) -> list[str]:
    lines = [
        "## The paper's numbers next to ours",
        "",
        "Paper: mean ± spread over 3 seeds as printed (CDRED paper, SPEC section 5; `cdred_fast/paper.py`). "
        "Ours: the final evaluation, mean ± std over seeds, success at the last step / at any step.",
        "",
    ]
    for name, title, table in (
        ("table1", "Table 1: Meta-World success rate", paper.TABLE1),
        ("table5", "Table 5: ManiSkill2 success rate", paper.TABLE5),
    ):
        methods = paper.PAPER_METHODS[name]
        # our methods with runs on this table's tasks (IQ-MPC and CDRED columns at least)
        ours_methods = {g["method"] for g in groups if g["task"] in table} | {"iqmpc", "cdred"}
        ours_methods = sorted(ours_methods, key=_method_key)
        header = ["task"] + [f"{paper.METHOD_NAMES[m]} (paper)" for m in methods]
        header += [f"{paper.METHOD_NAMES.get(m, m)} (ours)" for m in ours_methods]
        rows = []
        for task, values in table.items():
            row = [task] + [f"{values[m][0]:.2f} ± {values[m][1]:.2f}" for m in methods]
            rows.append(row + [_ours(groups, task, m, _success_cell) for m in ours_methods])
        lines += [f"### {title}", "", *_table(header, rows), ""]
    header = ["task"]
    for s in ("mean", "max"):
        for m in paper.PAPER_METHODS["table6"]:
            header += [f"{paper.METHOD_NAMES[m]} {s} (paper)", f"{paper.METHOD_NAMES[m]} {s} (ours)"]
    rows = []
    for task, values in paper.TABLE6.items():
        row = [paper.TABLE6_LABELS.get(task, task)]
        for i, s in enumerate(("mean", "max")):
            for m in paper.PAPER_METHODS["table6"]:
                stat = lambda g, s=s: _num(g["grad_norm"]["grad_norm_release"][s], "grad")  # noqa: E731
                ours = _ours([g for g in groups if g["grad_norm"]["grad_norm_release"]], task, m, stat)
                row += [f"{values[m][i]:g}", ours]
        rows.append(row)
    lines += ["### Table 6: gradient norm (`grad_norm_release`), mean / max over training", ""]
    return lines + [*_table(header, rows), ""]


def render_markdown(root: Path, groups: list[dict], figures: dict[str, Path], n_resamples: int = N_RESAMPLES) -> str:
    n_runs = sum(len(g["runs"]) for g in groups)
    empty = sum(1 for g in groups for r in g["runs"] if not r["eval_rows"])
    lines = [
        f"# Report: {root.name or root}",
        "",
        f"{n_runs} runs in {len(groups)} task × method groups"
        + (f"; {empty} without evaluations" if empty else "")
        + ". Numbers: `report.json`.",
        "",
    ]
    lines += _runs_section(groups, root)
    lines += _results_section(groups, n_resamples)
    lines += _curves_section(figures)
    lines += _grad_section(groups)
    lines += _paper_section(groups)
    return "\n".join(lines)
