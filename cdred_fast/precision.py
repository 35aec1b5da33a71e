"""The reduced-precision matrix products of ``CDREDConfig.matmul_precision`` as a context."""

from __future__ import annotations

import contextlib

import torch

from .config import MATMUL_PRECISIONS

__all__ = ["matmul_precision", "cpu_native_bf16"]

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # Linux /proc/cpuinfo names of native bf16 instructions


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


def bf16_flags_of(flags: str) -> list[str]:
    """The native-bf16 instruction sets named in a ``/proc/cpuinfo`` ``flags`` line."""
    present = set(flags.split())
    return [f for f in BF16_CPU_FLAGS if f in present]


def cpu_native_bf16() -> list[str]:
    """This CPU's native bfloat16 instruction sets, ``[]`` for none: ``"avx512_bf16"`` (bf16 dot
    products, e.g. AMD Zen 4, Intel Cooper Lake and later) and ``"amx_bf16"`` (Intel AMX tiles).
    Read from ``/proc/cpuinfo``, so ``[]`` off Linux. What ``matmul_precision="medium"`` gains
    and changes depends on these (bench/RESULTS.md, "Reduced precision")."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bf16_flags_of(line.split(":", 1)[1])
    except OSError:
        pass
    return []
