"""Importing the CDRED authors' released demonstration pickles (SPEC section 5).

The released files are pickles of ``(obs, actions, rewards, next_obs)`` per episode. They are
read with :class:`RestrictedUnpickler`, which resolves only the numpy and builtin names an
array needs (from a fixed table, never by import), so a hostile file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .data import DemonstrationError, Demonstrations

__all__ = ["ForbiddenGlobalError", "RestrictedUnpickler", "import_released_pickle"]


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
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            MemoryError,
        ) as exc:
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
