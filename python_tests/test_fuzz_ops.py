"""Property-based fuzzing (hypothesis) of every op family, fused against the reference.

Each family runs ``EXAMPLES`` random cases (shapes, parameters, dtypes, special values),
derandomized so that CI sees the same cases every run; the explicit ``@example``s add
the edge cases (K = 1, A = 1, N = 1, D = 1, widths that are not a multiple of any vector
width, ties in top-k, zero-variance targets, infinite and NaN values).

Tolerances are error bounds of float arithmetic scaled by the problem (sizes, magnitudes,
the conditioning of the LayerNorm and of the variance guard's square root), computed in
float64 from the inputs, with a safety factor. They do not depend on the summation order
or on fused multiply-adds, so they hold for every CPU kind the kernels are cloned for
(AVX-512, AVX2, generic x86-64; AMX only changes reduced-precision GEMMs, which these
tests do not enable).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdred_fast import ops

pytestmark = pytest.mark.skipif(not ops.FUSED_AVAILABLE, reason="the op library is not built")

EXAMPLES = 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SAFETY = 16.0  # factor over the first-order error bounds below
DTYPES = st.sampled_from([torch.float32, torch.float32, torch.float64])
SIZES = st.integers(1, 40)  # includes 1 and widths that are not a multiple of 4, 8 or 16


def _unit(dtype) -> float:
    return torch.finfo(dtype).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(got: torch.Tensor, want: torch.Tensor, atol, what: str) -> None:
    """|got - want| <= atol elementwise (atol broadcasts), NaN where want is NaN."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), f"{what}: NaN pattern differs"
    err = (got.double() - want.double()).abs()
    atol = torch.as_tensor(atol, dtype=torch.float64).expand_as(err)
    bad = (err > atol) & ~nan
    assert not bad.any(), (
        f"{what}: max error {err[bad].max().item():.3g} over tolerance "
        f"{atol[bad][err[bad].argmax()].item():.3g} at {bad.nonzero()[0].tolist()}"
    )


# ============================================================================ reward


def _targets(g: torch.Generator, K: int, N: int, D: int, dtype, zero_frac: float, offset: float) -> torch.Tensor:
    """``[K, N, D]`` targets whose spread over K is exactly 0 (a fraction ``zero_frac`` of the
    coordinates) or ``s`` with ``|mean| <= offset * s``: far from the variance guard's threshold
    (relative spread 1e-3), which fused and reference may otherwise decide differently."""
    noise = torch.randn(K, N, D, generator=g, dtype=torch.float64)
    if K > 1:
        noise = noise - noise.mean(0)
        noise = noise / noise.pow(2).mean(0).sqrt().clamp_min(1e-12)
    spread = torch.exp(torch.empty(N, D, dtype=torch.float64).uniform_(-3, 3, generator=g))
    mean = spread * offset * (2 * torch.rand(N, D, generator=g, dtype=torch.float64) - 1)
    zero = torch.rand(N, D, generator=g, dtype=torch.float64) < zero_frac
    t = mean + torch.where(zero, 0.0, spread) * noise
    return t.to(dtype)


def _bonus_atol(pred: torch.Tensor, t: torch.Tensor, alpha: float, u: float) -> torch.Tensor:
    """Error bound of Eq. 8 per row: the distillation sum (K + D roundings of its terms) plus the
    square-root term, whose error is at most sqrt(error of the ratio) (sqrt is not Lipschitz at 0)."""
    K, _, D = t.shape
    t = t.double()
    p = pred.double()
    m2 = t.pow(2).amax(0)  # >= mu^2 and B2
    var = t.var(0, unbiased=False)
    live = var > 1e-6 * t.pow(2).mean(0)  # coordinates the guard keeps
    distill = (p.abs() + m2.sqrt()).pow(2).sum(-1)
    ratio_scale = torch.where(live, (p.pow(2) + m2) / var.clamp_min(1e-300), 0.0)
    ratio_err = u * (K + 8) * ratio_scale * (1 + K)  # |f^2 - mu^2| and var (shifted sums: up to K)
    root = torch.where(live, ratio_err.sqrt() + ratio_err, 0.0).sum(-1) / D
    return SAFETY * (alpha * u * (K + D) * distill + (1 - alpha) * root + u)


