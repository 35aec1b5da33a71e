"""Shared fixtures: seeding, thread count. (Shared values live in testing_utils.py.)"""

import pytest
import torch
from testing_utils import CUDA_SKIP_REASON


def pytest_collection_modifyitems(config, items):
    """Skip every test marked ``cuda`` when CUDA tests cannot run here, saying why (no visible
    device, or an extension built without CUDA kernels: testing_utils.cuda_skip_reason)."""
    if not CUDA_SKIP_REASON:
        return
    skip = pytest.mark.skip(reason=CUDA_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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
