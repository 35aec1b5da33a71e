"""Demonstration files: format, validation, safe import of released data, collection.

File format (``format_version`` 1): one ``.npz`` archive (``numpy.savez``, no
pickled objects, read back with ``allow_pickle=False``) holding

============== =================== ==========================================
key            dtype / shape        meaning
============== =================== ==========================================
obs            float32 [N, obs_dim] observation before each transition
action         float32 [N, A]       action taken, in [-1, 1]
reward         float32 [N]          environment reward (CDRED never uses it)
next_obs       float32 [N, obs_dim] observation after each transition
episode_lengths int64 [E]           transitions per episode, all > 0, sum N
success        bool [E]             did the episode succeed at any step
format_version int64 []             1
task           str []               registered task name, e.g. "mw-reach-wall"
obs_dim        int64 []             = obs.shape[1]
action_dim     int64 []             = action.shape[1]
============== =================== ==========================================

Episodes are stored back to back. Within an episode ``next_obs[t] ==
obs[t + 1]``; :meth:`Demonstrations.validate` checks this because the replay
buffer rebuilds each episode's ``T + 1`` observations from ``obs`` and the last
``next_obs``.

Files are written to a temporary file in the destination folder and moved into
place with :func:`os.replace`, so a reader never sees a half-written file.

The authors' released expert files are pickles; :func:`import_released_pickle`
reads them with a restricted unpickler that can rebuild numpy arrays and plain
containers and nothing else, so a malicious file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "DemonstrationError",
    "Demonstrations",
    "ForbiddenGlobalError",
    "RestrictedUnpickler",
    "collect",
    "import_released_pickle",
    "load",
    "restricted_loads",
]

FORMAT_VERSION = 1

_ARRAY_KEYS = ("obs", "action", "reward", "next_obs", "episode_lengths", "success")
_META_KEYS = ("format_version", "task", "obs_dim", "action_dim")
REQUIRED_KEYS = _ARRAY_KEYS + _META_KEYS


class DemonstrationError(ValueError):
    """A demonstration file or object is unreadable, inconsistent or does not fit the task."""


@dataclass(eq=False)
class Demonstrations:
    """A set of episodes, stored back to back (see the module docstring).

    Build one with :meth:`from_episodes`, :func:`collect`, :meth:`load` or
    :func:`import_released_pickle`; the constructor converts dtypes and
    validates everything, so an existing object is always consistent.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    episode_lengths: np.ndarray
    success: np.ndarray
    task: str

    def __post_init__(self):
        self.obs = np.ascontiguousarray(self.obs, dtype=np.float32)
        self.action = np.ascontiguousarray(self.action, dtype=np.float32)
        self.reward = np.ascontiguousarray(self.reward, dtype=np.float32)
        self.next_obs = np.ascontiguousarray(self.next_obs, dtype=np.float32)
        self.episode_lengths = np.ascontiguousarray(self.episode_lengths, dtype=np.int64)
        self.success = np.ascontiguousarray(self.success, dtype=bool)
        self.task = str(self.task)
        self.validate()

    # ------------------------------------------------------------------ shape
    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[1])

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
        return (
            f"Demonstrations(task={self.task!r}, episodes={self.num_episodes}, "
            f"transitions={self.num_transitions}, obs_dim={self.obs_dim}, action_dim={self.action_dim}, "
            f"success_rate={self.success.mean():.2f})"
        )

    # ------------------------------------------------------------- episodes
    def episodes(self) -> Iterator[dict[str, Any]]:
        """Yield one dict per episode: ``obs [T, obs_dim]``, ``action [T, A]``,
        ``reward [T]``, ``next_obs [T, obs_dim]`` (views, not copies) and ``success`` (bool)."""
        start = 0
        for length, success in zip(self.episode_lengths.tolist(), self.success.tolist()):
            end = start + length
            yield {
                "obs": self.obs[start:end],
                "action": self.action[start:end],
                "reward": self.reward[start:end],
                "next_obs": self.next_obs[start:end],
                "success": bool(success),
            }
            start = end

    @classmethod
    def from_episodes(cls, episodes: list[dict[str, Any]], task: str) -> "Demonstrations":
        """Concatenate per-episode dicts (keys ``obs``, ``action``, ``reward``,
        ``next_obs`` and optionally ``success``, default False)."""
        episodes = list(episodes)
        if not episodes:
            raise DemonstrationError("no episodes given: a demonstration set cannot be empty")
        for i, ep in enumerate(episodes):
            missing = [k for k in ("obs", "action", "reward", "next_obs") if k not in ep]
            if missing:
                raise DemonstrationError(f"episode {i} lacks {missing}")
        lengths = [len(ep["obs"]) for ep in episodes]
        return cls(
            obs=np.concatenate([np.asarray(ep["obs"], np.float32) for ep in episodes]),
            action=np.concatenate([np.asarray(ep["action"], np.float32) for ep in episodes]),
            reward=np.concatenate([np.asarray(ep["reward"], np.float32).reshape(-1) for ep in episodes]),
            next_obs=np.concatenate([np.asarray(ep["next_obs"], np.float32) for ep in episodes]),
            episode_lengths=np.asarray(lengths, np.int64),
            success=np.asarray([bool(ep.get("success", False)) for ep in episodes]),
            task=task,
        )

    # ------------------------------------------------------------ validation
    def validate(self, source: str = "demonstrations") -> None:
        """Raise :class:`DemonstrationError` unless the arrays are mutually consistent,
        non-empty and finite. ``source`` names the data in messages (e.g. a file)."""
        def fail(msg: str):
            raise DemonstrationError(f"{source}: {msg}")

        if not self.task:
            fail("the task name is empty")
        if self.obs.ndim != 2:
            fail(f"obs must be 2-D [N, obs_dim], got shape {self.obs.shape}")
        if self.action.ndim != 2:
            fail(f"action must be 2-D [N, action_dim], got shape {self.action.shape}")
        n = self.obs.shape[0]
        if self.episode_lengths.ndim != 1 or self.episode_lengths.shape[0] == 0 or n == 0:
            fail("contains no episodes (empty demonstration set)")
        if self.next_obs.shape != self.obs.shape:
            fail(f"next_obs has shape {self.next_obs.shape} but obs has {self.obs.shape}")
        if self.action.shape[0] != n:
            fail(f"action has {self.action.shape[0]} rows but obs has {n}")
        if self.reward.shape != (n,):
            fail(f"reward must have shape ({n},), got {self.reward.shape}")
        if self.obs.shape[1] == 0 or self.action.shape[1] == 0:
            fail(f"zero-sized observation or action (obs {self.obs.shape}, action {self.action.shape})")
        if self.success.shape != self.episode_lengths.shape:
            fail(f"success has shape {self.success.shape}, expected ({self.num_episodes},)")
        if np.any(self.episode_lengths <= 0):
            fail(f"episode lengths must be positive, got {self.episode_lengths.min()}")
        if int(self.episode_lengths.sum()) != n:
            fail(f"episode lengths sum to {int(self.episode_lengths.sum())} but there are {n} transitions")
        for key in ("obs", "action", "reward", "next_obs"):
            arr = getattr(self, key)
            if not np.all(np.isfinite(arr)):
                bad = np.argwhere(~np.isfinite(arr))[0]
                fail(f"{key} contains NaN or inf (first at index {tuple(int(i) for i in bad)})")
        # Within an episode, each next_obs must be the following obs.
        ends = np.cumsum(self.episode_lengths)
        inner = np.ones(n, dtype=bool)
        inner[ends - 1] = False  # the last transition of an episode has no following obs
        idx = np.flatnonzero(inner)
        if idx.size:
            mismatch = np.any(self.next_obs[idx] != self.obs[idx + 1], axis=1)
            if mismatch.any():
                t = int(idx[np.argmax(mismatch)])
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
    ) -> None:
        """Raise :class:`DemonstrationError` if these demonstrations do not fit the given
        task / observation size / action size (any of them may be None: not checked)."""
        mismatched = (
            (task is not None and task != self.task)
            or (obs_dim is not None and int(obs_dim) != self.obs_dim)
            or (action_dim is not None and int(action_dim) != self.action_dim)
        )
        if mismatched:
            wanted = []
            if task is not None:
                wanted.append(f"task {task!r}")
            if obs_dim is not None:
                wanted.append(f"obs_dim {int(obs_dim)}")
            if action_dim is not None:
                wanted.append(f"action_dim {int(action_dim)}")
            raise DemonstrationError(
                f"{source} are for task {self.task!r} with obs_dim {self.obs_dim} and action_dim "
                f"{self.action_dim}, but the environment has {', '.join(wanted)}"
            )

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz``) atomically; returns the path.

        The archive is written to a temporary file next to ``path``, flushed to
        disk, then renamed over ``path``: a crash leaves either the old file or
        the new one, never a partial file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
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
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        task: str | None = None,
        obs_dim: int | None = None,
        action_dim: int | None = None,
    ) -> "Demonstrations":
        """Read and validate a file written by :meth:`save`.

        ``task``, ``obs_dim`` and ``action_dim``, when given, must match the file.

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
            archive = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
            raise DemonstrationError(
                f"{where} is not a readable .npz archive (truncated or corrupt?): {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DemonstrationError(f"{where} holds a single .npy array, not an .npz archive")
        try:
            with archive:
                keys = set(archive.files)
                missing = [k for k in REQUIRED_KEYS if k not in keys]
                if missing:
                    raise DemonstrationError(f"{where} lacks required key(s) {missing} (has {sorted(keys)})")
                data = {k: archive[k] for k in REQUIRED_KEYS}  # reads (and CRC-checks) every member
        except DemonstrationError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            raise DemonstrationError(
                f"{where} is not a readable .npz archive (truncated or corrupt?): {type(exc).__name__}: {exc}"
            ) from exc

        version = _scalar(data, "format_version", where, np.integer)
        if version != FORMAT_VERSION:
            raise DemonstrationError(
                f"{where} has format_version {version}; this version of cdred_fast reads {FORMAT_VERSION}"
            )
        file_task = _scalar(data, "task", where, np.str_)
        file_obs_dim = _scalar(data, "obs_dim", where, np.integer)
        file_action_dim = _scalar(data, "action_dim", where, np.integer)

        expected_kinds = {
            "obs": ("f", "floating point"),
            "action": ("f", "floating point"),
            "reward": ("f", "floating point"),
            "next_obs": ("f", "floating point"),
            "episode_lengths": ("iu", "integer"),
            "success": ("b", "bool"),
        }
        for key, (kinds, description) in expected_kinds.items():
            if data[key].dtype.kind not in kinds:
                raise DemonstrationError(f"{where}: {key} has dtype {data[key].dtype}, expected {description}")
        demos = cls.__new__(cls)
        demos.obs = np.ascontiguousarray(data["obs"], dtype=np.float32)
        demos.action = np.ascontiguousarray(data["action"], dtype=np.float32)
        demos.reward = np.ascontiguousarray(data["reward"], dtype=np.float32)
        demos.next_obs = np.ascontiguousarray(data["next_obs"], dtype=np.float32)
        demos.episode_lengths = np.ascontiguousarray(data["episode_lengths"], dtype=np.int64)
        demos.success = np.ascontiguousarray(data["success"], dtype=bool)
        demos.task = file_task
        demos.validate(source=where)
        if demos.obs_dim != file_obs_dim or demos.action_dim != file_action_dim:
            raise DemonstrationError(
                f"{where}: metadata says obs_dim {file_obs_dim}, action_dim {file_action_dim} but the "
                f"arrays have {demos.obs_dim}, {demos.action_dim}"
            )
        demos.check_compatible(task, obs_dim, action_dim, source=f"the demonstrations in {str(path)!r}")
        return demos


def _scalar(data: dict, key: str, where: str, kind) -> Any:
    """A 0-d metadata entry as a Python value, type-checked."""
    arr = data[key]
    if arr.shape != () or not np.issubdtype(arr.dtype, kind):
        raise DemonstrationError(f"{where}: metadata {key} must be a scalar of type {kind.__name__}, got {arr.dtype} {arr.shape}")
    value = arr.item()
    return str(value) if kind is np.str_ else int(value)


def load(path, task=None, obs_dim=None, action_dim=None) -> Demonstrations:
    """Shorthand for :meth:`Demonstrations.load`."""
    return Demonstrations.load(path, task=task, obs_dim=obs_dim, action_dim=action_dim)


# --------------------------------------------------------------------------- released pickles


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a released expert pickle may reference.

    Everything numpy needs to rebuild arrays, dtypes and scalars under pickle
    protocols 2-5, written by numpy 1.x (``numpy.core``) or 2.x (``numpy._core``),
    plus the builtin containers that need a global under old protocols. Names
    are resolved from this table, never imported.
    """
    import _codecs
    import builtins

    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric

    table: dict[tuple[str, str], Any] = {}
    for core in ("numpy._core", "numpy.core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    # Protocol < 3 writes bytes as _codecs.encode(str, "latin1").
    table[("_codecs", "encode")] = _codecs.encode
    for mod in ("builtins", "__builtin__"):
        for name in ("list", "tuple", "dict", "set", "frozenset", "bytearray", "bytes"):
            table[(mod, name)] = getattr(builtins, name)
    return table


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global (function, class) that :class:`RestrictedUnpickler` does not allow."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays/dtypes/scalars and plain containers.

    Any other global (a function such as ``os.system``, a class with a custom
    ``__reduce__``) raises :class:`ForbiddenGlobalError` (a
    :class:`pickle.UnpicklingError`) naming it, before anything is called.
    Persistent ids are refused too.
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str):
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()
        try:
            return RestrictedUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f"refused global {module}.{name}: only numpy arrays and plain containers may be unpickled"
            ) from None

    def persistent_load(self, pid):
        raise ForbiddenGlobalError(f"refused persistent id {pid!r}")


