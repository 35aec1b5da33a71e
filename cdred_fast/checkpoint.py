"""Atomic file writes and training checkpoints.

:func:`atomic_write` is the one way this package writes a file that a crash must not
leave half-written (checkpoints, demonstration files, CSV logs, the run's config and
learning curve): the content goes to a temporary file ``.NAME.XXXX.tmp`` in the
destination folder, is flushed and fsync'ed, given the mode of a newly created file
(``0666`` less the umask) and moved over the destination with :func:`os.replace`. A
reader sees either the previous complete file or the new one; a process killed during
the write leaves the temporary file, which :func:`remove_stale_temporaries` deletes.

A checkpoint is a plain dict saved with :func:`torch.save`::

    format   CHECKPOINT_FORMAT (2; 1 is read too)
    config   CDREDConfig.to_dict()
    agent    CDREDAgent.state_dict()
    buffer   EpisodeBuffer.state_dict()
    step     environment steps so far
    episode  training episodes so far
    rng      {"torch": torch RNG state, "numpy": numpy bit-generator state, "cuda": [...] when CUDA is in use}
    progress where in the training loop the checkpoint was taken (see cdred_fast.trainer; format 2)

made of tensors and plain types only, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)`` (no arbitrary unpickling), after checking the CRC-32
of every record of the zip archive (flipped bytes are refused, not loaded).
:func:`check_state_dict` compares loaded tensors with the ones of the model they are
loaded into (names, shapes, dtypes).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

import numpy as np
import torch

from .agent import CDREDAgent
from .config import CDREDConfig
from .errors import CheckpointError, NoCheckpointError, RunDirError

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)

__all__ = [
    "CHECKPOINT_FORMAT",
    "agent_from_checkpoint",
    "atomic_write",
    "check_agent_state",
    "check_state_dict",
    "check_writable_dir",
    "checkpoint_state",
    "config_from_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_checkpoint",
]


def _file_mode() -> int:
    """The mode a newly created file gets: ``0666`` less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def check_writable_dir(folder: str | os.PathLike, what: str = "work directory") -> Path:
    """Refuse (:class:`~cdred_fast.errors.RunDirError`) a folder that cannot be created or
    written: a path through a file, or whose nearest existing folder is not writable (a
    temporary file is created and deleted there to find out)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunDirError(f"cannot use {what} {folder}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot use {what} {folder}: {probe} is not writable")
    try:  # access() is True for root everywhere: try a file
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise RunDirError(f"cannot use {what} {folder}: {probe} is not writable ({exc.strerror or exc})") from exc
    return folder


def remove_stale_temporaries(folder: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left for ``names`` in ``folder``
    when a process was killed while writing them; returns the deleted paths."""
    folder = Path(folder)
    removed = []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def rng_state(rng: np.random.Generator) -> dict:
    """The random state a checkpoint stores: torch (CPU, and CUDA when initialised) and ``rng``'s."""
    state = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, rng: np.random.Generator) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    rng.bit_generator.state = state["numpy"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(
    cfg: CDREDConfig,
    agent_state: dict,
    buffer_state: dict,
    step: int,
    episode: int,
    rng: dict,
    progress: dict | None = None,
) -> dict:
    """The checkpoint dict (the layout of the module docstring) from its parts."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "agent": agent_state,
        "buffer": buffer_state,
        "step": int(step),
        "episode": int(episode),
        "rng": rng,
        "progress": progress or {},
    }


def write_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint dict atomically."""
    return atomic_write(path, lambda f: torch.save(state, f))


def save_checkpoint(
    path: str | os.PathLike,
    cfg: CDREDConfig,
    agent: CDREDAgent,
    buffer,
    step: int,
    episode: int,
    rng: np.random.Generator,
    progress: dict | None = None,
) -> Path:
    """Write a checkpoint (the layout of the module docstring) atomically; the torch RNG
    state is the current global one."""
    state = checkpoint_state(cfg, agent.state_dict(), buffer.state_dict(), step, episode, rng_state(rng), progress)
    return write_checkpoint(path, state)


def _check_archive(path: Path) -> None:
    """Refuse a file that is not a zip archive or whose records fail their CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable cdred_fast checkpoint: {exc}") from exc
    except Exception as exc:  # zlib errors and the like from a damaged archive
        raise CheckpointError(f"{path} is a damaged checkpoint: {exc}") from exc
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt: record {bad!r} fails its CRC-32 check (the file was altered)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        NoCheckpointError (a FileNotFoundError): no such file.
        CheckpointError (a ValueError): the file is truncated, corrupt (a CRC-32 mismatch),
            foreign, lacks a part, or asks for anything but tensors and plain types.
    """
    path = Path(path)
    if not path.is_file():
        raise NoCheckpointError(f"no checkpoint at {path}")
    _check_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise CheckpointError(f"{path} is not a readable cdred_fast checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS or "agent" not in state:
        raise CheckpointError(f"{path} is not a cdred_fast checkpoint (format {CHECKPOINT_FORMAT} expected)")
    kinds = {"config": dict, "agent": dict, "buffer": dict, "rng": dict}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path} is not a complete cdred_fast checkpoint: {key!r} is missing or malformed")
    for key in ("step", "episode"):
        if not _is_int(state.get(key)) or state[key] < 0:
            raise CheckpointError(f"{path} is not a complete cdred_fast checkpoint: {key!r} is missing or malformed")
    if not isinstance(state.get("agent", {}).get("model"), dict):
        raise CheckpointError(f"{path} is not a complete cdred_fast checkpoint: the agent has no model weights")
    if not isinstance(state.get("progress", {}), dict):
        raise CheckpointError(f"{path} is not a complete cdred_fast checkpoint: 'progress' is malformed")
    return state


def check_state_dict(expected, got, where: str, strict_keys: bool = True) -> None:
    """Raise :class:`CheckpointError` unless ``got`` holds a tensor of the same shape and dtype
    wherever ``expected`` (a nested dict/list of a freshly built model's state) holds one.
    ``strict_keys`` also refuses keys of ``got`` that ``expected`` lacks (at dict level)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(f"{where}: a tensor expected, got {type(got).__name__}")
        if got.dtype != expected.dtype or tuple(got.shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{where}: {got.dtype} {list(got.shape)} stored where the model has "
                f"{expected.dtype} {list(expected.shape)}"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise CheckpointError(f"{where}: NaN or inf stored")
        return
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            raise CheckpointError(f"{where}: a mapping expected, got {type(got).__name__}")
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected] if strict_keys else []
        if missing or extra:
            raise CheckpointError(f"{where}: missing {missing[:3]}, unexpected {extra[:3]}")
        for k in expected:
            check_state_dict(expected[k], got[k], f"{where}.{k}", strict_keys)
        return
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            raise CheckpointError(f"{where}: a list of {len(expected)} expected")
        for i, (e, g) in enumerate(zip(expected, got)):
            check_state_dict(e, g, f"{where}[{i}]", strict_keys)


def check_agent_state(agent: CDREDAgent, state: dict, where: str = "checkpoint") -> None:
    """The model weights and Q scale of a stored agent state have the names, shapes and dtypes
    of ``agent``'s (optimiser states are checked by their own loaders)."""
    fresh = agent.state_dict()
    check_state_dict(fresh["model"], state.get("model"), f"{where}: agent.model")
    check_state_dict(fresh["scale"], state.get("scale"), f"{where}: agent.scale")


def config_from_checkpoint(state: dict) -> CDREDConfig:
    """The :class:`CDREDConfig` stored in a checkpoint (fields it predates take their defaults)."""
    try:
        return CDREDConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint's config is invalid: {exc}") from exc


def agent_from_checkpoint(state: dict, env, device: str = "cpu", cfg: CDREDConfig | None = None) -> CDREDAgent:
    """Rebuild the :class:`CDREDAgent` of a checkpoint (from
    :func:`load_checkpoint`) for ``env``, an environment made for the checkpoint's config
    (its observation shape and action size are used).

    ``cfg``: build with this config instead of the checkpoint's, e.g. the checkpoint's with
    other precisions (``dataclasses.replace(config_from_checkpoint(state), ...)``). An agent
    resolves its precisions when it is built, so this, not assigning ``agent.cfg`` later, is how
    to act with other settings; the weights must fit it (checked)."""
    cfg = config_from_checkpoint(state) if cfg is None else cfg
    agent = CDREDAgent(
        cfg, action_dim=env.action_space.shape[0], device=device, obs_shape=tuple(env.observation_space.shape)
    )
    check_agent_state(agent, state["agent"])
    try:
        agent.load_state_dict(state["agent"])
    except Exception as exc:  # any malformed part: KeyError, ValueError, RuntimeError, IndexError, ...
        raise CheckpointError(f"the checkpoint's agent does not load: {exc}") from exc
    return agent
