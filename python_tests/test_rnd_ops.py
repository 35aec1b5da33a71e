"""Fused ensemble_mlp / rnd_reward against the reference (SPEC section 2 networks, section 0 Block)."""

import math

import pytest
import torch
import torch.nn.functional as F
from testing_utils import DEVICES

from cdred_fast import ops, reference
from cdred_fast.config import CDREDConfig
from cdred_fast.layers import Ensemble, mlp, target_init_
from cdred_fast.reward import CDREDReward

TOL = {torch.float32: dict(rtol=1e-4, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-11)}


def _params(E, dims, dtype=torch.float64, device="cpu", seed=0):
    """Stacked parameters of E MLPs with layer sizes dims = [I, h1, ..., out]; activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    ws, bs, lws, lbs = [], [], [], []
    for l in range(len(dims) - 1):
        i, o = dims[l], dims[l + 1]
        ws.append(mk(E, o, i) / math.sqrt(i))
        bs.append(0.1 * mk(E, o))
        if l < len(dims) - 2:
            lws.append(1.0 + 0.2 * mk(E, o))
            lbs.append(0.3 * mk(E, o))
    cast = lambda ts: [t.to(dtype=dtype, device=device) for t in ts]
    return cast(ws), cast(bs), cast(lws), cast(lbs)


def _rows(*shape, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


# (E, N, dims): layers = len(dims) - 1
SHAPES = [
    (1, 1, [5, 3]),  # one plain Linear, no hidden layer
    (5, 37, [9, 7, 1]),  # hidden 7, out 1
    (5, 513, [13, 512, 256]),  # hidden 512, out 256, N not a multiple of any width
    (1, 37, [6, 1, 1, 1, 4]),  # 4 layers of hidden size 1 (LayerNorm of one value: beta)
    (2, 37, [20, 7, 512, 7, 256]),  # 4 layers, mixed widths
    (5, 0, [4, 8, 3]),  # empty batch
]
SHARED = ["none", "A=1", "A=3"]  # x_shared: none, I_s = I - 1 (one row feature), I_s = I - 3


def _case(E, N, dims, x_mode, shared, dtype, device):
    ws, bs, lws, lbs = _params(E, dims, dtype, device, seed=E * 100 + N + len(dims))
    I = dims[0]
    A = {"none": I, "A=1": 1, "A=3": min(3, I - 1)}[shared]
    x = _rows(*((E,) if x_mode == "per-member" else ()), N, A, dtype=dtype, device=device, seed=N + A)
    xs = None if shared == "none" else _rows(I - A, dtype=dtype, device=device, seed=7)
    return x, ws, bs, lws, lbs, xs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", SHARED)
@pytest.mark.parametrize("x_mode", ["shared-rows", "per-member"])
@pytest.mark.parametrize("E,N,dims", SHAPES, ids=[f"E{e}-N{n}-{'x'.join(map(str, d))}" for e, n, d in SHAPES])
def test_ensemble_mlp_matches_reference(E, N, dims, x_mode, shared, dtype, device):
    if shared != "none" and dims[0] < 2:
        pytest.skip("needs I >= 2")
    x, ws, bs, lws, lbs, xs = _case(E, N, dims, x_mode, shared, dtype, device)
    fused = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs)
    ref = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs, impl="reference")
    assert fused.shape == (E, N, dims[-1]) and fused.dtype == dtype and fused.device == x.device
    torch.testing.assert_close(fused, ref, **TOL[dtype])
    if xs is not None:  # the documented meaning of x_shared
        full = torch.cat([xs.expand(*x.shape[:-1], xs.shape[0]), x], -1)
        torch.testing.assert_close(fused, ops.ensemble_mlp(full, ws, bs, lws, lbs, impl="reference"), **TOL[dtype])


def test_reference_equals_layers_ensemble():
    """reference.ensemble_mlp is the Block stack of layers.mlp / layers.Ensemble, member by member."""
    torch.manual_seed(3)
    members = [target_init_(mlp(10, [16, 12], 6)) for _ in range(3)]
    for m in members:  # non-trivial LayerNorm affine
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.data.normal_(1.0, 0.3)
                mod.bias.data.normal_(0.0, 0.3)
    ens = Ensemble(members)
    x = torch.randn(9, 10)
    params = _stack_sequentials(members)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in members])
        torch.testing.assert_close(ens(x), expected)
        for impl in ("reference", "fused"):
            torch.testing.assert_close(ops.ensemble_mlp(x, *params, impl=impl), expected, rtol=1e-5, atol=1e-5)


def _stack_sequentials(members):
    """(weights, biases, ln_weights, ln_biases, ln_eps) of nn.Sequential MLPs built by layers.mlp."""
    depth = len(members[0])
    ws = [torch.stack([m[l].weight for m in members]) for l in range(depth)]
    bs = [torch.stack([m[l].bias for m in members]) for l in range(depth)]
    lws = [torch.stack([m[l].ln.weight for m in members]) for l in range(depth - 1)]
    lbs = [torch.stack([m[l].ln.bias for m in members]) for l in range(depth - 1)]
    return ws, bs, lws, lbs, members[0][0].ln.eps


def _stack_ensemble(ens: Ensemble):
    layers = list(ens.layers)
    return (
        [l.weight for l in layers],
        [l.bias for l in layers],
        [l.ln_weight for l in layers[:-1]],
        [l.ln_bias for l in layers[:-1]],
        layers[0].ln_eps,
    )


@pytest.mark.parametrize("E,N,dims", [(5, 513, [518, 64, 256]), (2, 37, [9, 300, 300, 5])])
def test_parity_across_thread_counts(E, N, dims, threads):
    for x_mode, shared in (("shared-rows", "none"), ("per-member", "A=3"), ("shared-rows", "A=1")):
        x, ws, bs, lws, lbs, xs = _case(E, N, dims, x_mode, shared, torch.float32, "cpu")
        torch.testing.assert_close(
            ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs),
            ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs, impl="reference"),
            **TOL[torch.float32],
        )


def test_non_contiguous_inputs():
    E, N, dims = 3, 11, [7, 9, 5]
    x, ws, bs, lws, lbs, xs = _case(E, N, dims, "shared-rows", "A=3", torch.float32, "cpu")
    ws_nc = [w.transpose(1, 2).contiguous().transpose(1, 2) for w in ws]
    x_nc = x.t().contiguous().t()
    assert not ws_nc[0].is_contiguous() and not x_nc.is_contiguous()
    torch.testing.assert_close(
        ops.ensemble_mlp(x_nc, ws_nc, bs, lws, lbs, 1e-5, xs),
        ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs, impl="reference"),
        **TOL[torch.float32],
    )


# ----------------------------------------------------------------------------- Mish / exp / LayerNorm
def _ulps(got, ref64, dtype):
    """|got - ref64| in units of the ulp of ref64 rounded to dtype."""
    r = ref64.to(dtype).abs()
    ulp = (torch.nextafter(r, torch.full_like(r, math.inf)) - r).double()
    return (got.double() - ref64).abs() / ulp


def _kernel_mish(y):
    """Mish as the fused kernels compute it (the shared LayerNorm -> Mish row kernel of
    csrc/common): rows of zeros normalise to exactly 0, so the output is Mish(beta), with
    ``y`` laid out as the per-member ``beta [E, D]``."""
    n = y.numel()
    D = min(max(n, 1), 1024)
    beta = torch.cat([y.flatten(), y.new_zeros((-n) % D)]).view(-1, D)
    x = y.new_zeros(beta.shape[0], 1, D)
    out = torch.ops.cdred_fast.layernorm_mish(x, torch.ones_like(beta), beta, 1e-5)[0]
    return out.flatten()[:n].view_as(y)


def _mish_grid(dtype, device="cpu"):
    dense = torch.linspace(-87.0, 30.0, 400_001, dtype=torch.float64)  # step ~3e-4 through the interesting range
    wide = torch.cat([torch.logspace(-30, 38 if dtype == torch.float32 else 300, 2001, dtype=torch.float64)])
    grid = torch.cat([dense, wide, -wide, torch.tensor([0.0, -0.0, 20.0, -20.0, 19.999, 20.001])])
    return grid.to(dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mish_accuracy_on_dense_grid(dtype, device):
    """The epilogue's Mish against torch.nn.functional.mish evaluated in float64.

    float32: <= 6 ulp where |Mish| > 1e-30 (4.5 measured on the CPU; F.mish in float32
    itself is 2.9 ulp off; 8 allowed on CUDA, whose expf is <= 2 ulp), abs error
    < 1.2e-36 below that (the exp underflow);
    float64: relative error <= 1e-14 where |Mish| > 1e-290.
    """
    y = _mish_grid(dtype, device)
    got = _kernel_mish(y).cpu()
    y = y.cpu()
    exact = F.mish(y.double())
    tol = dict(rtol=4e-6, atol=1e-35) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-300)
    torch.testing.assert_close(got, F.mish(y), **tol)  # torch's own Mish in the same dtype
    big = exact.abs() > (1e-30 if dtype == torch.float32 else 1e-290)
    if dtype == torch.float32:
        ulps = _ulps(got[big], exact[big], dtype)
        bound = 6 if device == "cpu" else 8  # the device's expf is <= 2 ulp, the CPU polynomial <= 1.01
        assert ulps.max() <= bound, (ulps.max(), y[big][ulps.argmax()])
        assert (got[~big].double() - exact[~big]).abs().max() < 1.2e-36
    else:
        rel = (got[big] - exact[big]).abs() / exact[big].abs()
        assert rel.max() <= 1e-14, (rel.max(), y[big][rel.argmax()])
    # large |y|: Mish(y) = y above the softplus threshold, -> -0 far below
    assert torch.equal(got[y > 20], y[y > 20])
    assert (got[y < (-110 if dtype == torch.float32 else -750)] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mish_special_values(dtype, device):
    y = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0], dtype=dtype, device=device)
    got = _kernel_mish(y)
    torch.testing.assert_close(got, F.mish(y), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epilogue_mish_through_zero_variance_layernorm(dtype, device):
    """Inside the op: a zero first Linear gives zero-variance rows, LayerNorm returns exactly
    beta, the epilogue's Mish is applied, and an identity last Linear returns Mish(beta)."""
    E, H = 256, 64
    grid = torch.cat(
        [
            torch.linspace(-90, 30, E * H - 8, dtype=torch.float64),
            torch.tensor([1e4, -1e4, 1e30, -1e30, 20.0, -20.0, 0.0, 1e-20], dtype=torch.float64),
        ]
    )
    beta = grid.view(E, H).to(dtype=dtype, device=device)
    opts = dict(dtype=dtype, device=device)
    ws = [torch.zeros(E, H, 3, **opts), torch.eye(H, **opts).expand(E, H, H).contiguous()]
    bs = [torch.zeros(E, H, **opts), torch.zeros(E, H, **opts)]
    lws, lbs = [torch.randn(E, H, **opts)], [beta]
    x = _rows(2, 3, **opts)
    got = ops.ensemble_mlp(x, ws, bs, lws, lbs)  # [E, 2, H]
    expected = F.mish(beta.double()).to(dtype).unsqueeze(1).expand(E, 2, H)
    tol = dict(rtol=4e-6, atol=1e-35) if dtype == torch.float32 else dict(rtol=1e-14, atol=1e-300)
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(ops.ensemble_mlp(x, ws, bs, lws, lbs, impl="reference"), expected, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layernorm_zero_variance_rows(dtype, device):
    """Constant (non-zero) pre-activation rows: LayerNorm gives exactly beta, like the reference."""
    E, N, I, H, O = 3, 9, 5, 16, 4
    ws, bs, lws, lbs = _params(E, [I, H, O], dtype, device)
    ws[0] = ws[0][:, :1, :].expand(E, H, I).contiguous()  # every hidden unit sees the same weights
    bs[0] = bs[0][:, :1].expand(E, H).contiguous()
    x = _rows(N, I, dtype=dtype, device=device)
    x[0] = 0.0
    fused = ops.ensemble_mlp(x, ws, bs, lws, lbs)
    ref = ops.ensemble_mlp(x, ws, bs, lws, lbs, impl="reference")
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, ref, **TOL[dtype])
    expected = torch.einsum("eoh,eh->eo", ws[1], F.mish(lbs[0])) + bs[1]  # hidden = Mish(beta) for every row
    torch.testing.assert_close(fused, expected.unsqueeze(1).expand(E, N, O), **TOL[dtype])


