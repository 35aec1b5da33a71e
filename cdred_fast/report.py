"""``cdred-fast report DIR``: tables and learning curves of many runs, next to the paper's numbers.

Every directory under ``DIR`` (``DIR`` itself included) that holds a ``config.yaml`` is a
run: a sweep directory (``DIR/<trial>/``) and a plain ``runs/`` folder both work. The
task, method and seed come from ``config.yaml`` (read with ``yaml.safe_load``), never
from directory names. Runs are grouped by (task, method, variant), where the variant
names the config keys other than the seed (and bookkeeping keys such as ``work_dir``)
whose values differ between the runs of one (task, method) -- ``zeta=1`` next to
``zeta=0.5``, say; it is empty when the runs differ only by seed.

Per run, from ``eval.csv``: *final* is the value of the last evaluation (largest step),
*best* the largest over all evaluations, for ``success`` (last step), ``success_any``
(any step) and ``episode_return``. Per group, over seeds: mean, sample standard deviation
(ddof=1) and a 95 % bootstrap interval of the mean. The interval is
``scipy.stats.bootstrap`` with the percentile method, 10,000 resamples and a fixed seed
(so a report is reproducible). Percentile rather than BCa: with the 3-5 seeds of a
typical sweep BCa's acceleration estimate is degenerate (NaN for tied values); with 3
seeds the percentile interval is close to [min, max] -- a few seeds only give a rough
interval. One seed gives the value and ``n=1``, no interval. scipy is used rather than
``rliable``, which pulls in pandas, statsmodels, arch and seaborn for the same bootstrap.

Learning curves (``DIR/curves_<task>.png``, one per task, methods overlaid): each run's
evaluations are interpolated linearly onto the union of all evaluation steps of its
group, inside that run's own step range (no extrapolation); at each step the mean over
the runs covering it is drawn, shaded with the bootstrap interval where two or more do.

Gradient norms (the layout of the paper's Table 6), from ``train.csv``: per run the mean
of ``grad_norm_release`` over training (its interval means weighted by ``updates``) and
the largest ``grad_norm_release_max``; per group the mean over seeds of the run means and
the largest run maximum. The same for ``grad_norm`` (the world-model optimiser's norm).
An infinite norm is kept (the mean and max read inf); NaN rows are left out and counted.

A run without evaluations is listed as "no evaluations"; a malformed file stops the
report with an error naming the file (and line). ``report.md``, ``report.json`` (the
numbers) and the figures are written atomically.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import paper
from .checkpoint import atomic_write

__all__ = ["ReportError", "Run", "Table", "bootstrap_ci", "find_runs", "paired_bootstrap", "summarize", "write_report"]

# (eval.csv column, label)
METRICS = (("success", "success (last step)"), ("success_any", "success (any step)"), ("episode_return", "return"))
CONFIDENCE = 0.95
N_RESAMPLES = 10_000
CURVE_RESAMPLES = 2_000
BOOTSTRAP_SEED = 0
# config keys that do not make two runs different experiments (save_video: recording changes no result)
BOOKKEEPING_KEYS = frozenset({"seed", "work_dir", "device", "episode_length", "save_video"})
# the order of methods in tables: the paper's two, then the others alphabetically
METHOD_ORDER = ("iqmpc", "cdred", "bc", "tdmpc2")


class ReportError(ValueError):
    """A run directory or one of its files cannot be read; the message names the file."""


class Table:
    """A CSV file of numbers (``train.csv``/``eval.csv``), rows sorted by ``step``.

    Empty cells (a column that appeared later) read as NaN. A file with a row of the
    wrong length, or without a ``step`` column, is refused; a non-number is refused when
    its column is read.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"cannot read {self.path}: {exc}") from exc
        lines = [row for row in csv.reader(io.StringIO(text))]
        self.header: list[str] = lines[0] if lines else []
        self.rows: list[tuple[int, list[str]]] = []  # (line number, cells)
        if not self.header:
            return  # an empty file: no rows yet
        if "step" not in self.header:
            raise ReportError(f"{self.path}: no 'step' column in the header {self.header}")
        for number, row in enumerate(lines[1:], start=2):
            if not row:
                continue
            if len(row) != len(self.header):
                raise ReportError(f"{self.path}, line {number}: {len(row)} fields, the header has {len(self.header)}")
            self.rows.append((number, row))
        steps = self.column("step")
        if np.isnan(steps).any():
            line = self.rows[int(np.flatnonzero(np.isnan(steps))[0])][0]
            raise ReportError(f"{self.path}, line {line}: no step")
        order = np.argsort(steps, kind="stable")
        self.rows = [self.rows[i] for i in order]

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, key: str) -> np.ndarray:
        """The column as floats, NaN where empty or absent."""
        if key not in self.header:
            return np.full(len(self.rows), np.nan)
        j = self.header.index(key)
        out = np.empty(len(self.rows))
        for i, (number, row) in enumerate(self.rows):
            cell = row[j].strip()
            try:
                out[i] = float(cell) if cell else np.nan
            except ValueError:
                raise ReportError(f"{self.path}, line {number}: column {key!r} is not a number: {cell!r}") from None
        return out

    def filled(self, key: str) -> np.ndarray:
        """Whether each row has a (non-empty) cell in the column."""
        if key not in self.header:
            return np.zeros(len(self.rows), bool)
        j = self.header.index(key)
        return np.array([bool(row[j].strip()) for _, row in self.rows], bool)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the rows where ``key`` is a number; for a repeated step
        the last row."""
        steps, values = self.column("step"), self.column(key)
        ok = np.isfinite(values)
        steps, values = steps[ok], values[ok]
        last = np.r_[steps[1:] != steps[:-1], True] if len(steps) else np.zeros(0, bool)
        return steps[last], values[last]


@dataclass
class Run:
    """One run directory: its config and its logs (None where the file is absent)."""

    path: Path
    config: dict
    eval: Optional[Table]
    train: Optional[Table]
    variant: str = ""

    @property
    def task(self) -> str:
        return str(self.config["task"])

    @property
    def method(self) -> str:
        return str(self.config.get("method", "cdred"))

    @property
    def seed(self):
        return self.config.get("seed")


def load_run(directory: str | os.PathLike) -> Run:
    """The run in ``directory`` (its ``config.yaml``, ``eval.csv``, ``train.csv``)."""
    import yaml

    directory = Path(directory)
    path = directory / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict) or "task" not in config:
        raise ReportError(f"{path}: not a run config (no 'task' key)")
    logs = {
        name: Table(directory / name) if (directory / name).is_file() else None for name in ("eval.csv", "train.csv")
    }
    return Run(directory, config, logs["eval.csv"], logs["train.csv"])


def find_runs(root: str | os.PathLike) -> list[Run]:
    """Every run under ``root`` (directories with a ``config.yaml``; hidden ones skipped),
    each with its variant label set."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    runs = [
        load_run(p.parent)
        for p in sorted(root.rglob("config.yaml"))
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not runs:
        raise ReportError(f"no run directories (with a config.yaml) under {root}")
    by_key: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_key.setdefault((run.task, run.method), []).append(run)
    for group in by_key.values():
        keys = sorted({k for r in group for k in r.config} - BOOKKEEPING_KEYS)
        varying = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in group}) > 1]
        for run in group:
            run.variant = ",".join(f"{k}={_plain(run.config.get(k))}" for k in varying)
    return runs


