"""Shared fixtures: devices to test on, with a clear reason when CUDA is skipped."""

import pytest
import torch

CUDA_SKIP_REASON = "CUDA kernels need a CUDA device; none is visible here (torch.cuda.is_available() is False)"

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)]),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
