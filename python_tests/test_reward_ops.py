"""Fused moment_bonus / cdred_reward against the reference (SPEC section 2, Eq. 7-8)."""

import math

import numpy as np
import pytest
import torch
from testing_utils import DEVICES, needs_cuda

import cdred_fast
from cdred_fast import ops, reference

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-11, atol=1e-11)}
SHAPES = [  # (K, N, D)
    (5, 512, 256),  # SPEC defaults
    (1, 7, 3),  # K = 1: every coordinate degenerate
    (5, 1, 1),  # N = 1, D = 1
    (2, 1, 300),  # D not a multiple of the CUDA block / vector width
    (3, 4097, 5),  # N not a multiple of anything, many rows
    (7, 33, 1),
    (5, 0, 4),  # empty batch
]


def _inputs(K, N, D, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(K * 1000 + N * 10 + D)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return mk(N, D), mk(N, D), mk(K, N, D)


def test_extension_is_built_and_loaded():
    info = cdred_fast.build_info()
    assert info["extension_loaded"], info["load_error"]
    assert info["cpu_kernels"] is True
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cuda_kernels"] == bool(info["cuda_arch_list"]) or not info["cuda_kernels"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K,N,D", SHAPES)
def test_moment_bonus_matches_reference(K, N, D, dtype, device):
    pred, _, targets = _inputs(K, N, D, dtype, device)
    for alpha in (0.9, 0.0, 1.0, 0.37):
        fused = ops.moment_bonus(pred, targets, alpha)
        ref = ops.moment_bonus(pred, targets, alpha, impl="reference")
        assert fused.shape == (N,) and fused.dtype == dtype and fused.device == pred.device
        torch.testing.assert_close(fused, ref, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K,N,D", SHAPES)
@pytest.mark.parametrize("g", ["linear", "exp"])
def test_cdred_reward_matches_reference(K, N, D, dtype, g, device):
    pe, pb, targets = _inputs(K, N, D, dtype, device)
    # For exp, scale sigma with 1/D so exp(-sigma*b) does not underflow to 0 and the comparison means something.
    scale = 1.0 / D if g == "exp" else 1.0
    for alpha, zeta, sigma in [(0.9, 0.8, 1.0), (0.5, 1.0, 0.5), (0.0, 0.0, 2.0), (1.0, 0.3, 1.0)]:
        sigma *= scale
        fused = ops.cdred_reward(pe, pb, targets, alpha, zeta, sigma, g)
        ref = ops.cdred_reward(pe, pb, targets, alpha, zeta, sigma, g, impl="reference")
        torch.testing.assert_close(fused, ref, **TOL[dtype])
        if g == "exp" and N:
            assert (ref.abs() > 0).any()


@pytest.mark.parametrize("K,N,D", [(5, 512, 256), (3, 4097, 5), (2, 3, 7)])
def test_parity_across_thread_counts(K, N, D, threads):
    pe, pb, targets = _inputs(K, N, D)
    torch.testing.assert_close(
        ops.cdred_reward(pe, pb, targets), ops.cdred_reward(pe, pb, targets, impl="reference"), **TOL[torch.float32]
    )
    torch.testing.assert_close(
        ops.moment_bonus(pe, targets), ops.moment_bonus(pe, targets, impl="reference"), **TOL[torch.float32]
    )


def _naive_bonus(pred, targets, alpha):
    """Eq. 8 in float64 numpy loops, with no guard at all."""
    pred, targets = np.asarray(pred, np.float64), np.asarray(targets, np.float64)
    K, N, D = targets.shape
    out = np.zeros(N)
    for n in range(N):
        distill = root = 0.0
        for d in range(D):
            mu = sum(targets[k, n, d] for k in range(K)) / K
            b2 = sum(targets[k, n, d] ** 2 for k in range(K)) / K
            distill += (pred[n, d] - mu) ** 2
            root += math.sqrt(abs(pred[n, d] ** 2 - mu**2) / (b2 - mu**2))
        out[n] = alpha * distill + (1 - alpha) * root / D
    return out


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_guard_equals_unguarded_formula_when_variance_is_not_degenerate(impl):
    pred, _, targets = _inputs(4, 9, 6, torch.float64)
    got = ops.moment_bonus(pred, targets, 0.7, impl=impl).numpy()
    np.testing.assert_allclose(got, _naive_bonus(pred, targets, 0.7), rtol=1e-12)


def test_hand_computed_bonus_and_reward():
    # K = 2 targets, N = 1, D = 2. Coordinate 0: targets (1, 3) -> mu 2, B2 5, var 1.
    # Coordinate 1: targets (0, 2) -> mu 1, B2 2, var 1.  f = (4, -1).
    targets = torch.tensor([[[1.0, 0.0]], [[3.0, 2.0]]], dtype=torch.float64)
    f = torch.tensor([[4.0, -1.0]], dtype=torch.float64)
    h = torch.tensor([[2.0, 1.0]], dtype=torch.float64)  # equals mu: bonus 0
    # distill = (4-2)^2 + (-1-1)^2 = 8 ; root = sqrt(|16-4|/1) + sqrt(|1-1|/1) = sqrt(12)
    b_f = 0.9 * 8 + 0.1 * math.sqrt(12) / 2
    for impl in ("fused", "reference"):
        assert ops.moment_bonus(f, targets, 0.9, impl=impl).item() == pytest.approx(b_f, rel=1e-12)
        assert ops.moment_bonus(h, targets, 0.9, impl=impl).item() == pytest.approx(0.0, abs=1e-12)
        # R = zeta*(-sigma*b_f) - (1-zeta)*(-sigma*b_h) with b_h = 0
        r = ops.cdred_reward(f, h, targets, 0.9, 0.8, 2.0, "linear", impl=impl).item()
        assert r == pytest.approx(0.8 * -2.0 * b_f, rel=1e-12)
        r = ops.cdred_reward(f, h, targets, 0.9, 0.8, 2.0, "exp", impl=impl).item()
        assert r == pytest.approx(0.8 * math.exp(-2.0 * b_f) - 0.2 * 1.0, rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prediction_at_plus_or_minus_the_target_mean_has_no_root_term(dtype, device):
    """|f| == |mu| gives |f^2 - mu^2| = 0 exactly, on every device: the two squares are rounded
    before their difference (a fused multiply-add would leave mu^2's rounding error, which the
    square root magnifies: ~2e-4 in float32 at f = mu = 0.1, var = 0.01)."""
    m = torch.tensor([0.1, 0.3, 1.7, -0.7], dtype=dtype, device=device)
    targets = torch.stack([torch.zeros_like(m), 2 * m]).view(2, 1, 4)  # mu = m, var = m^2 (exact)
    for f in (m, -m):
        got = ops.moment_bonus(f.view(1, 4), targets, 0.0)  # alpha = 0: the root term alone
        assert torch.equal(got, torch.zeros(1, dtype=dtype, device=device)), got
    ref = ops.moment_bonus(m.view(1, 4), targets, 0.0, impl="reference")
    assert torch.equal(ref, torch.zeros(1, dtype=dtype, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_zero_variance_gives_documented_finite_result(impl, device):
    """K = 1 or identical targets: the inverse-count term is 0, so b = alpha*||f - t||^2."""
    pred, _, targets = _inputs(1, 16, 8, torch.float32, device)
    for t in (targets, targets.expand(5, -1, -1).contiguous()):
        got = ops.moment_bonus(pred, t, 0.9, impl=impl)
        expected = 0.9 * (pred - t[0]).pow(2).sum(-1)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    zeros = torch.zeros(3, 4, 2, device=device)
    got = ops.cdred_reward(torch.zeros(4, 2, device=device), torch.ones(4, 2, device=device), zeros, impl=impl)
    torch.testing.assert_close(got, torch.full((4,), -0.2 * -0.9 * 2, device=device))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_partially_degenerate_coordinates(impl):
    """Degenerate coordinates drop out of the root term; the others keep their exact value."""
    pred, _, targets = _inputs(3, 5, 4, torch.float64)
    targets[:, :, 1] = targets[0, :, 1]  # coordinate 1 identical across targets
    got = ops.moment_bonus(pred, targets, 0.5, impl=impl)
    mu, b2 = targets.mean(0), targets.pow(2).mean(0)
    keep = [0, 2, 3]
    root = ((pred[:, keep] ** 2 - mu[:, keep] ** 2).abs() / (b2[:, keep] - mu[:, keep] ** 2)).sqrt().sum(-1) / 4
    expected = 0.5 * (pred - mu).pow(2).sum(-1) + 0.5 * root
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs():
    pe, pb, targets = _inputs(4, 10, 12)
    t_nc = targets.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    pe_nc = pe.t().contiguous().t()
    assert not t_nc.is_contiguous() and not pe_nc.is_contiguous()
    torch.testing.assert_close(ops.cdred_reward(pe_nc, pb, t_nc), ops.cdred_reward(pe, pb, targets, impl="reference"))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    pe, pb, targets = _inputs(3, 6, 5, torch.float64, device)
    torch.library.opcheck(torch.ops.cdred_fast.moment_bonus.default, (pe, targets, 0.9, 1e-6))
    torch.library.opcheck(torch.ops.cdred_fast.cdred_reward.default, (pe, pb, targets, 0.9, 0.8, 1.0, "exp", 1e-6))
    # With gradients: exercises the registered autograd formula.
    args = (pe.requires_grad_(), pb.requires_grad_(), targets)
    torch.library.opcheck(torch.ops.cdred_fast.cdred_reward.default, (*args, 0.9, 0.8, 1.0, "linear", 1e-6))


def test_gradcheck_through_fused_op():
    pe, pb, targets = _inputs(3, 4, 5, torch.float64)
    pe.requires_grad_()
    pb.requires_grad_()
    targets.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, t: ops.cdred_reward(a, b, t, 0.9, 0.8, 1.0, "exp"), (pe, pb, targets))
    assert torch.autograd.gradcheck(lambda a, t: ops.moment_bonus(a, t, 0.6), (pe, targets))


def test_torch_compile_fullgraph():
    pe, pb, targets = _inputs(5, 32, 16)

    @torch.compile(fullgraph=True)
    def reward(a, b, t):
        return ops.cdred_reward(a, b, t, 0.9, 0.8, 1.0, "linear") + ops.moment_bonus(a, t)

    expected = ops.cdred_reward(pe, pb, targets, impl="reference") + ops.moment_bonus(pe, targets, impl="reference")
    torch.testing.assert_close(reward(pe, pb, targets), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bad inputs
BAD_CASES = [
    # (description, kwargs-mutator, exception type, message fragment)
    ("pred 1-D", lambda a: a.update(pred_expert=a["pred_expert"][0]), ValueError, "pred_expert"),
    ("targets 2-D", lambda a: a.update(targets=a["targets"][0]), ValueError, "targets"),
    ("N mismatch", lambda a: a.update(pred_behavioral=a["pred_behavioral"][:3]), ValueError, "pred_behavioral"),
    ("D mismatch", lambda a: a.update(pred_expert=a["pred_expert"][:, :2]), ValueError, "pred_expert"),
    ("int dtype", lambda a: a.update(targets=a["targets"].long()), TypeError, "targets"),
    ("mixed dtype", lambda a: a.update(pred_expert=a["pred_expert"].double()), TypeError, "pred_expert"),
    ("half dtype", lambda a: a.update(pred_behavioral=a["pred_behavioral"].half()), TypeError, "pred_behavioral"),
    ("K = 0", lambda a: a.update(targets=a["targets"][:0]), ValueError, "K >= 1"),
    ("alpha", lambda a: a.update(alpha=1.5), ValueError, "alpha"),
    ("zeta", lambda a: a.update(zeta=-0.1), ValueError, "zeta"),
    ("sigma", lambda a: a.update(sigma=float("nan")), ValueError, "sigma"),
    ("eps", lambda a: a.update(eps=-1.0), ValueError, "eps"),
    ("g", lambda a: a.update(g="sigmoid"), ValueError, "g"),
]


def _good_args():
    pe, pb, t = _inputs(3, 6, 4)
    return dict(pred_expert=pe, pred_behavioral=pb, targets=t, alpha=0.9, zeta=0.8, sigma=1.0, g="linear", eps=1e-6)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("desc,mutate,exc,fragment", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_inputs_raise_named_errors_in_wrapper(desc, mutate, exc, fragment, impl):
    args = _good_args()
    mutate(args)
    with pytest.raises(exc, match=fragment):
        ops.cdred_reward(**args, impl=impl)


@pytest.mark.parametrize("desc,mutate,exc,fragment", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_inputs_raise_named_errors_in_kernel(desc, mutate, exc, fragment):
    """The C++ kernel checks its inputs itself (direct torch.ops calls skip the wrapper)."""
    args = _good_args()
    mutate(args)
    with pytest.raises(exc, match=fragment):
        torch.ops.cdred_fast.cdred_reward.default(*args.values())


def test_bad_impl_and_non_tensor():
    pe, pb, t = _inputs(2, 3, 4)
    with pytest.raises(ValueError, match="impl"):
        ops.moment_bonus(pe, t, impl="cuda")
    with pytest.raises(TypeError, match="pred"):
        ops.moment_bonus(pe.numpy(), t)


@pytest.mark.cuda
@needs_cuda
def test_mixed_devices_rejected():
    pe, pb, t = _inputs(2, 3, 4)
    with pytest.raises(ValueError, match="pred_expert"):
        ops.cdred_reward(pe, pb.cuda(), t.cuda())
    with pytest.raises(ValueError, match="pred_expert"):
        torch.ops.cdred_fast.cdred_reward.default(pe, pb.cuda(), t.cuda(), 0.9, 0.8, 1.0, "linear", 1e-6)


def test_reference_matches_spec_line_by_line_for_moments():
    _, _, t = _inputs(4, 3, 2, torch.float64)
    mu, b2, var = reference.target_moments(t)
    torch.testing.assert_close(var, t.var(0, unbiased=False))