def test_layernorm_large_mean_small_spread():
    """|mean| >> std: the shifted one-pass moments keep the variance (float32)."""
    E, N, I, H, O = 2, 7, 4, 64, 3
    ws, bs, lws, lbs = _params(E, [I, H, O], torch.float64)
    bs[0] = bs[0] + 1e3  # pre-activations ~1e3 +- 1
    args = ([w.float() for w in ws], [b.float() for b in bs], [w.float() for w in lws], [b.float() for b in lbs])
    x = _rows(N, I)
    fused = ops.ensemble_mlp(x.float(), *args)
    ref64 = ops.ensemble_mlp(x, ws, bs, lws, lbs, impl="reference")
    ref32 = ops.ensemble_mlp(x.float(), *args, impl="reference")
    err_fused = (fused.double() - ref64).abs().max()
    err_ref = (ref32.double() - ref64).abs().max()
    assert err_fused <= 3 * err_ref + 1e-5, (err_fused, err_ref)


# ----------------------------------------------------------------------------- autograd, opcheck, compile
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_grad", [False, True])
@pytest.mark.parametrize("x_mode,shared", [("shared-rows", "none"), ("per-member", "A=3"), ("shared-rows", "A=1")])
def test_opcheck(x_mode, shared, with_grad, device):
    x, ws, bs, lws, lbs, xs = _case(3, 5, [6, 4, 4, 2], x_mode, shared, torch.float64, device)
    if with_grad:
        for t in [x, *ws, *bs, *lws, *lbs] + ([xs] if xs is not None else []):
            t.requires_grad_()
    torch.library.opcheck(torch.ops.cdred_fast.ensemble_mlp.default, (x, ws, bs, lws, lbs, 1e-5, xs))


