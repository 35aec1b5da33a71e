"""The one place that decides between the fused kernels and the pure-PyTorch reference.

* :func:`resolve_impl` maps the config's ``kernels`` setting ("fused" or "reference") and a
  device to the ``impl`` argument of the op wrappers. "fused" falls back to "reference", with
  one ``RuntimeWarning`` per process and reason, when the extension is not loaded
  (not built, failed to load, or ``CDRED_FAST_DISABLE_EXTENSION=1``, see :mod:`cdred_fast._lib`)
  or, for a CUDA device, was built without CUDA kernels.
* :data:`FUSED_DEVICE_TYPES` is the same decision per device type, fixed at import, for code
  that must trace under ``torch.compile`` without a graph break (the fused Blocks of
  :mod:`cdred_fast.layers`).
* :func:`fused_unavailable_reason` says why "fused" cannot run on a device (also used by the
  tests and benchmarks to skip their CUDA cases).
* :func:`run` is the wrappers' last step: the reference function or the library op of a name.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Optional

import torch

from .. import _lib, reference

IMPLS = ("fused", "reference")
# Resolved once at import so that the wrappers stay traceable by torch.compile.
FUSED_AVAILABLE: bool = _lib.load()

_fallback_warned: set[str] = set()


@functools.lru_cache(maxsize=None)
def _cuda_kernels_built() -> bool:
    return bool(_lib.build_info().get("cuda_kernels", False))


def check_impl(impl: str) -> None:
    """Raise a ValueError unless ``impl`` is one of :data:`IMPLS`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _unavailable(device: Any) -> tuple[str, str]:
    """``(key, reason)`` why the fused ops cannot run on ``device`` (None: any), ``("", "")`` when they can."""
    if not _lib.available():
        return "not-built", f"the cdred_fast C++ extension is not built or not loaded ({_lib.load_error()})"
    if device is not None and str(device).startswith("cuda") and not _cuda_kernels_built():
        return "no-cuda", (
            "the cdred_fast extension was built without CUDA kernels (cdred_fast.build_info()['cuda_kernels'] "
            "is False); rebuild it with nvcc and a CUDA torch"
        )
    return "", ""


def fused_unavailable_reason(device: Any = None) -> str:
    """Why the fused ops cannot run on ``device`` (a device, its type or string; None: any), or ``""``."""
    return _unavailable(device)[1]


def resolve_impl(kernels: str, device: Any = None, warn: bool = True) -> str:
    """Map the ``kernels`` setting to the ``impl`` argument of :mod:`cdred_fast.ops`.

    ``"reference"`` -> ``"reference"``. ``"fused"`` -> ``"fused"`` when the C++ extension is
    loaded (and, for a CUDA ``device``, was compiled with CUDA kernels); otherwise
    ``"reference"``, with ONE ``RuntimeWarning`` per process and reason saying why
    (``warn=False``: no warning). Any other value raises a ValueError.
    """
    if kernels not in IMPLS:
        raise ValueError(f"kernels must be one of {IMPLS}, got {kernels!r}")
    if kernels == "reference":
        return "reference"
    key, reason = _unavailable(device)
    if not key:
        return "fused"
    if warn and key not in _fallback_warned:
        _fallback_warned.add(key)
        where = f" on {device}" if key == "no-cuda" else ""
        warnings.warn(
            f"cdred_fast: kernels='fused' was requested{where} but {reason}; "
            "falling back to the pure-PyTorch reference ops.",
            RuntimeWarning,
            stacklevel=2,
        )
    return "reference"


# Device types on which kernels="fused" runs the fused ops, fixed at import (module constant:
# a check against it traces under torch.compile without a graph break).
FUSED_DEVICE_TYPES = frozenset(t for t in ("cpu", "cuda") if resolve_impl("fused", t, warn=False) == "fused")


def run(impl: str, name: str, *args, fused: Optional[Callable] = None):
    """``reference.<name>(*args)`` for ``impl="reference"``, else the library op
    ``torch.ops.cdred_fast.<name>`` (or ``fused`` when given); raises with the reason when the
    library is not loaded. ``impl`` must already be checked (:func:`check_impl`)."""
    if impl == "reference":
        return getattr(reference, name)(*args)
    if not FUSED_AVAILABLE:
        _lib.require()  # raises with the reason
    op = fused if fused is not None else getattr(torch.ops.cdred_fast, name).default
    return op(*args)
