"""Device parametrisation for the benchmarks: the tests' (python_tests/testing_utils.py), plus
``sync``. A module of its own: ``conftest`` is not a unique module name when bench/ and
python_tests/ are collected in one run."""

import torch
from testing_utils import CUDA_SKIP_REASON, DEVICES, cuda_skip_reason  # noqa: F401  (re-exported)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
