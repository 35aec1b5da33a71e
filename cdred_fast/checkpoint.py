"""Atomic file writes and training checkpoints.

:func:`atomic_write` is the one way this package writes a file that a crash must not
leave half-written (checkpoints, demonstration files, CSV logs, the run's config and
learning curve): the content goes to a temporary file in the destination folder, is
flushed and fsync'ed, then moved over the destination with :func:`os.replace`. A reader
sees either the previous complete file or the new one.

A checkpoint is a plain dict saved with :func:`torch.save`::

    format   CHECKPOINT_FORMAT (1)
    config   CDREDConfig.to_dict()
    agent    CDREDAgent.state_dict()
    buffer   EpisodeBuffer.state_dict()
    step     environment steps so far
    episode  training episodes so far
    rng      {"torch": torch RNG state, "numpy": numpy bit-generator state}

made of tensors and plain types only, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

import numpy as np
import torch

from .agent import CDREDAgent
from .config import CDREDConfig

CHECKPOINT_FORMAT = 1

__all__ = [
    "CHECKPOINT_FORMAT",
    "agent_from_checkpoint",
    "atomic_write",
    "config_from_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]


def atomic_write(path: str | os.PathLike, content: Union[bytes, Callable[[BinaryIO], Any]]) -> Path:
    """Write ``path`` atomically; returns it as a :class:`~pathlib.Path`.

    ``content`` is the file's bytes, or a callable that writes them to the binary file
    object it is given (e.g. ``lambda f: torch.save(obj, f)``). The parent folder is
    created if needed. On any error the temporary file is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
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


def save_checkpoint(
    path: str | os.PathLike,
    cfg: CDREDConfig,
    agent: CDREDAgent,
    buffer,
    step: int,
    episode: int,
    rng: np.random.Generator,
) -> Path:
    """Write a checkpoint (the layout of the module docstring) atomically; the torch RNG
    state is the current global one."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "agent": agent.state_dict(),
        "buffer": buffer.state_dict(),
        "step": step,
        "episode": episode,
        "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state},
    }
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, foreign, or asks for anything but tensors and
            plain types.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"{path} is not a readable cdred_fast checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "agent" not in state:
        raise ValueError(f"{path} is not a cdred_fast checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def config_from_checkpoint(state: dict) -> CDREDConfig:
    """The :class:`CDREDConfig` stored in a checkpoint (fields it predates take their defaults)."""
    return CDREDConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})


def agent_from_checkpoint(state: dict, env, device: str = "cpu") -> CDREDAgent:
    """Rebuild the :class:`CDREDAgent` of a checkpoint (from
    :func:`load_checkpoint`) for ``env``, an environment made for the checkpoint's config
    (its observation shape and action size are used)."""
    cfg = config_from_checkpoint(state)
    agent = CDREDAgent(
        cfg, action_dim=env.action_space.shape[0], device=device, obs_shape=tuple(env.observation_space.shape)
    )
    agent.load_state_dict(state["agent"])
    return agent
