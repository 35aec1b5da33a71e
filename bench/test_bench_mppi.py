"""MPPI op family: fused kernels vs pure-PyTorch reference at the SPEC planning sizes.

SPEC section 4 defaults: H = 3, N = 512 sequences (N - N_pi = 488 of them sampled),
k = 64 elites, A = 6 (DMControl cheetah-like) and A = 38 (dog); one planning problem
(B = 1, what the agent runs per environment step) and a batched case (B = 64).
Run: pytest bench/test_bench_mppi.py --benchmark-only
"""

import pytest
import torch
from bench_utils import DEVICES, sync

from cdred_fast import ops

H, N, N_PI, K = 3, 512, 24, 64
CASES = [(1, 6), (1, 38), (64, 6)]  # (B, A)
CASE_IDS = [f"B{b}-A{a}" for b, a in CASES]


def _setup(benchmark, name, impl, device, B, A):
    benchmark.group = f"{name} B={B} H={H} N={N} A={A} k={K} {device}"
    benchmark.extra_info["impl"] = impl


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,A", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_mppi_sample(benchmark, impl, B, A, device):
    g = torch.Generator(device=device).manual_seed(0)
    mean = torch.zeros(B, H, A, device=device)
    std = torch.full((B, H, A), 2.0, device=device)
    _setup(benchmark, "mppi_sample", impl, device, B, A)

    def run():
        out = ops.mppi_sample(mean, std, N - N_PI, g, impl=impl)
        sync(device)
        return out

    out = benchmark(run)
    assert out.shape == (B, H, N - N_PI, A)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,A", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_mppi_elite_update(benchmark, impl, B, A, device):
    g = torch.Generator().manual_seed(1)
    values = torch.randn(B, N, generator=g).to(device)
    actions = (torch.rand(B, H, N, A, generator=g) * 2 - 1).to(device)
    _setup(benchmark, "mppi_elite_update", impl, device, B, A)

    def run():
        out = ops.mppi_elite_update(values, actions, K, 0.5, 0.05, 2.0, impl=impl)
        sync(device)
        return out

    out = benchmark(run)
    ref = ops.mppi_elite_update(values, actions, K, 0.5, 0.05, 2.0, impl="reference")
    assert torch.equal(out[2], ref[2])
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,A", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_mppi_select(benchmark, impl, B, A, device):
    g = torch.Generator().manual_seed(2)
    elite_actions = (torch.rand(B, H, K, A, generator=g) * 2 - 1).to(device)
    weights = torch.softmax(torch.randn(B, K, generator=g), dim=1).to(device)
    std = torch.full((B, H, A), 0.3, device=device)
    gen = torch.Generator(device=device).manual_seed(3)
    _setup(benchmark, "mppi_select", impl, device, B, A)

    def run():
        out = ops.mppi_select(elite_actions, weights, std, False, gen, impl=impl)
        sync(device)
        return out

    out = benchmark(run)
    assert out.shape == (B, A)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,A", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_mppi_iteration(benchmark, impl, B, A, device):
    """One planning iteration without the world model: sample, (synthetic) values, refit."""
    g = torch.Generator(device=device).manual_seed(4)
    mean = torch.zeros(B, H, A, device=device)
    std = torch.full((B, H, A), 2.0, device=device)
    _setup(benchmark, "mppi_iteration", impl, device, B, A)

    def run():
        a = ops.mppi_sample(mean, std, N, g, impl=impl)
        values = -(a - 0.3).pow(2).sum(dim=(1, 3))
        out = ops.mppi_elite_update(values, a, K, 0.5, 0.05, 2.0, impl=impl)
        sync(device)
        return out

    benchmark(run)
