"""Fused MPPI ops against the reference (SPEC section 4): sample, elite update, select."""

import math
import platform

import numpy as np
import pytest
import torch
from testing_utils import DEVICES, needs_cuda

from cdred_fast import ops

TOL = {torch.float32: dict(rtol=3e-5, atol=3e-6), torch.float64: dict(rtol=1e-11, atol=1e-12)}


def _tol(dtype, k):
    """Weighted sums over k elites are accumulated in different orders: allow error growing with k."""
    grow = max(1.0, k / 512)
    return {key: val * grow for key, val in TOL[dtype].items()}


DTYPES = [torch.float32, torch.float64]


# The kernels round mean + std * eps as the reference does (product, then sum). On
# x86-64 host builds (no FMA without -mfma) and on CUDA (explicit _rn intrinsics)
# that is guaranteed; elsewhere a host compiler may contract to an FMA (<= 1 ulp).
EXACT_MUL_ADD_ON_CPU = platform.machine().lower() in ("x86_64", "amd64")


def _assert_same_samples(fused, ref):
    if fused.device.type == "cuda" or EXACT_MUL_ADD_ON_CPU:
        assert torch.equal(fused, ref)
    else:
        torch.testing.assert_close(fused, ref, rtol=3 * torch.finfo(fused.dtype).eps, atol=0)


