"""The logs of a training run: CSV files, TensorBoard events, the run's config as YAML and
the learning-curve plot.

Every file is written with :func:`cdred_fast.checkpoint.atomic_write`, so a run killed
at any moment leaves the previous complete version of each in place.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .checkpoint import atomic_write
from .config import CDREDConfig

__all__ = ["CSVLog", "RunLogger", "write_config"]


class CSVLog:
    """A CSV file of dict rows, rewritten atomically; columns grow as new keys appear."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [dict(r) for r in csv.DictReader(f)]

    def truncate_after(self, step: int) -> None:
        """Drop the rows whose ``step`` is above ``step`` (all of them for ``-1``) and rewrite."""
        self.rows = [r for r in self.rows if float(r["step"]) <= step]
        self._flush()

    def keep_first(self, n: int) -> None:
        """Keep the first ``n`` rows (those written before a checkpoint) and rewrite."""
        self.rows = self.rows[: max(int(n), 0)]
        self._flush()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._flush()

    def column(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the rows that have ``key``."""
        pts = [(float(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "")]
        if not pts:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*pts)
        return np.asarray(steps), np.asarray(values)

    def _flush(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, out.getvalue().encode())


def write_config(path: str | os.PathLike, cfg: CDREDConfig) -> Path:
    """Write ``cfg.to_dict()`` as YAML (what ``cdred-fast train --config`` reads back)."""
    from omegaconf import OmegaConf

    return atomic_write(path, OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())).encode())


def _tensorboard(path: Path, purge_step: Optional[int]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # tensorboard missing or broken: CSV logs still work
        warnings.warn(f"TensorBoard logging disabled: {exc}", stacklevel=2)
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


class RunLogger:
    """``train.csv``, ``eval.csv``, ``tb/`` and ``learning_curve.png`` of one work directory.

    Existing CSV files are read back (a resumed run appends to them); call
    :meth:`truncate_after` or :meth:`keep_rows` to drop the rows written after a checkpoint.
    ``purge_step`` (a resumed run: the first step not covered by its checkpoint) makes
    TensorBoard drop the events of earlier sessions from that step on, so that the steps
    logged again after a resume are not shown twice. ``fresh`` deletes the TensorBoard
    events of an earlier run that left no checkpoint.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike,
        tensorboard: bool = True,
        purge_step: Optional[int] = None,
        fresh: bool = False,
    ):
        self.work_dir = Path(work_dir)
        self.train = CSVLog(self.work_dir / "train.csv")
        self.eval = CSVLog(self.work_dir / "eval.csv")
        if fresh and (self.work_dir / "tb").is_dir():
            shutil.rmtree(self.work_dir / "tb")
        self.tb = _tensorboard(self.work_dir / "tb", purge_step) if tensorboard else None

    def truncate_after(self, step: int) -> None:
        self.train.truncate_after(step)
        self.eval.truncate_after(step)

    def keep_rows(self, train: int, eval: int) -> None:
        """Keep the first ``train`` rows of train.csv and ``eval`` rows of eval.csv."""
        self.train.keep_first(train)
        self.eval.keep_first(eval)

    def row_counts(self) -> dict[str, int]:
        """``{"train": rows of train.csv, "eval": rows of eval.csv}``, what a checkpoint records."""
        return {"train": len(self.train.rows), "eval": len(self.eval.rows)}

    def log_eval(self, step: int, result: Mapping[str, float]) -> None:
        """One row of ``eval.csv``: ``step`` and the evaluation's values."""
        self.eval.append({"step": step, **result})
        self._scalars("eval", result, step)

    def log_train(
        self,
        step: int,
        episodes: int,
        stats: Mapping[str, Sequence[float]],
        episode_returns: Sequence[float],
        steps_per_s: float,
    ) -> None:
        """One row of ``train.csv`` for an interval: ``step, episodes``, the mean return of
        the episodes that ended in it, ``steps_per_s``, the mean of every update statistic,
        the maximum of the gradient norms (``grad_norm_max``, ``grad_norm_release_max``,
        ``pi_grad_norm_max``) and the number of updates."""
        row: dict[str, Any] = {"step": step, "episodes": episodes}
        if episode_returns:
            row["episode_return"] = float(np.mean(episode_returns))
        row["steps_per_s"] = steps_per_s
        for k, values in stats.items():
            row[k] = float(np.mean(values))
        for k in ("grad_norm", "grad_norm_release", "pi_grad_norm"):
            if stats.get(k):
                row[f"{k}_max"] = float(np.max(stats[k]))
        row["updates"] = len(stats.get("total_loss", []))
        self.train.append(row)
        self._scalars("train", {k: v for k, v in row.items() if k != "step"}, step)

    def _scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            self.tb.add_scalar(f"{prefix}/{k}", float(v), step)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def plot(self, cfg: CDREDConfig, path: Optional[str | os.PathLike] = None) -> Path:
        """Write the learning curve (default ``work_dir/learning_curve.png``): evaluation
        success and return, and the reward on sampled transitions (CDRED's on expert and
        behavioural samples, or the environment's for ``method="tdmpc2"``); for ``method="bc"`` the
        log-likelihood of the expert actions, over updates."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        bc = cfg.method == "bc"
        xlabel = "updates" if bc else "environment steps"
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for key, label in (("success", "at the last step"), ("success_any", "at any step")):
            x, y = self.eval.column(key)
            axes[0].plot(x, y, marker="o", label=label)
        axes[0].legend()
        x, y = self.eval.column("episode_return")
        axes[1].plot(x, y, marker="o")
        for ax, title in ((axes[0], "eval success"), (axes[1], "eval return")):
            ax.set_xlabel(xlabel)
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(-0.05, 1.05)
        # the third panel: (train.csv columns, title) of the method
        keys, title = {
            "tdmpc2": (("reward_behavioral",), "environment reward on sampled transitions"),
            "bc": (("bc_log_likelihood",), "log-likelihood of the expert actions"),
            "iqmpc": (("reward_expert", "reward_behavioral"), "IQ-MPC decoded reward on expert / behavioural samples"),
        }.get(cfg.method, (("reward_expert", "reward_behavioral"), "CDRED reward on expert / behavioural samples"))
        for key in keys:
            x, y = self.train.column(key)
            axes[2].plot(x, y, label=key)
        axes[2].set_xlabel(xlabel)
        axes[2].set_title(title)
        axes[2].legend()
        axes[2].grid(alpha=0.3)
        method = {
            "tdmpc2": "TD-MPC2 (environment reward)",
            "bc": "BC (updates, no interaction)",
            "iqmpc": "IQ-MPC",
        }.get(cfg.method, "CDRED")
        fig.suptitle(f"{method} on {cfg.task} ({cfg.obs}, seed {cfg.seed})")
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=100)
        plt.close(fig)
        return atomic_write(self.work_dir / "learning_curve.png" if path is None else path, out.getvalue())