@pytest.mark.parametrize("x_mode,shared", [("shared-rows", "none"), ("per-member", "A=1"), ("shared-rows", "A=3")])
@pytest.mark.parametrize("dims", [[4, 3, 2], [5, 1, 3], [3, 2]])
def test_gradcheck(x_mode, shared, dims):
    x, ws, bs, lws, lbs, xs = _case(2, 3, dims, x_mode, shared, torch.float64, "cpu")
    L, nh = len(ws), len(lws)
    flat = [x, *ws, *bs, *lws, *lbs] + ([xs] if xs is not None else [])
    for t in flat:
        t.requires_grad_()

    def fn(*ts):
        x, rest = ts[0], ts[1:]
        w, b, lw, lb = rest[:L], rest[L : 2 * L], rest[2 * L : 2 * L + nh], rest[2 * L + nh : 2 * L + 2 * nh]
        s = rest[2 * L + 2 * nh] if xs is not None else None
        return ops.ensemble_mlp(x, list(w), list(b), list(lw), list(lb), 1e-5, s)

    assert torch.autograd.gradcheck(fn, tuple(flat))


def test_gradients_match_reference_for_predictor_loss():
    """The training use: gradients w.r.t. x and the predictors' parameters, targets constant."""
    E, N, dims = 2, 17, [12, 32, 32, 8]
    x, ws, bs, lws, lbs, _ = _case(E, N, dims, "shared-rows", "none", torch.float32, "cpu")
    target = _rows(E, N, dims[-1], dtype=torch.float32)
    grads = {}
    for impl in ("fused", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in [x, *ws, *bs, *lws, *lbs]]
        xl, rest = leaves[0], leaves[1:]
        L, nh = len(ws), len(lws)
        out = ops.ensemble_mlp(xl, rest[:L], rest[L : 2 * L], rest[2 * L : 2 * L + nh], rest[2 * L + nh :], impl=impl)
        (out - target).pow(2).mean().backward()
        grads[impl] = [t.grad for t in leaves]
    for a, b in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Only x requires grad: parameters get none and nothing fails.
    xl = x.detach().clone().requires_grad_()
    ops.ensemble_mlp(xl, ws, bs, lws, lbs).sum().backward()
    assert xl.grad is not None and all(w.grad is None for w in ws)


