"""Device parametrisation for the benchmarks (a module of its own: ``conftest`` is not a
unique module name when bench/ and python_tests/ are collected in one run)."""

import pytest
import torch

import cdred_fast


def cuda_skip_reason(need_kernels: bool = True) -> str:
    """Why a CUDA benchmark cannot run here, or ``""``: no visible CUDA device, or (when it
    times the fused ops, ``need_kernels``) an extension built without CUDA kernels, where
    kernels="fused" would quietly time the reference ops instead."""
    if not torch.cuda.is_available():
        return "CUDA benchmark skipped: no CUDA device is visible (torch.cuda.is_available() is False)"
    if need_kernels and not cdred_fast.build_info().get("cuda_kernels"):
        return (
            "CUDA benchmark skipped: a CUDA device is visible but the cdred_fast extension was built without "
            "CUDA kernels (cdred_fast.build_info()['cuda_kernels'] is False)"
        )
    return ""


CUDA_SKIP_REASON = cuda_skip_reason()

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(bool(CUDA_SKIP_REASON), reason=CUDA_SKIP_REASON or "-")],
    ),
]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
