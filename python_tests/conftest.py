"""Shared fixtures: devices to test on, with a clear reason when CUDA is skipped."""

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


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed every test; run on one intra-op thread.

    The test models are tiny, where a second OpenMP thread only adds synchronisation
    (and, on a loaded 2-core machine, long spin waits). The kernels' multi-threaded
    paths are covered explicitly by the tests that use the ``threads`` fixture.
    """
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run a test with 1 and with 2 intra-op threads (exercises at::parallel_for chunking)."""
    torch.set_num_threads(request.param)
    return request.param
