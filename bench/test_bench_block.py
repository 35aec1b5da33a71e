"""Block tail (LayerNorm -> Mish, SPEC section 0): fused forward + backward vs PyTorch's.

Shapes of one update at the SPEC defaults: the world model's Blocks see (H + 1) * 2B = 2048
rows of width 512 (one network), the Q ensemble 5 members x 2048 rows, the predictors'
hidden layers 1024 rows x 1024 per predictor.
Run: pytest bench/test_bench_block.py --benchmark-only
"""

import pytest
import torch
from bench_utils import DEVICES, sync

from cdred_fast import ops

SHAPES = {
    "one network 2048x512": (1, 2048, 512),
    "Q heads 5x2048x512": (5, 2048, 512),
    "predictor 1024x1024": (1, 1024, 1024),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_layernorm_mish_forward_backward(benchmark, impl, shape, device):
    E, M, D = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(E, M, D, generator=g).to(device).requires_grad_(True)
    gamma = (1 + 0.1 * torch.randn(E, D, generator=g)).to(device).requires_grad_(True)
    beta = (0.1 * torch.randn(E, D, generator=g)).to(device).requires_grad_(True)
    gy = torch.randn(E, M, D, generator=g).to(device)
    benchmark.group = f"layernorm_mish fwd+bwd {shape} {device}"
    benchmark.extra_info["impl"] = impl

    def run():
        y = ops.layernorm_mish(x, gamma, beta, impl=impl)
        grads = torch.autograd.grad(y, (x, gamma, beta), gy)
        sync(device)
        return grads

    got = benchmark(run)
    y_ref = ops.layernorm_mish(x, gamma, beta, impl="reference")
    for a, b in zip(got, torch.autograd.grad(y_ref, (x, gamma, beta), gy)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