def _gen(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def _rand(shape, seed, dtype=torch.float64, device="cpu", scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)


def _both(fn, *args, **kwargs):
    return fn(*args, **kwargs, impl="fused"), fn(*args, **kwargs, impl="reference")


# ============================================================================ mppi_sample
SAMPLE_SHAPES = [  # (B, H, A, M)
    (1, 3, 6, 488),  # SPEC defaults (N - N_pi sequences)
    (1, 3, 38, 488),
    (4, 3, 6, 63),
    (3, 1, 1, 1),  # H = 1, A = 1
    (2, 5, 7, 0),  # no sampled sequence (all come from the policy prior)
    (0, 3, 6, 16),  # empty batch
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,A,M", SAMPLE_SHAPES)
def test_sample_matches_reference_with_same_generator(B, H, A, M, dtype, device):
    mean = _rand((B, H, A), 1, dtype, device, 0.5)
    std = _rand((B, H, A), 2, dtype, device).abs() * 2  # some samples get clamped
    fused = ops.mppi_sample(mean, std, M, _gen(device, 7))
    ref = ops.mppi_sample(mean, std, M, _gen(device, 7), impl="reference")
    assert fused.shape == (B, H, M, A) and fused.dtype == dtype and fused.device == mean.device
    # Same draws and the same rounding (mul, then add, then clamp): bit-identical.
    _assert_same_samples(fused, ref)
    assert fused.numel() == 0 or fused.abs().max() <= 1
    if fused.numel() > 100:
        assert (fused.abs() == 1).any()


@pytest.mark.parametrize("device", DEVICES)
def test_sample_draws_are_torch_randn(device):
    """With mean 0 and std 1 the output is exactly clamp(torch.randn(B, H, M, A))."""
    mean, std = torch.zeros(2, 3, 5, device=device), torch.ones(2, 3, 5, device=device)
    got = ops.mppi_sample(mean, std, 11, _gen(device, 3))
    expected = torch.randn((2, 3, 11, 5), generator=_gen(device, 3), device=device).clamp(-1, 1)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_default_generator_and_generator_advances(device):
    mean, std = _rand((2, 3, 4), 1, torch.float32, device), torch.full((2, 3, 4), 0.3, device=device)
    torch.manual_seed(123)
    a = ops.mppi_sample(mean, std, 9)
    torch.manual_seed(123)
    b = ops.mppi_sample(mean, std, 9, impl="reference")
    _assert_same_samples(a, b)
    g = _gen(device, 5)
    first, second = ops.mppi_sample(mean, std, 9, g), ops.mppi_sample(mean, std, 9, g)
    assert not torch.equal(first, second)


def test_sample_unbatched_and_non_contiguous():
    mean, std = _rand((3, 4), 1, torch.float32), _rand((4, 3), 2, torch.float32).abs().t()
    assert not std.is_contiguous()
    got = ops.mppi_sample(mean, std, 6, _gen("cpu", 1))
    assert got.shape == (3, 6, 4)
    assert torch.equal(got, ops.mppi_sample(mean[None], std[None].contiguous(), 6, _gen("cpu", 1))[0])
    _assert_same_samples(got, ops.mppi_sample(mean, std, 6, _gen("cpu", 1), impl="reference"))


def test_sample_nan_inputs_propagate_like_clamp():
    mean = torch.tensor([[[float("nan"), 0.0, 5.0]]])
    std = torch.tensor([[[1.0, float("nan"), 0.0]]])
    fused, ref = _both(ops.mppi_sample, mean, std, 4, _gen("cpu", 0))
    torch.testing.assert_close(fused, ref, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(fused[..., :2]).all() and (fused[..., 2] == 1).all()


# ============================================================================ mppi_elite_update
def _values(kind, B, N, dtype, seed):
    v = _rand((B, N), seed, torch.float64, scale=3.0)
    if kind == "ties":  # many equal values: only a handful of distinct levels
        v = v.round().clamp(-2, 2)
    elif kind == "all_equal":
        v = torch.full((B, N), 1.25, dtype=torch.float64)
    elif kind == "nan":  # NaN counts as 0: ties with real zeros (including -0.0)
        v[:, ::3] = float("nan")
        v[:, 1::7] = 0.0
        v[:, 2::11] = -0.0
    elif kind == "inf":
        v[:, ::5] = float("inf")
        v[:, 1::4] = float("-inf")
    elif kind == "all_neg_inf":
        v[:] = float("-inf")
    elif kind == "huge":  # differences overflow float32 to -inf
        v = v * 1e38
    return v.to(dtype)


ELITE_SHAPES = [  # (B, H, N, A, k)
    (1, 3, 512, 6, 64),  # SPEC defaults
    (1, 3, 512, 38, 64),
    (5, 3, 512, 6, 64),
    (1, 1, 1, 1, 1),  # N = k = 1
    (2, 2, 63, 3, 63),  # k = N
    (3, 4, 513, 5, 1),  # k = 1
    (2, 3, 513, 6, 100),
    # CUDA: 4096 candidates sort in exactly 48 KiB of dynamic shared memory, 2049 in the same
    # padded length; with the kernel's static shared memory that is past the default limit
    (1, 2, 4096, 3, 64),
    (2, 1, 2049, 2, 16),
    (1, 2, 5000, 4, 64),
    (2, 1, 5000, 2, 5000),
    (0, 3, 16, 2, 4),  # empty batch
]
VALUE_KINDS = ["normal", "ties", "all_equal", "nan", "inf", "all_neg_inf", "huge"]


def _elite_parity(values, actions, k, tau, lo, hi):
    fused = ops.mppi_elite_update(values, actions, k, tau, lo, hi)
    ref = ops.mppi_elite_update(values, actions, k, tau, lo, hi, impl="reference")
    names = ("mean", "std", "elite_actions", "elite_weights", "elite_values")
    B = values.shape[0]
    H, A = actions.shape[-3], actions.shape[-1]
    shapes = ((B, H, A), (B, H, A), (B, H, k, A), (B, k), (B, k))
    for name, f, r, shape in zip(names, fused, ref, shapes):
        assert f.shape == shape and f.dtype == values.dtype and f.device == values.device, name
        if name in ("elite_actions", "elite_values"):  # pure selections: identical, in the same order
            assert torch.equal(f, r), name
            # -0.0 is kept as is (NaN -> +0.0 only)
            assert torch.equal(torch.signbit(f), torch.signbit(r)), name
        else:
            torch.testing.assert_close(f, r, **_tol(values.dtype, k), msg=lambda m, name=name: f"{name}: {m}")
    return fused


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,N,A,k", ELITE_SHAPES)
def test_elite_update_matches_reference(B, H, N, A, k, dtype, device):
    actions = _rand((B, H, N, A), N + k, dtype, device).clamp(-1, 1)
    for kind in VALUE_KINDS:
        values = _values(kind, B, N, dtype, seed=B + N + k).to(device)
        fused = _elite_parity(values, actions, k, 0.5, 0.05, 2.0)
        if B:
            assert torch.isfinite(fused[3]).all() and (fused[3] >= 0).all(), kind  # always a distribution
            torch.testing.assert_close(fused[3].sum(1), torch.ones(B, dtype=dtype, device=device), rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_elite_order_and_ties_follow_stable_descending_sort(dtype, device):
    """Elite indices are exactly those of torch.sort(stable=True, descending=True)."""
    B, H, N, A = 3, 2, 777, 2
    n = torch.arange(N, dtype=dtype, device=device)
    actions = n.view(1, 1, N, 1).expand(B, H, N, A).contiguous()  # action value = candidate index
    for kind in ("ties", "all_equal", "nan", "inf"):
        values = _values(kind, B, N, dtype, seed=4).to(device)
        clean = torch.where(values.isnan(), torch.zeros_like(values), values)
        expected = torch.sort(clean, dim=1, descending=True, stable=True).indices
        for k in (1, 50, N):
            for impl in ("fused", "reference"):
                elite_actions = ops.mppi_elite_update(values, actions, k, impl=impl)[2]
                assert torch.equal(elite_actions[:, 0, :, 0].long(), expected[:, :k]), (kind, k, impl)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_elite_update_hand_computed(impl):
    # N = 4 candidates, k = 2: values (1, NaN -> 0, 3, 3): elites are candidates 2 and 3 (tie,
    # index order), both with the maximum: w = (1/2, 1/2).
    values = torch.tensor([1.0, float("nan"), 3.0, 3.0], dtype=torch.float64)
    actions = torch.tensor([[[0.1], [0.2], [0.3], [0.9]]], dtype=torch.float64)  # [H=1, N=4, A=1]
    mean, std, ea, w, ev = ops.mppi_elite_update(values, actions, 2, 0.5, 0.05, 2.0, impl=impl)
    assert ev.tolist() == [3.0, 3.0] and ea[0, :, 0].tolist() == [0.3, 0.9]
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(mean, torch.tensor([[0.6]], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([[0.3]], dtype=torch.float64))
    # k = 3: elites 2, 3, 0 (value 1 beats NaN -> 0); w ~ exp(0.5 * (0, 0, -2)).
    mean, std, ea, w, ev = ops.mppi_elite_update(values, actions, 3, 0.5, 0.05, 2.0, impl=impl)
    e = np.exp([0.0, 0.0, -1.0])
    p = e / e.sum()
    a = np.array([0.3, 0.9, 0.1])
    mu = (p * a).sum()
    torch.testing.assert_close(w, torch.tensor(p))
    torch.testing.assert_close(mean[0, 0].item(), mu)
    torch.testing.assert_close(std[0, 0].item(), math.sqrt((p * (a - mu) ** 2).sum()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_temperature_extremes_and_std_clamping(dtype, device):
    B, H, N, A, k = 2, 3, 300, 4, 32
    values = _values("normal", B, N, dtype, 9).to(device)
    actions = _rand((B, H, N, A), 10, dtype, device).clamp(-1, 1)
    big = 1e30 if dtype == torch.float32 else 1e300
    tiny = torch.finfo(dtype).tiny
    for tau in (tiny, 1e-12, 0.5, 1e6, big):
        fused = _elite_parity(values, actions, k, tau, 0.05, 2.0)
        if tau == big:  # all weight on the best elite
            assert torch.equal(fused[3][:, 0], torch.ones(B, dtype=dtype, device=device))
        if tau == tiny:  # uniform weights
            torch.testing.assert_close(fused[3], torch.full((B, k), 1.0 / k, dtype=dtype, device=device))
    # Clamping at both ends: a spread of ~0.6 against bounds above and below it.
    for lo, hi in ((0.9, 1.5), (0.01, 0.02), (0.3, 0.3)):
        std = _elite_parity(values, actions, k, 0.5, lo, hi)[1]
        assert (std >= lo).all() and (std <= hi).all()
        assert (std == (lo if lo > 0.5 else hi)).all()
    # Identical elites: zero spread, clamped up to min_std.
    same = actions[:, :, :1].expand(B, H, N, A).contiguous()
    torch.testing.assert_close(
        _elite_parity(values, same, k, 0.5, 0.05, 2.0)[1], torch.full((B, H, A), 0.05, dtype=dtype, device=device)
    )


def test_elite_update_unbatched_and_non_contiguous():
    values = _values("ties", 1, 40, torch.float32, 1)[0]
    actions = _rand((3, 5, 40), 2, torch.float32).transpose(1, 2)  # [H, N, A] strided
    assert not actions.is_contiguous()
    got = ops.mppi_elite_update(values, actions, 7)
    batched = ops.mppi_elite_update(values[None], actions.contiguous()[None], 7, impl="reference")
    assert [t.shape for t in got] == [(3, 5), (3, 5), (3, 7, 5), (7,), (7,)]
    for a, b in zip(got, batched):
        torch.testing.assert_close(a, b[0], **TOL[torch.float32])


def test_elite_update_batch_independence():
    """Each batch problem equals the same problem solved alone (B > 1 vs B = 1)."""
    values = _values("nan", 6, 100, torch.float32, 3)
    actions = _rand((6, 3, 100, 4), 4, torch.float32)
    full = ops.mppi_elite_update(values, actions, 16)
    for b in range(6):
        alone = ops.mppi_elite_update(values[b : b + 1], actions[b : b + 1], 16)
        for a, c in zip(full, alone):
            assert torch.equal(a[b : b + 1], c)


# ============================================================================ mppi_select
def _elites(B, H, k, A, dtype, device, seed):
    ea = _rand((B, H, k, A), seed, dtype, device).clamp(-1.2, 1.2)
    w = torch.softmax(_rand((B, k), seed + 1, dtype, device), dim=1)
    std = _rand((B, H, A), seed + 2, dtype, device).abs()
    return ea, w, std


SELECT_SHAPES = [(1, 3, 64, 6), (1, 3, 64, 38), (64, 3, 64, 6), (3, 1, 1, 1), (2, 2, 5, 1), (0, 3, 4, 2)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eval_mode", [False, True])
@pytest.mark.parametrize("B,H,k,A", SELECT_SHAPES)
def test_select_matches_reference_with_same_generator(B, H, k, A, eval_mode, dtype, device):
    ea, w, std = _elites(B, H, k, A, dtype, device, B + k + A)
    for seed in range(3):
        fused = ops.mppi_select(ea, w, std, eval_mode, _gen(device, seed))
        ref = ops.mppi_select(ea, w, std, eval_mode, _gen(device, seed), impl="reference")
        assert fused.shape == (B, A) and fused.dtype == dtype and fused.device == ea.device
        _assert_same_samples(fused, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_select_draw_order(device):
    """multinomial(w, 1) first, then (not in eval mode) randn([B, A]), both from the generator."""
    B, H, k, A = 5, 3, 8, 4
    ea, w, std = _elites(B, H, k, A, torch.float32, device, 1)
    g = _gen(device, 11)
    choice = torch.multinomial(w, 1, generator=g)[:, 0]
    eps = torch.randn((B, A), generator=g, device=device)
    first = ea[torch.arange(B, device=device), 0, choice]
    _assert_same_samples(ops.mppi_select(ea, w, std, False, _gen(device, 11)), (first + std[:, 0] * eps).clamp(-1, 1))
    assert torch.equal(ops.mppi_select(ea, w, std, True, _gen(device, 11)), first.clamp(-1, 1))
    # Eval mode draws only the multinomial: the generator is then where randn would start.
    g = _gen(device, 11)
    ops.mppi_select(ea, w, std, True, g)
    assert torch.equal(torch.randn((B, A), generator=g, device=device), eps)


def _weights(kind, B, k, dtype, device, seed):
    """Elite weights of several kinds, not necessarily normalised (multinomial does not need it)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(B, k, generator=g, dtype=torch.float64)
    if kind == "softmax":
        w = torch.softmax(3 * torch.randn(B, k, generator=g, dtype=torch.float64), dim=1)
    elif kind == "ties":  # three distinct values: many equal weights in every row
        w = torch.randint(1, 4, (B, k), generator=g).to(torch.float64) / 4
    elif kind == "uniform":  # all weights equal: the argmax is decided by the exponentials alone
        w = torch.full((B, k), 1.0 / k, dtype=torch.float64)
    elif kind == "zeros":  # some exact zeros (never drawn), at least one positive weight per row
        w = w * (torch.rand(B, k, generator=g) < 0.5)
        w[:, int(torch.randint(k, (1,), generator=g))] = 0.25
    elif kind == "one-hot":
        w = torch.zeros(B, k, dtype=torch.float64)
        w[torch.arange(B), torch.randint(k, (B,), generator=g)] = 1.0
    return w.to(dtype=dtype, device=device)


def _chosen_index(ea_scale, out):
    return (out[:, 0] * ea_scale).round().long()


DRAW_CASES = [(B, k) for B in (1, 2, 7, 64, 257) for k in (1, 2, 3, 8, 64, 129)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["rand", "softmax", "ties", "uniform", "zeros", "one-hot"])
def test_select_draw_is_torch_multinomial(kind, dtype, device):
    """The op draws the elite as ``torch.multinomial(w, 1)`` does (exponential_ then argmax(w / q),
    without multinomial's host-side checks): the same index for every problem and the generator
    left in the same state, across seeds, batch sizes and k (k = 1 included), with ties in w."""
    H, A = 2, 1
    for B, k in DRAW_CASES:
        # elite j's first action is j / scale: exact in both dtypes, so the output names the index
        scale = float(2 ** math.ceil(math.log2(k + 1)))
        ea = (torch.arange(k, dtype=dtype, device=device) / scale).view(1, 1, k, 1).expand(B, H, k, A).contiguous()
        std = torch.zeros(B, H, A, dtype=dtype, device=device)
        w = _weights(kind, B, k, dtype, device, seed=B * 1000 + k)
        for seed in range(4 if B * k < 5000 else 2):
            g_op, g_ref = _gen(device, seed), _gen(device, seed)
            out = ops.mppi_select(ea, w, std, True, g_op)
            want = torch.multinomial(w, 1, generator=g_ref)[:, 0]
            assert torch.equal(_chosen_index(scale, out), want), (B, k, seed)
            assert torch.equal(g_op.get_state(), g_ref.get_state()), (B, k, seed)
            # also through the raw op (no wrapper), with the default generator
            torch.manual_seed(seed)
            raw = torch.ops.cdred_fast.mppi_select(ea, w, std, True, None)
            torch.manual_seed(seed)
            assert torch.equal(_chosen_index(scale, raw), torch.multinomial(w, 1)[:, 0]), (B, k, seed)


@pytest.mark.parametrize("device", DEVICES)
def test_select_draw_non_contiguous_weights(device):
    """Weights given as a transposed view: the draw still equals torch.multinomial's on that view."""
    B, H, k, A = 6, 2, 5, 1
    ea = (torch.arange(k, dtype=torch.float64, device=device) / 8).view(1, 1, k, 1).expand(B, H, k, A)
    w = _weights("rand", k, B, torch.float64, device, 3).t()  # [B, k], not contiguous
    std = torch.zeros(B, H, A, dtype=torch.float64, device=device)
    for seed in range(5):
        out = ops.mppi_select(ea, w, std, True, _gen(device, seed))
        assert torch.equal(_chosen_index(8.0, out), torch.multinomial(w, 1, generator=_gen(device, seed))[:, 0])


@pytest.mark.parametrize("device", DEVICES)
def test_select_frequencies_follow_weights(device):
    B, k, A = 20000, 4, 1
    ea = torch.arange(k, dtype=torch.float32, device=device).view(1, 1, k, 1).expand(B, 2, k, A) / 4
    p = torch.tensor([0.1, 0.2, 0.0, 0.7], device=device)
    got = ops.mppi_select(ea, p.expand(B, k), torch.zeros(B, 2, A, device=device), True, _gen(device, 0))
    freq = torch.bincount((got[:, 0] * 4).round().long(), minlength=k).float() / B
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


def test_select_unbatched_and_default_generator():
    ea, w, std = _elites(1, 3, 10, 4, torch.float64, "cpu", 5)
    torch.manual_seed(3)
    got = ops.mppi_select(ea[0], w[0], std[0])
    torch.manual_seed(3)
    ref = ops.mppi_select(ea, w, std, impl="reference")
    assert got.shape == (4,)
    _assert_same_samples(got, ref[0])


# ============================================================================ planning loop
@pytest.mark.parametrize("device", DEVICES)
def test_planning_loop_fused_equals_reference(device):
    """Sample -> (fake) values -> refit, J times, then select: the same plan with both implementations."""
    B, H, N, A, k, J = 2, 3, 512, 6, 64, 6

    def plan(impl):
        g = _gen(device, 42)
        mean, std = torch.zeros(B, H, A, device=device), torch.full((B, H, A), 2.0, device=device)
        for _ in range(J):
            a = ops.mppi_sample(mean, std, N, g, impl=impl)
            values = -(a - 0.3).pow(2).sum(dim=(1, 3))  # [B, N]
            mean, std, ea, w, _ = ops.mppi_elite_update(values, a, k, 0.5, 0.05, 2.0, impl=impl)
        return ops.mppi_select(ea, w, std, False, g, impl=impl), mean

    (act_f, mean_f), (act_r, mean_r) = plan("fused"), plan("reference")
    torch.testing.assert_close(act_f, act_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean_f, mean_r, rtol=1e-4, atol=1e-5)
    assert (mean_f - 0.3).abs().max() < 0.1  # the planner found the optimum


# ============================================================================ autograd, opcheck, compile
def test_outputs_never_require_grad():
    mean, std = torch.zeros(1, 3, 2, requires_grad=True), torch.ones(1, 3, 2, requires_grad=True)
    values, actions = torch.randn(1, 10, requires_grad=True), torch.randn(1, 3, 10, 2, requires_grad=True)
    w = torch.full((1, 4), 0.25, requires_grad=True)
    for impl in ("fused", "reference"):
        assert not ops.mppi_sample(mean, std, 5, impl=impl).requires_grad
        assert not any(t.requires_grad for t in ops.mppi_elite_update(values, actions, 4, impl=impl))
        assert not ops.mppi_select(actions[:, :, :4], w, std, impl=impl).requires_grad
    # Direct op calls as well (outputs are marked non-differentiable), with no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not torch.ops.cdred_fast.mppi_sample.default(mean, std, 5, None).requires_grad
        outs = torch.ops.cdred_fast.mppi_elite_update.default(values, actions, 4, 0.5, 0.05, 2.0)
        assert not any(t.requires_grad for t in outs)
        assert not torch.ops.cdred_fast.mppi_select.default(actions[:, :, :4], w, std, False, None).requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    def rg(t):
        return t.requires_grad_(requires_grad)

    mean, std = rg(_rand((2, 3, 4), 1, torch.float64, device)), rg(_rand((2, 3, 4), 2, torch.float64, device).abs())
    torch.library.opcheck(torch.ops.cdred_fast.mppi_sample.default, (mean, std, 7, None))
    values = rg(_values("ties", 2, 50, torch.float64, 3).to(device))
    actions = rg(_rand((2, 3, 50, 4), 4, torch.float64, device))
    torch.library.opcheck(torch.ops.cdred_fast.mppi_elite_update.default, (values, actions, 8, 0.5, 0.05, 2.0))
    ea, w, std = (rg(t) for t in _elites(2, 3, 8, 4, torch.float64, device, 5))
    for eval_mode in (False, True):
        torch.library.opcheck(torch.ops.cdred_fast.mppi_select.default, (ea, w, std, eval_mode, None))


def test_torch_compile_fullgraph():
    values, actions = _values("nan", 2, 64, torch.float32, 1), _rand((2, 3, 64, 4), 2, torch.float32)

    @torch.compile(fullgraph=True)
    def refit(v, a):
        mean, std, ea, w, ev = ops.mppi_elite_update(v, a, 8)
        return mean + std, ea, w

    got = refit(values, actions)
    ref = ops.mppi_elite_update(values, actions, 8, impl="reference")
    torch.testing.assert_close(got[0], ref[0] + ref[1], **TOL[torch.float32])
    assert torch.equal(got[1], ref[2])


def _good():
    ea, w, std = _elites(2, 3, 4, 5, torch.float32, "cpu", 1)
    return dict(
        sample=dict(mean=std.clone(), std=std, num_samples=3, generator=None),
        elite=dict(
            values=torch.randn(2, 6),
            actions=torch.randn(2, 3, 6, 5),
            num_elites=4,
            temperature=0.5,
            min_std=0.05,
            max_std=2.0,
        ),
        select=dict(elite_actions=ea, elite_weights=w, std=std, eval_mode=False, generator=None),
    )


# ============================================================================ CUDA only
@pytest.mark.cuda
@needs_cuda
def test_cuda_mixed_devices_rejected():
    good = _good()["elite"]
    with pytest.raises(ValueError, match="actions"):
        ops.mppi_elite_update(**{**good, "actions": good["actions"].cuda(), "values": good["values"]})
    with pytest.raises(ValueError, match="actions"):
        torch.ops.cdred_fast.mppi_elite_update.default(good["values"], good["actions"].cuda(), 4, 0.5, 0.05, 2.0)
    with pytest.raises(ValueError, match="generator"):
        ops.mppi_sample(torch.zeros(1, 3, 2, device="cuda"), torch.ones(1, 3, 2, device="cuda"), 4, _gen("cpu", 0))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu_and_large_n_fallback(dtype):
    """In-block sort (N up to the shared-memory limit) and the at::sort fallback beyond it."""
    for B, H, N, A, k in ((2, 3, 8192, 6, 64), (2, 3, 16384, 4, 100), (1, 2, 40000, 3, 40000)):
        values = _values("ties", B, N, dtype, 1)
        actions = _rand((B, H, N, A), 2, dtype)
        cpu = ops.mppi_elite_update(values, actions, k)
        gpu = _elite_parity(values.cuda(), actions.cuda(), k, 0.5, 0.05, 2.0)
        assert torch.equal(gpu[2].cpu(), cpu[2]) and torch.equal(gpu[4].cpu(), cpu[4])


@pytest.mark.cuda
@needs_cuda
def test_cuda_ops_do_not_synchronise():
    B, H, N, A, k = 4, 3, 512, 6, 64
    g = _gen("cuda", 0)
    mean, std = torch.zeros(B, H, A, device="cuda"), torch.full((B, H, A), 2.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        a = ops.mppi_sample(mean, std, N, g)
        values = -(a - 0.3).pow(2).sum(dim=(1, 3))
        mean, std, ea, w, _ = ops.mppi_elite_update(values, a, k)
        out = ops.mppi_select(ea, w, std, False, g)
        out_eval = ops.mppi_select(ea, w, std, True, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (B, A) and out_eval.shape == (B, A)


# The element-wise MPPI kernels launch at most 65536 blocks of 256 threads (elementwise_blocks
# in csrc/mppi/cuda.cu): past 2**24 elements their grid-stride loops run more than once.
GRID_STRIDE_ELEMENTS = 65536 * 256


@pytest.mark.cuda
@needs_cuda
def test_cuda_sample_and_select_past_the_grid_cap():
    """mppi_sample over 20M elements and mppi_select over B * A > 2**24 outputs: every element
    of the grid-stride loops' second pass equals the reference (same generator)."""
    mean = _rand((1, 2, 2), 21, torch.float32, "cuda")
    std = _rand((1, 2, 2), 22, torch.float32, "cuda").abs()
    M = 5_000_000
    assert 2 * M * 2 > GRID_STRIDE_ELEMENTS
    fused = ops.mppi_sample(mean, std, M, _gen("cuda", 3))
    ref = ops.mppi_sample(mean, std, M, _gen("cuda", 3), impl="reference")
    _assert_same_samples(fused, ref)
    del fused, ref

    B, H, k, A = GRID_STRIDE_ELEMENTS // 16 + 1, 1, 2, 16
    ea = _rand((B, H, k, A), 23, torch.float32, "cuda")
    w = torch.rand(B, k, device="cuda", generator=_gen("cuda", 24)) + 0.1
    std = _rand((B, H, A), 25, torch.float32, "cuda").abs()
    for eval_mode in (False, True):
        fused = ops.mppi_select(ea, w, std, eval_mode, _gen("cuda", 4))
        ref = ops.mppi_select(ea, w, std, eval_mode, _gen("cuda", 4), impl="reference")
        _assert_same_samples(fused, ref)


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_capture_of_the_ops():
    """sample -> elite update -> select recorded in a CUDA graph (mppi_select makes no host
    synchronisation any more) and replayed: each replay draws from the generator's state at
    that moment, so it equals the eager ops run from the same state."""
    B, H, N, A, k = 3, 3, 512, 6, 64
    g = _gen("cuda", 0)
    mean0 = torch.zeros(B, H, A, device="cuda")
    std0 = torch.full((B, H, A), 2.0, device="cuda")

    def step(generator):
        a = ops.mppi_sample(mean0, std0, N, generator)
        values = -(a - 0.3).pow(2).sum(dim=(1, 3))
        mean, std, ea, w, _ = ops.mppi_elite_update(values, a, k)
        return ops.mppi_select(ea, w, std, False, generator), mean

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(g)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(g)
    with torch.cuda.graph(graph):
        action, mean = step(g)
    replays = []
    for _ in range(3):
        state = g.get_state()
        graph.replay()
        twin = torch.Generator(device="cuda")
        twin.set_state(state)
        want_action, want_mean = step(twin)
        torch.testing.assert_close(action, want_action, rtol=0, atol=0)
        torch.testing.assert_close(mean, want_mean, rtol=0, atol=0)
        replays.append(action.clone())
    assert not torch.equal(replays[0], replays[1])  # the generator advanced between replays


@pytest.mark.parametrize("B", [1, 64])
def test_parity_across_thread_counts(B, threads):
    """at::parallel_for splits over the batch (or over H*A for B = 1): results must not depend on it."""
    values, actions = _rand((B, 512), 11), _rand((B, 3, 512, 6), 12)
    fused, ref = _both(ops.mppi_elite_update, values, actions, 64, 0.5, 0.05, 2.0)
    for f, r in zip(fused, ref):
        torch.testing.assert_close(f, r, **TOL[torch.float64])
    mean, std = _rand((B, 3, 6), 13), _rand((B, 3, 6), 14).abs()
    s_fused = ops.mppi_sample(mean, std, 488, _gen("cpu", 5))
    s_ref = ops.mppi_sample(mean, std, 488, _gen("cpu", 5), impl="reference")
    _assert_same_samples(s_fused, s_ref)