def _plain(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def bootstrap_ci(
    values, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple:
    """Percentile bootstrap interval of the mean of ``values`` (scipy, fixed seed).

    ``values``: two or more numbers, giving two floats; or a 2-D array, one sample per
    row, giving two arrays (one call for many intervals)."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if x.shape[-1] < 2:
        raise ValueError("a bootstrap interval needs two or more values")
    if x.ndim == 1 and np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    # scipy >= 1.15 takes `rng`, older releases `random_state`
    seeding = {"rng": rng} if "rng" in inspect.signature(bootstrap).parameters else {"random_state": rng}
    res = bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile", axis=-1, **seeding
    )
    low, high = res.confidence_interval.low, res.confidence_interval.high
    return (float(low), float(high)) if x.ndim == 1 else (np.asarray(low), np.asarray(high))


def paired_bootstrap(differences, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple:
    """Percentile bootstrap interval (95 %) of the mean of paired ``differences``, resampling
    the pairs with numpy's generator of ``seed``: the interval of the paired comparisons
    (results/precision-seeds/paired.py, bench/precision_outcome.py), whose committed numbers
    come from these draws. ``differences``: ``[n]`` gives two floats; ``[n, m]`` (m measures
    per pair, resampled together) two arrays ``[m]``."""
    x = np.asarray(differences, dtype=float)
    if x.ndim not in (1, 2) or len(x) < 1:
        raise ValueError(f"paired_bootstrap takes [n] or [n, m] differences, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    low, high = np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)
    return (float(low), float(high)) if x.ndim == 1 else (low, high)


def describe(values, n_resamples: int = N_RESAMPLES) -> Optional[dict]:
    """``n``, ``values``, ``mean``, ``std`` (ddof=1), ``ci_low``/``ci_high`` of per-seed values
    (std and interval None for one value; None for no values)."""
    x = [float(v) for v in values]
    if not x:
        return None
    out = {"n": len(x), "values": x, "mean": float(np.mean(x)), "std": None, "ci_low": None, "ci_high": None}
    if len(x) > 1:
        out["std"] = float(np.std(x, ddof=1))
        out["ci_low"], out["ci_high"] = bootstrap_ci(x, n_resamples=n_resamples)
    return out


def _final_best(run: Run, key: str) -> Optional[tuple[float, float]]:
    if run.eval is None:
        return None
    _, values = run.eval.series(key)
    return (float(values[-1]), float(values.max())) if len(values) else None


def _grad_stats(run: Run, key: str) -> Optional[tuple[float, float, int]]:
    """(mean over training, max, rows logged as NaN) of ``key`` in ``train.csv``; means
    weighted by ``updates``. An infinite norm is kept (the mean and max become inf); NaN
    rows are left out of both and counted."""
    if run.train is None or not len(run.train):
        return None
    means, maxima = run.train.column(key), run.train.column(f"{key}_max")
    logged = run.train.filled(key)
    ok = logged & ~np.isnan(means)
    nan_rows = int((logged & np.isnan(means)).sum())
    if not ok.any():
        return (math.nan, math.nan, nan_rows) if nan_rows else None
    w = run.train.column("updates")[ok]
    if not (np.isfinite(w).all() and (w > 0).all()):
        w = np.ones(ok.sum())
    peak = maxima[~np.isnan(maxima)]
    top = float(peak.max()) if len(peak) else float(means[ok].max())
    return float(np.average(means[ok], weights=w)), top, nan_rows


def _method_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def summarize(runs: list[Run], n_resamples: int = N_RESAMPLES) -> list[dict]:
    """One dict per (task, method, variant), sorted: its runs, ``metrics[key][final|best]``
    (:func:`describe` over seeds) and ``grad_norm[key]`` (mean, max, n)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.method, run.variant), []).append(run)
    out = []
    for task, method, variant in sorted(groups, key=lambda k: (k[0], _method_key(k[1]), k[2])):
        members = sorted(groups[(task, method, variant)], key=lambda r: (str(r.seed), str(r.path)))
        entry = {"task": task, "method": method, "variant": variant, "runs": [], "metrics": {}, "grad_norm": {}}
        for run in members:
            steps = run.eval.column("step") if run.eval is not None else np.zeros(0)
            entry["runs"].append(
                {
                    "dir": str(run.path),
                    "seed": run.seed,
                    "eval_rows": len(steps),
                    "last_step": float(steps[-1]) if len(steps) else None,
                    "train_rows": len(run.train) if run.train is not None else 0,
                }
            )
        for key, _ in METRICS:
            pairs = [p for p in (_final_best(r, key) for r in members) if p is not None]
            entry["metrics"][key] = {
                "final": describe([p[0] for p in pairs], n_resamples),
                "best": describe([p[1] for p in pairs], n_resamples),
            }
        for key in ("grad_norm_release", "grad_norm"):
            stats = [s for s in (_grad_stats(r, key) for r in members) if s is not None]
            entry["grad_norm"][key] = (
                {
                    "mean": float(np.mean([s[0] for s in stats])),
                    "max": float(np.max([s[1] for s in stats])),
                    "n": len(stats),
                    "nan_rows": sum(s[2] for s in stats),
                }
                if stats
                else None
            )
        entry["_runs"] = members
        out.append(entry)
    return out


