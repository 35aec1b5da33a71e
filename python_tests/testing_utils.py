"""Values shared by the test modules: the devices to test on and a tiny model config.

A module of its own: ``conftest`` is not a unique module name when bench/ and
python_tests/ are collected in one run, so test modules must not import from it.
"""

import pytest
import torch

CUDA_SKIP_REASON = "CUDA kernels need a CUDA device; none is visible here (torch.cuda.is_available() is False)"

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)]),
]


# A tiny CDRED model for end-to-end tests: every part of the method, sizes that run in
# milliseconds on one CPU thread.
TINY = dict(
    latent_dim=16,
    enc_dim=32,
    mlp_dim=32,
    num_bins=11,
    num_targets=3,
    rnd_dim=8,
    rnd_target_hidden=(16, 16),
    rnd_predictor_hidden=(16, 16),
    batch_size=8,
    num_samples=16,
    num_elites=4,
    num_pi_trajs=2,
    iterations=2,
)
