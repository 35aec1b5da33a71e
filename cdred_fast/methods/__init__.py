"""The learning methods over the shared world model, one module each, chosen by ``CDREDConfig.method``.

A method (:class:`Method`, in :mod:`.common`) holds its losses (SPEC section 3 and its variants),
its policy loss, its planning return (:meth:`Method.rollout_functions`) and the reward part it
trains. :func:`get` returns the method registered under a name; a new method is a new module
with a :class:`Method` subclass, added to ``_METHODS`` below.
"""

from __future__ import annotations

from .bc import BC
from .cdred import CDRED
from .common import Method
from .iqmpc_method import IQMPC
from .tdmpc2 import TDMPC2

_METHODS: dict[str, Method] = {m.name: m for m in (CDRED(), TDMPC2(), IQMPC(), BC())}


def get(name: str) -> Method:
    """The method registered as ``name`` (the values of ``CDREDConfig.method``)."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(_METHODS)}") from None


def names() -> tuple[str, ...]:
    return tuple(_METHODS)


__all__ = ["BC", "CDRED", "IQMPC", "Method", "TDMPC2", "get", "names"]
