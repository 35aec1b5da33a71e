"""The reduced-precision matrix products of ``CDREDConfig.matmul_precision`` as a context."""

from __future__ import annotations

import contextlib

import torch

from ._lib import BF16_CPU_FLAGS, bf16_flags_of, cpu_native_bf16
from .config import MATMUL_PRECISIONS

__all__ = ["matmul_precision", "cpu_native_bf16", "bf16_flags_of", "BF16_CPU_FLAGS"]


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Run a block with ``torch.set_float32_matmul_precision(precision)``, then restore the
    previous setting (see ``CDREDConfig.matmul_precision``)."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    previous = torch.get_float32_matmul_precision()
    if previous == precision:
        yield
        return
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
