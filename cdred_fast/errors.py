"""The exception type of inputs a user can fix.

:class:`UserError` marks a bad input (a config value, a file, a path, a command-line
option) rather than a bug: ``cdred-fast`` prints its message as one line ``error: ...``
and exits with status 2, without a traceback. Subclasses also derive from the builtin
type a caller would catch (``ValueError``, ``FileExistsError``, ...).
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "NoCheckpointError", "RenderError", "RunDirError", "UserError"]


class UserError(Exception):
    """A bad input the user can fix; its message says what and how."""


class ConfigError(UserError, ValueError):
    """A config that cannot run (e.g. a horizon longer than the task's episodes)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file that is missing, corrupt, foreign, or does not fit its model."""


class RunDirError(UserError, FileExistsError):
    """A work directory that cannot be used: it holds another run, or is not writable."""


class NoCheckpointError(UserError, FileNotFoundError):
    """No checkpoint where one is needed (``--resume`` of a directory without a run)."""


class RenderError(UserError, RuntimeError):
    """No frame can be rendered for a video: no offscreen OpenGL context (``MUJOCO_GL``)."""
