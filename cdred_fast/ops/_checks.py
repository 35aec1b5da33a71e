"""Argument checks shared by the op families. Every error names the argument and the problem;
the C++ kernels check the same things again with ``TORCH_CHECK``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_is_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_float(name: str, t: Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def check_tensor(name: str, t, ndim: int, layout: str) -> None:
    """A float32/float64 tensor with ``ndim`` dimensions (``layout`` names them in the error)."""
    check_is_tensor(name, t)
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim}-D), got shape {tuple(t.shape)}")
    check_float(name, t)


def check_match(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """``t`` has the dtype and the device of ``ref``."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must match")


def check_unit(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive_eps(value: float) -> None:
    """The variance guard of the reward ops (SPEC Eq. 8): ``eps = 0`` would disable it."""
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"eps (the variance guard) must be a finite number > 0 (eps = 0 disables the guard), got {value!r}"
        )
