"""Stopping a training run on SIGINT / SIGTERM at a point it can resume from exactly.

:class:`StopSignals` replaces the SIGINT and SIGTERM handlers while a run trains (main
thread only; restored on exit). The first signal only records a request:
:meth:`StopSignals.check`, called by the trainer between environment steps, between
updates and after evaluations, raises :class:`Stop` there, where the trainer's state is
consistent. Inside :meth:`StopSignals.immediate` (an evaluation, which changes no
state the checkpoint keeps) the signal raises :class:`Stop` at once. A second signal
raises :class:`ForcedStop` wherever the run is: the trainer then writes nothing and the
last checkpoint on disk stays.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

__all__ = ["ForcedStop", "Stop", "StopSignals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop(KeyboardInterrupt):
    """Raised at a consistent point after SIGINT / SIGTERM."""


class ForcedStop(KeyboardInterrupt):
    """Raised by a second SIGINT / SIGTERM, wherever the run was."""


class StopSignals:
    """Context manager: SIGINT / SIGTERM request a stop (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._immediate = False
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise ForcedStop()
        self.signum = signum
        if self._immediate:
            raise Stop()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise :class:`Stop` when a signal came."""
        if self.signum is not None:
            raise Stop()

    @contextlib.contextmanager
    def immediate(self):
        """A block that a signal interrupts at once (:class:`Stop`)."""
        self.check()
        self._immediate = True
        try:
            yield
        finally:
            self._immediate = False
