"""Demonstration files: format, validation, safe import of released data.

File format (``format_version`` 1): one ``.npz`` archive (``numpy.savez``, no
pickled objects, read back with ``allow_pickle=False``) holding

============== ===================== ==========================================
key            dtype / shape          meaning
============== ===================== ==========================================
obs            float32 [N, obs_dim]   observation before each transition (state)
               uint8 [N, C, H, W]     ... or stacked RGB frames (pixels, C = 9)
action         float32 [N, A]         action taken, in [-1, 1] (1e-5 tolerance)
reward         float32 [N]            environment reward (CDRED never uses it)
next_obs       like obs               observation after each transition
episode_lengths int64 [E]             transitions per episode, all > 0, sum N
success        bool [E]               did the episode succeed at any step
format_version int64 []               1
task           str []                 registered task name, e.g. "mw-reach-wall"
obs_dim        int64 []               flat observation size, prod(obs.shape[1:])
action_dim     int64 []               = action.shape[1]
obs_shape      int64 [1] or [3]       optional (written since pixels): obs.shape[1:]
seeds          int64 [E]              optional: the ``reset(seed=...)`` of each episode
success_last   bool [E]               optional: did the episode succeed at its last step (the
                                      paper's and TD-MPC2's success)
============== ===================== ==========================================

The optional keys are additions that older readers ignore, so the format
version stays 1. ``seeds`` makes an episode reproducible: resetting the task
with that seed and replaying the actions re-creates it (what
:func:`cdred_fast.collect.render_pixels` does to render pixel demonstrations from state ones).
Files with pixel observations are written with ``numpy.savez_compressed``
(rendered frames compress well); ``numpy.load`` reads both kinds the same way.

Episodes are stored back to back. Within an episode ``next_obs[t] ==
obs[t + 1]``; :meth:`Demonstrations.validate` checks this because the replay
buffer rebuilds each episode's ``T + 1`` observations from ``obs`` and the last
``next_obs``.

Files are written with :func:`cdred_fast.checkpoint.atomic_write` (a temporary file
in the destination folder moved into place with :func:`os.replace`), so a reader
never sees a half-written file. Collecting demonstrations and rendering pixel ones
is :mod:`cdred_fast.collect`.

The authors' released expert files are pickles; :func:`cdred_fast.released.import_released_pickle`
reads them with a restricted unpickler that can rebuild numpy arrays and plain
containers and nothing else, so a malicious file cannot run code.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ._npz import NpzError, read_npz
from .checkpoint import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "DemonstrationError",
    "Demonstrations",
    "load",
    "first_episodes",
    "same_demonstrations",
    "summary",
]

FORMAT_VERSION = 1

_ARRAY_KEYS = ("obs", "action", "reward", "next_obs", "episode_lengths", "success")
_META_KEYS = ("format_version", "task", "obs_dim", "action_dim")
REQUIRED_KEYS = _ARRAY_KEYS + _META_KEYS
OPTIONAL_KEYS = ("obs_shape", "seeds", "success_last")

_ACTION_TOL = 1e-5  # actions may exceed [-1, 1] by this much (rounding of a rescaled action)
_CHUNK = 4096  # rows compared at a time when checking next_obs[t] == obs[t + 1] (bounds memory for images)


def _obs_array(x: Any) -> np.ndarray:
    """Observations as stored: uint8 images stay uint8, anything else becomes float32."""
    arr = np.asarray(x)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr, dtype=np.float32)


class DemonstrationError(ValueError):
    """A demonstration file or object is unreadable, inconsistent or does not fit the task."""


@dataclass(eq=False)
class Demonstrations:
    """A set of episodes, stored back to back (see the module docstring).

    Build one with :meth:`from_episodes`, :func:`cdred_fast.collect.collect`, :meth:`load` or
    :func:`cdred_fast.released.import_released_pickle`; the constructor converts dtypes and
    validates everything, so an existing object is always consistent.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    episode_lengths: np.ndarray
    success: np.ndarray
    task: str
    seeds: Optional[np.ndarray] = None  # reset seed of each episode, when known
    success_last: Optional[np.ndarray] = None  # success at each episode's last step, when known

    def __post_init__(self):
        self.obs = _obs_array(self.obs)
        self.action = np.ascontiguousarray(self.action, dtype=np.float32)
        self.reward = np.ascontiguousarray(self.reward, dtype=np.float32)
        self.next_obs = _obs_array(self.next_obs)
        self.episode_lengths = np.ascontiguousarray(self.episode_lengths, dtype=np.int64)
        self.success = np.ascontiguousarray(self.success, dtype=bool)
        self.task = str(self.task)
        if self.seeds is not None:
            self.seeds = _seeds_array(self.seeds, "demonstrations")
        if self.success_last is not None:
            self.success_last = np.ascontiguousarray(self.success_last, dtype=bool)
        self.validate()

    # ------------------------------------------------------------------ shape
    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one observation: ``(obs_dim,)`` for state, ``(C, H, W)`` for pixels."""
        return tuple(int(d) for d in self.obs.shape[1:])

    @property
    def obs_dim(self) -> int:
        """Flat observation size (``prod(obs_shape)``; the vector size for state)."""
        return int(np.prod(self.obs.shape[1:]))

    @property
    def is_pixels(self) -> bool:
        return self.obs.ndim == 4

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_lengths.shape[0])

    @property
    def num_transitions(self) -> int:
        return int(self.obs.shape[0])

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        obs = f"obs_shape={self.obs_shape}" if self.is_pixels else f"obs_dim={self.obs_dim}"
        return (
            f"Demonstrations(task={self.task!r}, episodes={self.num_episodes}, "
            f"transitions={self.num_transitions}, {obs}, action_dim={self.action_dim}, "
            f"success_rate={self.success.mean():.2f}{', seeds' if self.seeds is not None else ''})"
        )

    # ------------------------------------------------------------- episodes
    def episodes(self) -> Iterator[dict[str, Any]]:
        """Yield one dict per episode: ``obs [T, *obs_shape]``, ``action [T, A]``,
        ``reward [T]``, ``next_obs [T, *obs_shape]`` (views, not copies), ``success``
        (bool), ``success_last`` (bool, or None when not recorded) and ``seed`` (int, or None
        when the file records no seeds)."""
        start = 0
        seeds = self.seeds.tolist() if self.seeds is not None else [None] * self.num_episodes
        last = self.success_last.tolist() if self.success_last is not None else [None] * self.num_episodes
        for length, success, success_last, seed in zip(
            self.episode_lengths.tolist(), self.success.tolist(), last, seeds
        ):
            end = start + length
            yield {
                "obs": self.obs[start:end],
                "action": self.action[start:end],
                "reward": self.reward[start:end],
                "next_obs": self.next_obs[start:end],
                "success": bool(success),
                "success_last": success_last,
                "seed": seed,
            }
            start = end

    @classmethod
    def from_episodes(cls, episodes: list[dict[str, Any]], task: str) -> "Demonstrations":
        """Concatenate per-episode dicts (keys ``obs``, ``action``, ``reward``,
        ``next_obs``, optionally ``success`` (default False), ``success_last`` and ``seed``
        (the episode's reset seed); ``success_last`` and ``seed`` are given for every episode
        or for none)."""
        episodes = list(episodes)
        if not episodes:
            raise DemonstrationError("no episodes given: a demonstration set cannot be empty")
        for i, ep in enumerate(episodes):
            missing = [k for k in ("obs", "action", "reward", "next_obs") if k not in ep]
            if missing:
                raise DemonstrationError(f"episode {i} lacks {missing}")
        seeds = [ep.get("seed") for ep in episodes]
        if any(x is None for x in seeds) and not all(x is None for x in seeds):
            raise DemonstrationError("some episodes have a reset seed and others do not: give all or none")
        last = [ep.get("success_last") for ep in episodes]
        if any(x is None for x in last) and not all(x is None for x in last):
            raise DemonstrationError("some episodes record success_last and others do not: give all or none")
        lengths = [len(ep["obs"]) for ep in episodes]
        return cls(
            obs=np.concatenate([_obs_array(ep["obs"]) for ep in episodes]),
            action=np.concatenate([np.asarray(ep["action"], np.float32) for ep in episodes]),
            reward=np.concatenate([np.asarray(ep["reward"], np.float32).reshape(-1) for ep in episodes]),
            next_obs=np.concatenate([_obs_array(ep["next_obs"]) for ep in episodes]),
            episode_lengths=np.asarray(lengths, np.int64),
            success=np.asarray([bool(ep.get("success", False)) for ep in episodes]),
            task=task,
            seeds=None if seeds[0] is None else np.asarray(seeds, np.int64),
            success_last=None if last[0] is None else np.asarray(last, bool),
        )

    # ------------------------------------------------------------ validation
    def validate(self, source: str = "demonstrations") -> None:
        """Raise :class:`DemonstrationError` unless the arrays are mutually consistent,
        non-empty and finite. ``source`` names the data in messages (e.g. a file)."""

        def fail(msg: str):
            raise DemonstrationError(f"{source}: {msg}")

        if not self.task:
            fail("the task name is empty")
        if self.obs.ndim not in (2, 4):
            fail(f"obs must be 2-D [N, obs_dim] (state) or 4-D [N, C, H, W] (pixels), got shape {self.obs.shape}")
        if self.obs.ndim == 4 and self.obs.dtype != np.uint8:
            fail(f"pixel observations [N, C, H, W] must be uint8, got {self.obs.dtype}")
        if self.obs.ndim == 2 and self.obs.dtype != np.float32:
            fail(f"state observations [N, obs_dim] must be floating point, got {self.obs.dtype}")
        if self.action.ndim != 2:
            fail(f"action must be 2-D [N, action_dim], got shape {self.action.shape}")
        n = self.obs.shape[0]
        if self.episode_lengths.ndim != 1 or self.episode_lengths.shape[0] == 0 or n == 0:
            fail("contains no episodes (empty demonstration set)")
        if self.next_obs.shape != self.obs.shape or self.next_obs.dtype != self.obs.dtype:
            fail(
                f"next_obs has shape {self.next_obs.shape} ({self.next_obs.dtype}) but obs has "
                f"{self.obs.shape} ({self.obs.dtype})"
            )
        if self.action.shape[0] != n:
            fail(f"action has {self.action.shape[0]} rows but obs has {n}")
        if self.reward.shape != (n,):
            fail(f"reward must have shape ({n},), got {self.reward.shape}")
        if self.obs_dim == 0 or self.action.shape[1] == 0:
            fail(f"zero-sized observation or action (obs {self.obs.shape}, action {self.action.shape})")
        if self.success.shape != self.episode_lengths.shape:
            fail(f"success has shape {self.success.shape}, expected ({self.num_episodes},)")
        if np.any(self.episode_lengths <= 0):
            fail(f"episode lengths must be positive, got {self.episode_lengths.min()}")
        total = sum(self.episode_lengths.tolist())  # Python ints: an int64 sum could wrap around
        if total != n:
            fail(f"episode lengths sum to {total} but there are {n} transitions")
        if self.seeds is not None and self.seeds.shape != self.episode_lengths.shape:
            fail(f"seeds has shape {self.seeds.shape}, expected ({self.num_episodes},)")
        if self.success_last is not None:
            if self.success_last.shape != self.episode_lengths.shape:
                fail(f"success_last has shape {self.success_last.shape}, expected ({self.num_episodes},)")
            if np.any(self.success_last & ~self.success):
                fail("success_last is True for an episode whose success (at any step) is False")
        for key in ("obs", "action", "reward", "next_obs"):
            arr = getattr(self, key)
            if arr.dtype.kind != "f":  # uint8 pixels are always finite
                continue
            if not np.all(np.isfinite(arr)):
                bad = np.argwhere(~np.isfinite(arr))[0]
                fail(f"{key} contains NaN or inf (first at index {tuple(int(i) for i in bad)})")
        outside = np.abs(self.action) > 1.0 + _ACTION_TOL
        if outside.any():
            bad = tuple(int(i) for i in np.argwhere(outside)[0])
            fail(f"action {float(self.action[bad])!r} at index {bad} is outside the normalised action range [-1, 1]")
        # Within an episode, each next_obs must be the following obs.
        ends = np.cumsum(self.episode_lengths)
        inner = np.ones(n, dtype=bool)
        inner[ends - 1] = False  # the last transition of an episode has no following obs
        idx = np.flatnonzero(inner)
        for lo in range(0, idx.size, _CHUNK):
            part = idx[lo : lo + _CHUNK]
            mismatch = (self.next_obs[part] != self.obs[part + 1]).reshape(part.size, -1).any(axis=1)
            if mismatch.any():
                t = int(part[np.argmax(mismatch)])
                ep = int(np.searchsorted(ends, t, side="right"))
                fail(
                    f"next_obs[{t}] differs from obs[{t + 1}] inside episode {ep}: episodes are not "
                    "contiguous sequences (wrong episode_lengths or shuffled transitions?)"
                )

    def check_compatible(
        self,
        task: str | None = None,
        obs_dim: int | None = None,
        action_dim: int | None = None,
        source: str = "demonstrations",
        obs_shape: tuple[int, ...] | None = None,
    ) -> None:
        """Raise :class:`DemonstrationError` if these demonstrations do not fit the given
        task / flat observation size / action size / observation shape (any of them may
        be None: not checked)."""
        obs_shape = None if obs_shape is None else tuple(int(d) for d in obs_shape)
        mismatched = (
            (task is not None and task != self.task)
            or (obs_dim is not None and int(obs_dim) != self.obs_dim)
            or (action_dim is not None and int(action_dim) != self.action_dim)
            or (obs_shape is not None and obs_shape != self.obs_shape)
        )
        if mismatched:
            wanted = []
            if task is not None:
                wanted.append(f"task {task!r}")
            if obs_dim is not None:
                wanted.append(f"obs_dim {int(obs_dim)}")
            if obs_shape is not None:
                wanted.append(f"obs_shape {obs_shape}")
            if action_dim is not None:
                wanted.append(f"action_dim {int(action_dim)}")
            shape = f" (obs_shape {self.obs_shape})" if obs_shape is not None or self.is_pixels else ""
            raise DemonstrationError(
                f"{source} are for task {self.task!r} with obs_dim {self.obs_dim}{shape} and action_dim "
                f"{self.action_dim}, but the environment has {', '.join(wanted)}"
            )

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz``, compressed for pixels) with :func:`atomic_write`
        (a crash leaves either the old file or the new one); returns the path."""
        payload = {
            "obs": self.obs,
            "action": self.action,
            "reward": self.reward,
            "next_obs": self.next_obs,
            "episode_lengths": self.episode_lengths,
            "success": self.success,
            "format_version": np.int64(FORMAT_VERSION),
            "task": np.str_(self.task),
            "obs_dim": np.int64(self.obs_dim),
            "action_dim": np.int64(self.action_dim),
            "obs_shape": np.asarray(self.obs_shape, dtype=np.int64),
        }
        if self.seeds is not None:
            payload["seeds"] = self.seeds
        if self.success_last is not None:
            payload["success_last"] = self.success_last
        writer = np.savez_compressed if self.is_pixels else np.savez
        return atomic_write(path, lambda f: writer(f, **payload))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        task: str | None = None,
        obs_dim: int | None = None,
        action_dim: int | None = None,
        obs_shape: tuple[int, ...] | None = None,
    ) -> "Demonstrations":
        """Read and validate a file written by :meth:`save`.

        ``task``, ``obs_dim``, ``action_dim`` and ``obs_shape``, when given, must match the file.

        Raises:
            FileNotFoundError: no such file.
            DemonstrationError (a ``ValueError``): anything else wrong, with the
                file named in the message.
        """
        path = Path(path)
        where = f"demonstration file {str(path)!r}"
        if not path.exists():
            raise FileNotFoundError(f"{where} does not exist")
        if not path.is_file():
            raise DemonstrationError(f"{where} is not a regular file")
        try:
            keys, data = read_npz(path, REQUIRED_KEYS + OPTIONAL_KEYS)  # checks every member before reading it
        except NpzError as exc:
            sep = " " if str(exc).startswith(("is ", "holds ")) else ": "
            raise DemonstrationError(f"{where}{sep}{exc}") from exc
        missing = [k for k in REQUIRED_KEYS if k not in keys]
        if missing:
            raise DemonstrationError(f"{where} lacks required key(s) {missing} (has {sorted(keys)})")

        version = _scalar(data, "format_version", where, np.integer)
        if version != FORMAT_VERSION:
            raise DemonstrationError(
                f"{where} has format_version {version}; this version of cdred_fast reads {FORMAT_VERSION}"
            )
        file_task = _scalar(data, "task", where, np.str_)
        file_obs_dim = _scalar(data, "obs_dim", where, np.integer)
        file_action_dim = _scalar(data, "action_dim", where, np.integer)

        pixels = data["obs"].ndim == 4
        obs_kind = ("u", "uint8 (pixels)") if pixels else ("f", "floating point")
        expected_kinds = {
            "obs": obs_kind,
            "action": ("f", "floating point"),
            "reward": ("f", "floating point"),
            "next_obs": obs_kind,
            "episode_lengths": ("iu", "integer"),
            "success": ("b", "bool"),
            "obs_shape": ("iu", "integer"),
            "seeds": ("iu", "integer"),
            "success_last": ("b", "bool"),
        }
        for key, (kinds, description) in expected_kinds.items():
            if key in data and data[key].dtype.kind not in kinds:
                raise DemonstrationError(f"{where}: {key} has dtype {data[key].dtype}, expected {description}")
        demos = cls.__new__(cls)
        demos.obs = _obs_array(data["obs"])
        demos.action = np.ascontiguousarray(data["action"], dtype=np.float32)
        demos.reward = np.ascontiguousarray(data["reward"], dtype=np.float32)
        demos.next_obs = _obs_array(data["next_obs"])
        demos.episode_lengths = np.ascontiguousarray(data["episode_lengths"], dtype=np.int64)
        demos.success = np.ascontiguousarray(data["success"], dtype=bool)
        demos.task = file_task
        demos.seeds = _seeds_array(data["seeds"], where) if "seeds" in data else None
        demos.success_last = np.ascontiguousarray(data["success_last"], dtype=bool) if "success_last" in data else None
        demos.validate(source=where)
        if demos.obs_dim != file_obs_dim or demos.action_dim != file_action_dim:
            raise DemonstrationError(
                f"{where}: metadata says obs_dim {file_obs_dim}, action_dim {file_action_dim} but the "
                f"arrays have {demos.obs_dim}, {demos.action_dim}"
            )
        if "obs_shape" in data and tuple(int(d) for d in data["obs_shape"].reshape(-1)) != demos.obs_shape:
            raise DemonstrationError(
                f"{where}: metadata says obs_shape {tuple(data['obs_shape'].tolist())} but obs has {demos.obs_shape}"
            )
        demos.check_compatible(
            task, obs_dim, action_dim, source=f"the demonstrations in {str(path)!r}", obs_shape=obs_shape
        )
        return demos


