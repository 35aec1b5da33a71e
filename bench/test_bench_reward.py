"""Reward op family: fused kernel vs pure-PyTorch reference at the SPEC sizes.

N = 512 rows (one planning batch), D = 256 outputs, K = 5 targets.
Run: pytest bench/test_bench_reward.py --benchmark-only
"""

import pytest
import torch
from bench_utils import DEVICES, sync

from cdred_fast import ops

N, D, K = 512, 256, 5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_cdred_reward(benchmark, impl, device):
    g = torch.Generator().manual_seed(0)
    pe, pb = (torch.randn(N, D, generator=g).to(device) for _ in range(2))
    targets = torch.randn(K, N, D, generator=g).to(device)
    benchmark.group = f"cdred_reward {N}x{D} K={K} {device}"
    benchmark.extra_info["impl"] = impl

    def run():
        out = ops.cdred_reward(pe, pb, targets, impl=impl)
        sync(device)
        return out

    out = benchmark(run)
    torch.testing.assert_close(out, ops.cdred_reward(pe, pb, targets, impl="reference"), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_moment_bonus(benchmark, impl, device):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(N, D, generator=g).to(device)
    targets = torch.randn(K, N, D, generator=g).to(device)
    benchmark.group = f"moment_bonus {N}x{D} K={K} {device}"
    benchmark.extra_info["impl"] = impl

    def run():
        out = ops.moment_bonus(pred, targets, impl=impl)
        sync(device)
        return out

    benchmark(run)