def learning_curve(runs: list[Run], key: str, n_resamples: int = CURVE_RESAMPLES) -> Optional[dict]:
    """``steps``, ``mean``, ``low``, ``high``, ``n`` of ``key`` over the runs (see the module doc)."""
    series = [s for s in (r.eval.series(key) for r in runs if r.eval is not None) if len(s[0])]
    if not series:
        return None
    grid = np.unique(np.concatenate([s for s, _ in series]))
    ys = np.full((len(series), len(grid)), np.nan)
    for i, (steps, values) in enumerate(series):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        ys[i, inside] = np.interp(grid[inside], steps, values)
    n = np.isfinite(ys).sum(axis=0)
    mean = np.array([ys[np.isfinite(ys[:, j]), j].mean() for j in range(len(grid))])
    low, high = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    # the steps every run covers: one batched call; the others (runs of unequal length) one by one
    full = n == len(series)
    if len(series) >= 2 and full.any():
        low[full], high[full] = bootstrap_ci(ys[:, full].T, n_resamples=n_resamples)
    for j in np.flatnonzero((n >= 2) & ~full):
        low[j], high[j] = bootstrap_ci(ys[np.isfinite(ys[:, j]), j], n_resamples=n_resamples)
    return {"steps": grid, "mean": mean, "low": low, "high": high, "n": n}