def _seeds_array(seeds: Any, where: str) -> np.ndarray:
    arr = np.asarray(seeds)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise DemonstrationError(
            f"{where}: seeds must be a 1-D integer array (one reset seed per episode), got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _scalar(data: dict, key: str, where: str, kind) -> Any:
    """A 0-d metadata entry as a Python value, type-checked."""
    arr = data[key]
    if arr.shape != () or not np.issubdtype(arr.dtype, kind):
        raise DemonstrationError(
            f"{where}: metadata {key} must be a scalar of type {kind.__name__}, got {arr.dtype} {arr.shape}"
        )
    value = arr.item()
    return str(value) if kind is np.str_ else int(value)


def load(path, task=None, obs_dim=None, action_dim=None, obs_shape=None) -> Demonstrations:
    """Shorthand for :meth:`Demonstrations.load`."""
    return Demonstrations.load(path, task=task, obs_dim=obs_dim, action_dim=action_dim, obs_shape=obs_shape)


# --------------------------------------------------------------------------- subsets and comparison


def first_episodes(demos: Demonstrations, n: Optional[int], source: str = "the demonstration set") -> Demonstrations:
    """The first ``n`` episodes of ``demos`` (all of them when ``n`` is None): the paper's ablation
    with fewer demonstrations takes the first N episodes of a file (SPEC section 7)."""
    if n is None or n == demos.num_episodes:
        return demos
    if n > demos.num_episodes:
        raise ValueError(f"num_demos={n} asks for more episodes than {source} holds ({demos.num_episodes})")
    return Demonstrations.from_episodes(list(itertools.islice(demos.episodes(), n)), task=demos.task)


def same_demonstrations(a: Demonstrations, b: Demonstrations) -> bool:
    """Whether two demonstration sets hold the same episodes (arrays equal)."""
    for name in ("obs", "action", "reward", "next_obs", "episode_lengths", "success"):
        x, y = getattr(a, name), getattr(b, name)
        if x.shape != y.shape or not np.array_equal(x, y):
            return False
    return a.task == b.task


# --------------------------------------------------------------------------- summary


def summary(demos: Demonstrations) -> dict[str, Any]:
    """Plain-type statistics of a demonstration set (what ``cdred-fast data info`` prints).

    Keys: ``task, episodes, transitions, obs_shape, obs_dtype, action_dim,
    length_min/mean/max, return_mean/std/min/max`` (per-episode sums of the
    environment reward), ``success_rate`` (= ``success_any``: the fraction of episodes that
    succeed at some step), ``success_last`` (the fraction that succeed at their last step, or
    None when the file does not record it) and ``seeds`` (whether reset seeds are recorded).
    """
    returns = np.add.reduceat(demos.reward.astype(np.float64), np.r_[0, np.cumsum(demos.episode_lengths)[:-1]])
    lengths = demos.episode_lengths
    return {
        "task": demos.task,
        "episodes": demos.num_episodes,
        "transitions": demos.num_transitions,
        "obs_shape": list(demos.obs_shape),
        "obs_dtype": str(demos.obs.dtype),
        "action_dim": demos.action_dim,
        "length_min": int(lengths.min()),
        "length_mean": float(lengths.mean()),
        "length_max": int(lengths.max()),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "success_rate": float(demos.success.mean()),
        "success_any": float(demos.success.mean()),
        "success_last": None if demos.success_last is None else float(demos.success_last.mean()),
        "seeds": demos.seeds is not None,
    }
