"""RND ensemble forward: fused ensemble_mlp / rnd_reward vs the pure-PyTorch reference at the SPEC sizes.

One planning batch, N = 512 rows of x = [z ; a] with L = 512, A = 6 (I = 518):
targets K = 5 x MLP(518 -> [512, 512] -> 256), predictors 2 x MLP(518 -> [1024, 1024, 1024] -> 256).
"x_shared" rows share one z (the first planning step): the fused op takes z once
(I_s = 512) and the reference runs the MLP on the concatenated [z ; a] rows.
Run: pytest bench/test_bench_rnd.py --benchmark-only  (OMP_NUM_THREADS=1 for one thread)
"""

import math

import pytest
import torch
from bench_utils import DEVICES, sync

from cdred_fast import ops

N, L, A, D, K = 512, 512, 6, 256, 5
I = L + A
TARGETS = (K, [I, 512, 512, D])
PREDICTORS = (2, [I, 1024, 1024, 1024, D])


def _params(E, dims, device, seed):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(E, o, i, generator=g) / math.sqrt(i) for i, o in zip(dims[:-1], dims[1:])]
    bs = [0.1 * torch.randn(E, o, generator=g) for o in dims[1:]]
    lws = [1.0 + 0.1 * torch.randn(E, o, generator=g) for o in dims[1:-1]]
    lbs = [0.1 * torch.randn(E, o, generator=g) for o in dims[1:-1]]
    to = lambda ts: [t.to(device) for t in ts]
    return to(ws), to(bs), to(lws), to(lbs)


def _inputs(device, shared):
    g = torch.Generator().manual_seed(123)
    if shared:
        return torch.randn(N, A, generator=g).to(device), torch.randn(L, generator=g).to(device)
    return torch.randn(N, I, generator=g).to(device), None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", [False, True], ids=["full-rows", "x_shared"])
@pytest.mark.parametrize("net", ["targets", "predictors"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_ensemble_mlp(benchmark, impl, net, shared, device):
    E, dims = TARGETS if net == "targets" else PREDICTORS
    params = _params(E, dims, device, seed=0 if net == "targets" else 1)
    x, xs = _inputs(device, shared)
    hidden = "x".join(map(str, dims[1:-1]))
    benchmark.group = f"ensemble_mlp {net} E={E} {I}->[{hidden}]->{D} N={N}{' x_shared' if shared else ''} {device}"
    benchmark.extra_info["impl"] = impl

    @torch.no_grad()
    def run():
        out = ops.ensemble_mlp(x, *params, 1e-5, xs, impl=impl)
        sync(device)
        return out

    out = benchmark(run)
    with torch.no_grad():
        ref = ops.ensemble_mlp(x, *params, 1e-5, xs, impl="reference")
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", [False, True], ids=["full-rows", "x_shared"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_rnd_reward(benchmark, impl, shared, device):
    targets = _params(*TARGETS, device, seed=0)
    preds = _params(*PREDICTORS, device, seed=1)
    x, xs = _inputs(device, shared)
    benchmark.group = f"rnd_reward K={K} N={N}{' x_shared' if shared else ''} {device}"
    benchmark.extra_info["impl"] = impl

    @torch.no_grad()
    def run():
        out = ops.rnd_reward(x, targets, preds, x_shared=xs, impl=impl)
        sync(device)
        return out

    out = benchmark(run)
    with torch.no_grad():
        ref = ops.rnd_reward(x, targets, preds, x_shared=xs, impl="reference")
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "fused-untiled", "reference"])
def test_bench_targets_and_reward(benchmark, impl, device):
    """The targets' forward and the reward from given predictor outputs, with the planning
    latent shared: the tiled ``ensemble_reward`` op ("fused", no [K, N, D] tensor), the fused
    ``ensemble_mlp`` + ``cdred_reward`` ("fused-untiled"), and the reference."""
    weights, biases, ln_w, ln_b = _params(*TARGETS, device, seed=0)
    x, xs = _inputs(device, True)
    g = torch.Generator().manual_seed(5)
    pe, pb = (torch.randn(N, D, generator=g).to(device) for _ in range(2))
    benchmark.group = f"targets + reward K={K} N={N} x_shared {device}"
    benchmark.extra_info["impl"] = impl

    def run():
        if impl == "fused":
            out = torch.ops.cdred_fast.ensemble_reward(
                x, weights, biases, ln_w, ln_b, 1e-5, pe, pb, 0.9, 0.8, 1.0, "linear", 1e-6, xs
            )
        else:
            kind = "reference" if impl == "reference" else "fused"
            t = ops.ensemble_mlp(x, weights, biases, ln_w, ln_b, 1e-5, xs, impl=kind)
            out = ops.cdred_reward(pe, pb, t, impl=kind)
        sync(device)
        return out

    out = benchmark(run)
    t = ops.ensemble_mlp(x, weights, biases, ln_w, ln_b, 1e-5, xs, impl="reference")
    torch.testing.assert_close(out, ops.cdred_reward(pe, pb, t, impl="reference"), rtol=1e-3, atol=1e-3)
