"""Device parametrisation for the benchmarks (a module of its own: ``conftest`` is not a
unique module name when bench/ and python_tests/ are collected in one run)."""

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: CUDA benchmarks skipped"),
    ),
]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