def _label(entry: dict) -> str:
    name = paper.METHOD_NAMES.get(entry["method"], entry["method"])
    return f"{name} [{entry['variant']}]" if entry["variant"] else name


def plot_task(task: str, entries: list[dict], path: Path) -> Optional[Path]:
    """``path``: success (last step, any step) and return of every group of ``task``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    drawn = False
    for color, entry in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, entries):
        for ax, (key, _) in zip(axes, METRICS):
            curve = learning_curve(entry["_runs"], key)
            if curve is None:
                continue
            drawn = True
            unit = " (x: updates)" if entry["method"] == "bc" else ""
            label = f"{_label(entry)}{unit} n={int(curve['n'].max())}"
            ax.plot(curve["steps"], curve["mean"], color=color, marker="o", markersize=3, label=label)
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=color, alpha=0.2, linewidth=0)
    if not drawn:
        plt.close(fig)
        return None
    for ax, (key, title) in zip(axes, METRICS):
        ax.set_title(f"eval {title}")
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        if key != "episode_return":
            ax.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task}: mean over seeds, shaded {CONFIDENCE:.0%} bootstrap interval")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, out.getvalue())


def _safe_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task)


def write_report(root: str | os.PathLike, n_resamples: int = N_RESAMPLES) -> Path:
    """Write ``root/report.md``, ``root/report.json`` and ``root/curves_<task>.png``; returns
    the path of ``report.md``."""
    root = Path(root)
    groups = summarize(find_runs(root), n_resamples)
    figures: dict[str, Path] = {}
    for task in sorted({g["task"] for g in groups}):
        path = plot_task(task, [g for g in groups if g["task"] == task], root / f"curves_{_safe_name(task)}.png")
        if path is not None:
            figures[task] = path
    numbers = {
        "root": str(root),
        "confidence": CONFIDENCE,
        "bootstrap": {"method": "percentile", "n_resamples": n_resamples, "seed": BOOTSTRAP_SEED},
        "groups": [{k: v for k, v in g.items() if not k.startswith("_")} for g in groups],
        "figures": {task: p.name for task, p in figures.items()},
    }
    from .report_markdown import render_markdown

    atomic_write(root / "report.json", (json.dumps(numbers, indent=1) + "\n").encode())
    return atomic_write(root / "report.md", (render_markdown(root, groups, figures, n_resamples) + "\n").encode())
