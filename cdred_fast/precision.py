"""Reduced precision: the matrix products of ``CDREDConfig.matmul_precision`` as a context, and
the dtype of the reward networks in planning (``CDREDConfig.planning_precision``)."""

from __future__ import annotations

import contextlib

import torch

from ._lib import BF16_CPU_FLAGS, bf16_flags_of, cpu_native_bf16
from .config import MATMUL_PRECISIONS, PLANNING_PRECISIONS

__all__ = ["matmul_precision", "planning_dtype", "cpu_native_bf16", "bf16_flags_of", "BF16_CPU_FLAGS"]


def planning_dtype(precision: str, device) -> torch.dtype:
    """The dtype of the CDRED reward networks in planning for ``CDREDConfig.planning_precision``
    on ``device``: ``"auto"`` is bfloat16 on a CPU with native bf16 (:func:`cpu_native_bf16`),
    float32 elsewhere; ``"bfloat16"`` on a non-CPU device is an error (the kernels take it on the
    CPU only)."""
    if precision not in PLANNING_PRECISIONS:
        raise ValueError(f"planning_precision must be one of {PLANNING_PRECISIONS}, got {precision!r}")
    on_cpu = torch.device(device).type == "cpu"
    if precision == "auto":
        return torch.bfloat16 if on_cpu and cpu_native_bf16() else torch.float32
    if precision == "bfloat16" and not on_cpu:
        raise ValueError(
            f"planning_precision='bfloat16' runs on the CPU only; the model is on {device} "
            "(use 'float32' or 'auto', or matmul_precision for reduced-precision products on CUDA)"
        )
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


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