def restricted_loads(data: bytes) -> Any:
    """``pickle.loads`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def import_released_pickle(path: str | os.PathLike, task: str) -> Demonstrations:
    """Convert one of the authors' released expert files to :class:`Demonstrations`.

    The file is a pickled list of episodes, each a tuple ``(obs[T, obs_dim],
    actions[T, A], rewards[T] or [T, 1], next_obs[T, obs_dim])`` of numpy
    arrays. It is read with :class:`RestrictedUnpickler`, so it cannot execute
    code. The released files do not record success, so ``success`` is all False.

    Raises:
        FileNotFoundError: no such file.
        ForbiddenGlobalError (a ``pickle.UnpicklingError``): the pickle references
            a forbidden global; nothing was executed.
        DemonstrationError: the content is not in the expected layout.
    """
    path = Path(path)
    where = f"released expert file {str(path)!r}"
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist")
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f).load()
        except ForbiddenGlobalError as exc:
            raise ForbiddenGlobalError(f"{where}: {exc}") from exc
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as exc:
            raise DemonstrationError(f"{where} is not a readable pickle (truncated or corrupt?): {exc}") from exc
    if not isinstance(obj, (list, tuple)) or len(obj) == 0:
        raise DemonstrationError(f"{where}: expected a non-empty list of episodes, got {type(obj).__name__}")
    episodes = []
    for i, ep in enumerate(obj):
        if not isinstance(ep, (list, tuple)) or len(ep) != 4:
            raise DemonstrationError(
                f"{where}: episode {i} must be a tuple (obs, actions, rewards, next_obs), got {type(ep).__name__}"
                + (f" of length {len(ep)}" if isinstance(ep, (list, tuple)) else "")
            )
        arrays = []
        for name, value in zip(("obs", "actions", "rewards", "next_obs"), ep):
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
                raise DemonstrationError(
                    f"{where}: episode {i} {name} must be a numeric numpy array, got "
                    f"{getattr(value, 'dtype', type(value).__name__)}"
                )
            arrays.append(value)
        obs, actions, rewards, next_obs = arrays
        if rewards.ndim == 2 and rewards.shape[1] == 1:
            rewards = rewards[:, 0]
        episodes.append({"obs": obs, "action": actions, "reward": rewards, "next_obs": next_obs, "success": False})
    try:
        return Demonstrations.from_episodes(episodes, task=task)
    except DemonstrationError as exc:
        raise DemonstrationError(f"{where}: {exc}") from exc
    except ValueError as exc:  # np.concatenate on ragged dims
        raise DemonstrationError(f"{where}: episodes have inconsistent shapes: {exc}") from exc


# --------------------------------------------------------------------------- collection


def collect(
    env,
    policy: Callable[[np.ndarray], Any],
    episodes: int,
    successful_only: bool = False,
    max_attempts: int | None = None,
    seed: int | None = None,
    task: str | None = None,
) -> Demonstrations:
    """Roll ``policy`` (``obs -> action``) in ``env`` and record ``episodes`` episodes.

    Args:
        env: an environment from :func:`cdred_fast.envs.make` (any gymnasium env
            with ``info["success"]`` works; ``task`` names it if it has no ``task``).
        policy: maps a float32 observation to an action; the action is clipped
            to the action space, and the clipped action is what is recorded.
        episodes: how many episodes to keep.
        successful_only: keep only episodes in which some step reported
            ``info["success"]``.
        max_attempts: give up after this many episodes (default ``episodes``,
            or ``10 * episodes`` with ``successful_only``).
        seed: passed to the first ``reset`` (None: continue the env's stream).

    Raises:
        RuntimeError: fewer than ``episodes`` episodes qualified within ``max_attempts``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_attempts is None:
        max_attempts = 10 * episodes if successful_only else episodes
    if max_attempts < episodes:
        raise ValueError(f"max_attempts ({max_attempts}) < episodes ({episodes})")
    if task is None:
        try:
            task = env.get_wrapper_attr("task")
        except AttributeError:
            raise ValueError("the environment has no 'task' attribute: pass task=...") from None
    low, high = env.action_space.low, env.action_space.high

    kept: list[dict[str, Any]] = []
    attempts = 0
    while len(kept) < episodes and attempts < max_attempts:
        obs, _ = env.reset(seed=seed if attempts == 0 else None)
        attempts += 1
        rec = {"obs": [], "action": [], "reward": [], "next_obs": []}
        success, done = False, False
        while not done:
            action = np.clip(np.asarray(policy(obs), dtype=np.float32), low, high)
            next_obs, reward, terminated, truncated, info = env.step(action)
            rec["obs"].append(obs)
            rec["action"].append(action)
            rec["reward"].append(reward)
            rec["next_obs"].append(next_obs)
            success = success or bool(info.get("success", False))
            done = terminated or truncated
            obs = next_obs
        if successful_only and not success:
            continue
        kept.append(
            {
                "obs": np.stack(rec["obs"]),
                "action": np.stack(rec["action"]),
                "reward": np.asarray(rec["reward"], dtype=np.float32),
                "next_obs": np.stack(rec["next_obs"]),
                "success": success,
            }
        )
    if len(kept) < episodes:
        raise RuntimeError(
            f"collected only {len(kept)} of {episodes} {'successful ' if successful_only else ''}episodes "
            f"in {attempts} attempts on {task!r}"
        )
    return Demonstrations.from_episodes(kept, task=task)
