"""Fused ops at the edges of floating point, against the reference and float64:
LayerNorm -> Mish on rows with huge |x| (bounded, the true LayerNorm) and with inf / NaN
(NaN exactly where PyTorch gives NaN), and the reward's target mean when the targets are
large against their spread (as accurate as the reference's)."""

import pytest
import torch
import torch.nn.functional as F

from cdred_fast import ops, reference

pytestmark = pytest.mark.skipif(not ops.FUSED_AVAILABLE, reason="the op library is not built")

MAGNITUDES = {torch.float32: (1e15, 1e18, 5e18, 1e19, 1e20, 1e30, 1e37), torch.float64: (1e150, 1e200, 1e300)}
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layernorm_mish_huge_rows_are_the_true_layernorm(dtype):
    g = torch.Generator().manual_seed(0)
    for mag in MAGNITUDES[dtype]:
        for D in (1, 2, 7, 37, 300):
            base = torch.randn(2, 9, D, generator=g, dtype=torch.float64)
            base[:, 0] += 3.0  # a row far from 0 next to centred ones
            x = (base * mag).to(dtype)
            gamma = torch.randn(2, D, generator=g, dtype=dtype)
            beta = torch.randn(2, D, generator=g, dtype=dtype)
            # the same rows in float64, scaled to ~1 (LayerNorm is scale-invariant up to eps)
            eps64 = max(1e-5 / mag / mag, 1e-300)
            truth = reference.layernorm_mish(x.double() / mag, gamma.double(), beta.double(), eps64)[0]
            bound = (gamma.abs() * D**0.5 + beta.abs()).amax().item() + 1.0  # |xhat| <= sqrt(D - 1)
            for impl in ("fused", "reference"):
                y = ops.layernorm_mish(x, gamma, beta, impl=impl)
                assert y.abs().max().item() <= bound, (impl, mag, D)
                err = (y.double() - truth).abs().max().item()
                assert err <= TOL[dtype] * bound, (impl, mag, D, err)
            xr = x.clone().requires_grad_(True)
            grads = torch.autograd.grad(ops.layernorm_mish(xr, gamma, beta).sum(), xr)
            assert torch.isfinite(grads[0]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layernorm_mish_non_finite_rows_are_nan_like_pytorch(dtype):
    g = torch.Generator().manual_seed(1)
    D = 19
    x = torch.randn(1, 8, D, generator=g, dtype=dtype)
    x[0, 0, 0] = float("inf")  # the first value (the kernels' shift)
    x[0, 1, 7] = float("inf")
    x[0, 2, 3] = -float("inf")
    x[0, 3, 11] = float("nan")
    x[0, 4, :] = float("inf")
    x[0, 5, 2], x[0, 5, 9] = float("inf"), -float("inf")
    for sign in (1.0, -1.0):  # a negative gamma turns -inf into +inf after the affine
        gamma = sign * torch.rand(1, D, generator=g, dtype=dtype) + sign * 0.5
        beta = torch.randn(1, D, generator=g, dtype=dtype)
        torch_y = F.mish(F.layer_norm(x, (D,)) * gamma[:, None] + beta[:, None])
        for impl in ("fused", "reference"):
            y = ops.layernorm_mish(x, gamma, beta, impl=impl)
            assert torch.equal(torch.isnan(y), torch.isnan(torch_y)), impl
            assert torch.isnan(y[0, :6]).all() and torch.isfinite(y[0, 6:]).all()
            torch.testing.assert_close(y[0, 6:], torch_y[0, 6:], rtol=1e-5, atol=1e-5)
        # the rnd epilogue runs the same row kernel (bias added in place)
        w = torch.eye(D, dtype=dtype)[None]
        b0 = torch.zeros(1, D, dtype=dtype)
        out = ops.ensemble_mlp(x[0], [w, w], [b0, b0], [gamma], [beta])
        assert torch.isnan(out[0, :6]).all() and torch.isfinite(out[0, 6:]).all()


def _mean_errors(t: torch.Tensor) -> tuple[float, float]:
    """Max error of the fused and the reference target mean, relative to max_k |t_k| per coordinate,
    against float64. The mean is read through moment_bonus with alpha = 1 and pred = 0 (b = mu^2) on
    one coordinate per row."""
    K = t.shape[0]
    rows = t.reshape(K, -1, 1)
    pred = torch.zeros(rows.shape[1], 1, dtype=t.dtype)
    exact = rows.double().mean(0)[:, 0].abs()
    scale = rows.double().abs().amax(0)[:, 0]
    errs = []
    for impl in ("fused", "reference"):
        mu = ops.moment_bonus(pred, rows, alpha=1.0, impl=impl).double().sqrt()
        errs.append(((mu - exact).abs() / scale).max().item())
    return errs[0], errs[1]


@pytest.mark.parametrize("K", [2, 5, 33])
@pytest.mark.parametrize("layout", ["offset", "centred", "shared"])
def test_fused_target_mean_as_accurate_as_the_reference(K, layout):
    """Targets of size 1000 with a spread of 1 ("offset": a per-coordinate offset, "shared": the
    same 1000 everywhere) or a spread of 1000 around a small mean ("centred")."""
    g = torch.Generator().manual_seed(K)
    N, D, scale = 64, 32, 1000.0
    noise = torch.randn(K, N, D, generator=g, dtype=torch.float64)
    if layout == "offset":
        t = scale * torch.randn(1, N, D, generator=g, dtype=torch.float64) + noise
    elif layout == "shared":
        t = scale + noise
    else:
        t = scale * noise
    fused, ref = _mean_errors(t.float())
    u = 2.0**-24  # float32 unit roundoff
    assert fused <= 4 * u, fused  # compensated sum: about one rounding of the mean (+ the sqrt above)
    assert fused <= ref + 2 * u, (fused, ref)