def test_torch_compile_fullgraph():
    x, ws, bs, lws, lbs, xs = _case(3, 16, [8, 12, 4], "shared-rows", "A=3", torch.float32, "cpu")
    pw, pb, plw, plb = _params(2, [8, 20, 20, 4], torch.float32)

    @torch.compile(fullgraph=True)
    def f(x, xs):
        t = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs)
        r = ops.rnd_reward(x, (ws, bs, lws, lbs), (pw, pb, plw, plb), x_shared=xs)
        return t.sum(-1), r

    t, r = f(x, xs)
    torch.testing.assert_close(
        t, ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs, impl="reference").sum(-1), **TOL[torch.float32]
    )
    ref = ops.rnd_reward(x, (ws, bs, lws, lbs), (pw, pb, plw, plb), x_shared=xs, impl="reference")
    torch.testing.assert_close(r, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- rnd_reward
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", ["none", "A=3"])
@pytest.mark.parametrize("g", ["linear", "exp"])
def test_rnd_reward_matches_reference(shared, g, device):
    K, N, dims_t, dims_p = 5, 37, [11, 24, 24, 6], [11, 40, 40, 40, 6]
    x, tw, tb, tlw, tlb, xs = _case(K, N, dims_t, "shared-rows", shared, torch.float32, device)
    pw, pb, plw, plb = _params(2, dims_p, torch.float32, device, seed=9)
    args = (x, (tw, tb, tlw, tlb), (pw, pb, plw, plb, 1e-5), 0.9, 0.8, 0.1 if g == "exp" else 1.0, g, 1e-6, xs)
    fused = ops.rnd_reward(*args)
    ref = ops.rnd_reward(*args, impl="reference")
    assert fused.shape == (N,)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    # = the composition of the three ops
    full = x if xs is None else torch.cat([xs.expand(N, -1), x], -1)
    t = reference.ensemble_mlp(full, tw, tb, tlw, tlb)
    p = reference.ensemble_mlp(full, pw, pb, plw, plb)
    torch.testing.assert_close(
        fused, reference.cdred_reward(p[0], p[1], t, 0.9, 0.8, args[5], g, 1e-6), rtol=1e-4, atol=1e-4
    )


def test_rnd_reward_equals_cdred_reward_module():
    """CDREDReward's integration: stacked parameters of its modules -> ops.rnd_reward."""
    cfg = CDREDConfig(num_targets=3, rnd_dim=8, rnd_target_hidden=(16, 16), rnd_predictor_hidden=(24, 24, 24))
    torch.manual_seed(0)
    model = CDREDReward(cfg, in_dim=10)
    for p in model.predictor_parameters():  # trained-looking predictors (the init has zero biases)
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(33, 10)
    targets = _stack_ensemble(model.target_nets)
    stacked = _stack_sequentials([model.expert_predictor, model.behavioral_predictor])  # torch.stack: copies
    pair = model.predictor_params()  # unsqueeze(0) views of each predictor's parameters
    assert pair[0][0][1].data_ptr() == model.expert_predictor[1].weight.data_ptr()
    cfg_args = (cfg.alpha, cfg.zeta, cfg.sigma, cfg.g, cfg.reward_eps)
    with torch.no_grad():
        expected = model(x, impl="reference")
        for impl in ("fused", "reference"):
            for preds in (stacked, pair):
                got = ops.rnd_reward(x, targets, preds, *cfg_args, impl=impl)
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        # planning form: x = [z ; a] with one z
        z, a = torch.randn(7), torch.randn(33, 3)
        expected = model(torch.cat([z.expand(33, -1), a], -1), impl="reference")
        for preds in (stacked, pair):
            got = ops.rnd_reward(a, targets, preds, *cfg_args, x_shared=z)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # training form: the predictor loss through the fused op reaches the module's parameters
    idx = torch.randint(cfg.num_targets, (33,))
    loss_ref = model._single_loss(model.expert_predictor, x, None, idx).mean()
    grads_ref = torch.autograd.grad(loss_ref, list(model.expert_predictor.parameters()))
    with torch.no_grad():
        chosen = ops.ensemble_mlp(x, *targets)[idx, torch.arange(33)]
    pred = ops.ensemble_mlp(x, *CDREDReward._mlp_params(model.expert_predictor))[0]
    loss = (pred - chosen).pow(2).mean(dim=-1).mean()
    grads = torch.autograd.grad(loss, list(model.expert_predictor.parameters()))
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- ensemble_reward (targets + reward, tiled)
# (K, N, dims): N spans several 512 KB tiles at D = 256 (102 rows per tile in float32, 51 in float64),
# a one-layer network (its last Linear reads x itself), K = 1 (every coordinate degenerate), N = 0.
ER_SHAPES = [
    (5, 300, [10, 64, 256]),
    (5, 513, [13, 512, 512, 256]),
    (3, 37, [9, 4]),
    (1, 150, [7, 16, 256]),
    (2, 0, [5, 8, 3]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_mode,shared", [("shared-rows", "none"), ("shared-rows", "A=3"), ("per-member", "none")])
@pytest.mark.parametrize("K,N,dims", ER_SHAPES)
def test_ensemble_reward_equals_targets_then_reward(K, N, dims, x_mode, shared, dtype, device):
    x, ws, bs, lws, lbs, xs = _case(K, N, dims, x_mode, shared, dtype, device)
    D = dims[-1]
    pe, pb = _rows(N, D, dtype=dtype, device=device, seed=11), _rows(N, D, dtype=dtype, device=device, seed=12)
    for g in ("linear", "exp"):
        args = (0.9, 0.8, 0.5, g, 1e-6)
        got = torch.ops.cdred_fast.ensemble_reward(x, ws, bs, lws, lbs, 1e-5, pe, pb, *args, xs)
        targets = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs)
        want = ops.cdred_reward(pe, pb, targets, *args)
        assert got.shape == (N,) and got.dtype == dtype
        torch.testing.assert_close(got, want, **TOL[dtype])
        ref = ops.cdred_reward(
            pe, pb, ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs, impl="reference"), *args, impl="reference"
        )
        torch.testing.assert_close(
            got, ref, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-4 if dtype == torch.float32 else 1e-9
        )


def test_rnd_reward_uses_the_tiled_op_only_without_gradients(monkeypatch):
    x, ws, bs, lws, lbs, xs = _case(3, 40, [8, 12, 4], "shared-rows", "A=3", torch.float32, "cpu")
    pw, pb, plw, plb = _params(2, [8, 20, 20, 4], torch.float32)
    calls = []
    real = torch.ops.cdred_fast.ensemble_reward.default

    class Spy:
        default = staticmethod(lambda *a: calls.append(1) or real(*a))

    monkeypatch.setattr(torch.ops.cdred_fast, "ensemble_reward", Spy, raising=False)
    r = ops.rnd_reward(x, (ws, bs, lws, lbs), (pw, pb, plw, plb), x_shared=xs)
    assert calls == [1]
    pw[0].requires_grad_(True)
    r_grad = ops.rnd_reward(x, (ws, bs, lws, lbs), (pw, pb, plw, plb), x_shared=xs)
    assert calls == [1] and r_grad.requires_grad
    # the two paths take the products in different orders (the tiled op vs the autograd ensemble),
    # so they agree to this file's float32 op tolerance, not bit for bit: 1.2e-6 apart (6.6e-5
    # relative) on an Intel Xeon with AMX, whose MKL products round differently from AMD's
    torch.testing.assert_close(r, r_grad.detach(), **TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_ensemble_reward_opcheck_and_no_gradient(device):
    x, ws, bs, lws, lbs, xs = _case(3, 130, [8, 12, 4], "shared-rows", "A=3", torch.float32, device)
    pe, pb = (
        _rows(130, 4, dtype=torch.float32, device=device, seed=3),
        _rows(130, 4, dtype=torch.float32, device=device, seed=4),
    )
    args = (x, ws, bs, lws, lbs, 1e-5, pe, pb, 0.9, 0.8, 1.0, "linear", 1e-6, xs)
    torch.library.opcheck(
        torch.ops.cdred_fast.ensemble_reward.default, args, test_utils=("test_schema", "test_faketensor")
    )
    out = torch.ops.cdred_fast.ensemble_reward(
        x, ws, bs, lws, lbs, 1e-5, pe.requires_grad_(True), pb, 0.9, 0.8, 1.0, "linear", 1e-6, xs
    )
    with pytest.raises(RuntimeError, match="no-grad planning reward"):
        out.sum().backward()


def test_ensemble_reward_bad_inputs_named():
    x, ws, bs, lws, lbs, xs = _case(3, 20, [8, 12, 4], "shared-rows", "none", torch.float32, "cpu")
    pe, pb = torch.zeros(20, 4), torch.zeros(20, 4)
    op = torch.ops.cdred_fast.ensemble_reward.default
    good = [x, ws, bs, lws, lbs, 1e-5, pe, pb, 0.9, 0.8, 1.0, "linear", 1e-6, None]

    def call(**changes):
        names = [
            "x",
            "weights",
            "biases",
            "ln_weights",
            "ln_biases",
            "ln_eps",
            "pred_expert",
            "pred_behavioral",
            "alpha",
            "zeta",
            "sigma",
            "g",
            "eps",
            "x_shared",
        ]
        args = [changes.get(n, v) for n, v in zip(names, good)]
        return op(*args)

    with pytest.raises(
        ValueError, match=r"ensemble_reward: argument 'pred_expert' must have shape \[N, D\] = \[20, 4\]"
    ):
        call(pred_expert=torch.zeros(20, 5))
    with pytest.raises(TypeError, match="ensemble_reward: argument 'pred_behavioral' has dtype"):
        call(pred_behavioral=pb.double())
    with pytest.raises(ValueError, match="ensemble_reward: argument 'alpha' must be in"):
        call(alpha=1.5)
    with pytest.raises(ValueError, match="ensemble_reward: argument 'g' must be"):
        call(g="tanh")
    with pytest.raises(ValueError, match=r"ensemble_reward: argument 'weights\[1\]' has shape"):
        call(weights=[ws[0], ws[1][:, :, :5]])