def _reward_atol(pe, pb, t, alpha, zeta, sigma, u) -> torch.Tensor:
    """Eq. 7 with g linear or exp: |g'| <= 1 on -sigma * b <= 0, so the bonus errors scale by sigma."""
    e1, e2 = _bonus_atol(pe, t, alpha, u), _bonus_atol(pb, t, alpha, u)
    return sigma * (zeta * e1 + (1 - zeta) * e2) + SAFETY * u


@st.composite
def reward_cases(draw):
    return dict(
        K=draw(st.integers(1, 12)),
        N=draw(st.integers(1, 24)),
        D=draw(SIZES),
        dtype=draw(DTYPES),
        alpha=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        zeta=draw(st.floats(0, 1)),
        sigma=draw(st.floats(0, 2)),
        g=draw(st.sampled_from(["linear", "exp"])),
        eps=draw(st.sampled_from([1e-6, 1e-4])),
        zero_frac=draw(st.sampled_from([0.0, 0.3, 1.0])),
        offset=draw(st.sampled_from([0.0, 1.0, 10.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


EDGE_REWARD = dict(alpha=0.9, zeta=0.8, sigma=1.0, g="linear", eps=1e-6, offset=1.0, seed=1)


@FUZZ
@example(dict(EDGE_REWARD, K=1, N=1, D=1, dtype=torch.float32, zero_frac=0.0))  # K = 1: every coordinate degenerate
@example(dict(EDGE_REWARD, K=5, N=3, D=17, dtype=torch.float32, zero_frac=1.0))  # identical targets
@example(dict(EDGE_REWARD, K=33, N=2, D=33, dtype=torch.float32, zero_frac=0.0, offset=1000.0))  # large vs spread
@given(case=reward_cases())
def test_fuzz_reward(case):
    K, N, D, dtype = case["K"], case["N"], case["D"], case["dtype"]
    g = _gen(case["seed"])
    t = _targets(g, K, N, D, dtype, case["zero_frac"], case["offset"])
    scale = t.double().abs().amax().item() + 1.0
    pe = (scale * torch.randn(N, D, generator=g, dtype=torch.float64)).to(dtype)
    pb = torch.where(torch.rand(N, D, generator=g) < 0.3, t[0], pe.flip(0))  # some predictions equal a target
    alpha, zeta, sigma, gfun, eps = case["alpha"], case["zeta"], case["sigma"], case["g"], case["eps"]
    u = _unit(dtype)
    got = ops.moment_bonus(pe, t, alpha, eps, impl="fused")
    want = ops.moment_bonus(pe, t, alpha, eps, impl="reference")
    _close(got, want, _bonus_atol(pe, t, alpha, u), "moment_bonus")
    got = ops.cdred_reward(pe, pb, t, alpha, zeta, sigma, gfun, eps, impl="fused")
    want = ops.cdred_reward(pe, pb, t, alpha, zeta, sigma, gfun, eps, impl="reference")
    _close(got, want, _reward_atol(pe, pb, t, alpha, zeta, sigma, u), "cdred_reward")


# ============================================================================ rnd


def _mlp_params(g, E: int, widths: list[int], dtype):
    ws, bs, lws, lbs = [], [], [], []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        ws.append((torch.randn(E, fan_out, fan_in, generator=g, dtype=torch.float64) / math.sqrt(fan_in)).to(dtype))
        bs.append((0.1 * torch.randn(E, fan_out, generator=g, dtype=torch.float64)).to(dtype))
        if i < len(widths) - 2:
            lws.append((1 + 0.2 * torch.randn(E, fan_out, generator=g, dtype=torch.float64)).to(dtype))
            lbs.append((0.1 * torch.randn(E, fan_out, generator=g, dtype=torch.float64)).to(dtype))
    return ws, bs, lws, lbs


@st.composite
def rnd_cases(draw):
    n_hidden = draw(st.integers(0, 2))
    return dict(
        E=draw(st.integers(1, 5)),
        N=draw(st.integers(1, 24)),
        I=draw(st.integers(1, 20)),
        shared=draw(st.integers(0, 6)),
        hidden=[draw(st.integers(2, 40)) for _ in range(n_hidden)],
        out=draw(st.integers(1, 12)),
        per_member=draw(st.booleans()),
        dtype=draw(DTYPES),
        alpha=draw(st.sampled_from([0.5, 0.9])),
        zeta=draw(st.floats(0, 1)),
        sigma=draw(st.floats(0, 2)),
        g=draw(st.sampled_from(["linear", "exp"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


EDGE_RND = dict(alpha=0.9, zeta=0.8, sigma=1.0, g="linear", per_member=False, seed=2)


@FUZZ
@example(dict(EDGE_RND, E=1, N=1, I=1, shared=0, hidden=[], out=1, dtype=torch.float32))
@example(dict(EDGE_RND, E=3, N=17, I=5, shared=3, hidden=[33, 31], out=9, dtype=torch.float32))
@given(case=rnd_cases())
def test_fuzz_rnd(case):
    E, N, dtype = case["E"], case["N"], case["dtype"]
    g = _gen(case["seed"])
    shared = case["shared"] if not case["per_member"] else 0
    widths = [case["I"] + shared, *case["hidden"], case["out"]]
    params = _mlp_params(g, E, widths, dtype)
    lead = (E, N) if case["per_member"] else (N,)
    x = torch.randn(*lead, case["I"], generator=g, dtype=torch.float64).to(dtype)
    z = torch.randn(shared, generator=g, dtype=torch.float64).to(dtype) if shared else None
    u = _unit(dtype)
    # ensemble_mlp: each layer adds ~ fan_in roundings per GEMM, the LayerNorm ~ width more
    got = ops.ensemble_mlp(x, *params, 1e-5, z, impl="fused")
    want = ops.ensemble_mlp(x, *params, 1e-5, z, impl="reference")
    depth_err = u * sum(widths) * len(widths)
    _close(got, want, SAFETY * depth_err * (1 + want.abs().amax().double()), "ensemble_mlp")
    if case["per_member"]:
        return
    # rnd_reward: K = E targets, two predictors; its tolerance as cdred_reward's with the MLPs' error
    preds = _mlp_params(g, 2, widths, dtype)
    args = (case["alpha"], case["zeta"], case["sigma"], case["g"], ops.DEFAULT_EPS, z)
    got = ops.rnd_reward(x, params, preds, *args, impl="fused")
    want = ops.rnd_reward(x, params, preds, *args, impl="reference")
    with torch.no_grad():
        t = ops.ensemble_mlp(x, *params, 1e-5, z, impl="reference")
        p = ops.ensemble_mlp(x, *preds, 1e-5, z, impl="reference")
    # targets closer than the MLPs' error to the guard's threshold could be decided either way
    var, b2 = t.double().var(0, unbiased=False), t.double().pow(2).mean(0)
    near = ((var - ops.DEFAULT_EPS * b2).abs() <= 1e3 * depth_err * b2).any(-1) & (t.shape[0] > 1)
    atol = _reward_atol(p[0], p[1], t, args[0], args[1], args[2], max(u, depth_err))
    _close(got[~near], want[~near], atol[~near], "rnd_reward")


# ============================================================================ block


@st.composite
def block_cases(draw):
    return dict(
        E=draw(st.integers(1, 4)),
        M=draw(st.integers(1, 20)),
        D=draw(st.integers(1, 70)),
        per_member=draw(st.booleans()),
        dtype=draw(DTYPES),
        offset=draw(st.sampled_from([0.0, 1.0, 30.0])),
        scale=draw(st.sampled_from([1e-3, 1.0, 1e3])),
        const_frac=draw(st.sampled_from([0.0, 0.3])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


EDGE_BLOCK = dict(per_member=True, offset=1.0, scale=1.0, const_frac=0.0, seed=3)


@FUZZ
@example(dict(EDGE_BLOCK, E=1, M=1, D=1, dtype=torch.float32))
@example(dict(EDGE_BLOCK, E=2, M=5, D=17, dtype=torch.float32, const_frac=1.0))  # zero-variance rows
@given(case=block_cases())
def test_fuzz_layernorm_mish(case):
    E, M, D, dtype = case["E"], case["M"], case["D"], case["dtype"]
    g = _gen(case["seed"])
    x64 = case["scale"] * (torch.randn(E, M, D, generator=g, dtype=torch.float64) + case["offset"])
    const = torch.rand(E, M, 1, generator=g, dtype=torch.float64) < case["const_frac"]
    x64 = torch.where(const, x64[..., :1], x64)
    x = x64.to(dtype)
    A = E if case["per_member"] else 1
    gamma = (1 + 0.5 * torch.randn(A, D, generator=g, dtype=torch.float64)).to(dtype)
    beta = (0.5 * torch.randn(A, D, generator=g, dtype=torch.float64)).to(dtype)
    if not case["per_member"]:
        gamma, beta = gamma[0], beta[0]
    gy = torch.randn(E, M, D, generator=g, dtype=torch.float64).to(dtype)
    u = _unit(dtype)
    # condition of a row: rounding of x (and of its mean) relative to its spread, times rstd
    xd = x.double()
    var = xd.var(-1, unbiased=False, keepdim=True)
    rstd = (var + 1e-5).rsqrt()
    cond0 = xd.abs().amax(-1, keepdim=True) * rstd + 1
    cond = cond0 * (D + 4)  # + the D roundings of the row sums
    gmax = gamma.double().abs().max().item() + beta.double().abs().max().item() + 1
    out = {}
    for impl in ("fused", "reference"):
        xr = x.clone().requires_grad_(True)
        gr = gamma.clone().requires_grad_(True)
        br = beta.clone().requires_grad_(True)
        y = ops.layernorm_mish(xr, gr, br, impl=impl)
        out[impl] = (y.detach(), *torch.autograd.grad(y, (xr, gr, br), gy))
    fy, fgx, fgg, fgb = out["fused"]
    ry, rgx, rgg, rgb = out["reference"]
    err_y = SAFETY * u * cond * gmax  # per row
    _close(fy, ry, err_y, "layernorm_mish y")
    gyd = gy.double().abs().amax(-1, keepdim=True)
    _close(fgx, rgx, SAFETY * u * cond * gmax * gyd * rstd, "grad_x")
    xhat_max = xd.sub(xd.mean(-1, keepdim=True)).abs().amax(-1, keepdim=True) * rstd
    rows_err = (SAFETY * u * cond0 * gmax * gyd * (1 + xhat_max)).sum()  # summed over the rows
    rows_err = rows_err + SAFETY * u * M * E * gmax * gyd.amax()
    _close(fgg, rgg, rows_err, "grad_gamma")
    _close(fgb, rgb, rows_err, "grad_beta")


# ============================================================================ mppi


@st.composite
def mppi_cases(draw):
    N = draw(st.integers(1, 40))
    return dict(
        B=draw(st.integers(1, 4)),
        H=draw(st.integers(1, 6)),
        N=N,
        A=draw(st.integers(1, 9)),
        k=draw(st.integers(1, N)),
        batched=draw(st.booleans()),
        dtype=draw(DTYPES),
        values=draw(st.sampled_from(["continuous", "ties", "special"])),
        temperature=draw(st.sampled_from([1e-3, 0.5, 2.0, 50.0])),
        min_std=draw(st.sampled_from([0.0 + 1e-3, 0.05])),
        max_std=draw(st.sampled_from([0.5, 2.0])),
        eval_mode=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


EDGE_MPPI = dict(batched=True, temperature=0.5, min_std=0.05, max_std=2.0, eval_mode=False, seed=4)


@FUZZ
@example(dict(EDGE_MPPI, B=1, H=1, N=1, A=1, k=1, dtype=torch.float32, values="continuous"))
@example(dict(EDGE_MPPI, B=2, H=3, N=33, A=1, k=8, dtype=torch.float32, values="ties"))
@example(dict(EDGE_MPPI, B=3, H=2, N=17, A=3, k=17, dtype=torch.float32, values="special"))
@given(case=mppi_cases())
def test_fuzz_mppi(case):
    B, H, N, A, k, dtype = case["B"], case["H"], case["N"], case["A"], case["k"], case["dtype"]
    g = _gen(case["seed"])
    u = _unit(dtype)
    mean = (torch.rand(B, H, A, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    std = (torch.rand(B, H, A, generator=g, dtype=torch.float64) * 2).to(dtype)
    if case["values"] == "ties":
        values = torch.randint(0, 3, (B, N), generator=g).to(dtype)
    else:
        values = (10 * torch.randn(B, N, generator=g, dtype=torch.float64)).to(dtype)
        if case["values"] == "special":
            pick = torch.randint(0, 5, (B, N), generator=g)
            special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=dtype)
            values = torch.where(torch.rand(B, N, generator=g) < 0.4, special[pick], values)
    unbatch = (lambda t: t[0]) if not case["batched"] else (lambda t: t)
    if not case["batched"]:
        mean, std, values = mean[:1], std[:1], values[:1]
        B = 1

    # sample: the same generator state gives the same draws; the result within a few roundings
    seed = case["seed"] + 1
    got = ops.mppi_sample(unbatch(mean), unbatch(std), N, _gen(seed), impl="fused")
    want = ops.mppi_sample(unbatch(mean), unbatch(std), N, _gen(seed), impl="reference")
    _close(got, want, 4 * u * (1 + 8 * unbatch(std).abs().amax().double()), "mppi_sample")
    actions = want

    # elite update: the same elites in the same order (ties: lower index first), weights and moments
    tau, lo, hi = case["temperature"], case["min_std"], case["max_std"]
    f = ops.mppi_elite_update(unbatch(values), actions, k, tau, lo, hi, impl="fused")
    r = ops.mppi_elite_update(unbatch(values), actions, k, tau, lo, hi, impl="reference")
    assert torch.equal(f[4], r[4]), "elite values"
    assert torch.equal(f[2], r[2]), "elite actions"
    finite = r[4][torch.isfinite(r[4])]
    gmax = finite.abs().max().item() if finite.numel() else 0.0
    w_err = SAFETY * u * (1 + tau * gmax) * k
    _close(f[3], r[3], w_err, "elite weights")
    _close(f[0], r[0], w_err * 2, "mean")
    _close(f[1], r[1], math.sqrt(w_err * 4) + w_err * 4, "std")

    # select: the same elite (same draws from the same generator state), the same action
    got = ops.mppi_select(r[2], r[3], unbatch(std), case["eval_mode"], _gen(seed + 1), impl="fused")
    want = ops.mppi_select(r[2], r[3], unbatch(std), case["eval_mode"], _gen(seed + 1), impl="reference")
    _close(got, want, 4 * u * (1 + 8 * unbatch(std).abs().amax().double()), "mppi_select")
    gf, gr = _gen(seed + 2), _gen(seed + 2)
    ops.mppi_select(r[2], r[3], unbatch(std), case["eval_mode"], gf, impl="fused")
    ops.mppi_select(r[2], r[3], unbatch(std), case["eval_mode"], gr, impl="reference")
    assert torch.equal(gf.get_state(), gr.get_state()), "generator states after mppi_select"
