"""Fused layernorm_mish (forward + backward) against the reference (SPEC section 0 Block tail),
and its use in the world model's Blocks and in the predictors' training path."""

import math

import pytest
import torch
import torch.nn.functional as F
from testing_utils import DEVICES, needs_cuda
from torch import nn

from cdred_fast import ops, reference
from cdred_fast.layers import Ensemble, NormedLinear, mlp, use_kernels

TOL = {torch.float32: dict(rtol=1e-4, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-11)}

# (E, M, D): D = 1 (LayerNorm of one value), M below / at / above / not a multiple of the
# 64-row chunk of the grad_gamma sums and of the 8-warp CUDA blocks, wide rows, empty batch.
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 64, 33), (2, 129, 7), (5, 130, 512), (1, 70, 1024), (3, 0, 4)]


def _case(E, M, D, dtype, device, seed=0, scale=3.0, shift=1.0):
    g = torch.Generator().manual_seed(seed + 17 * M + D)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x = mk(E, M, D) * scale + shift
    gamma = 1.0 + 0.5 * mk(E, D)
    beta = 0.5 * mk(E, D)
    gy = mk(E, M, D)
    return [t.to(dtype=dtype, device=device) for t in (x, gamma, beta, gy)]


def _grads(fn, x, gamma, beta, gy):
    x, gamma, beta = (t.detach().requires_grad_(True) for t in (x, gamma, beta))
    y = fn(x, gamma, beta)
    return (y.detach(), *torch.autograd.grad(y, (x, gamma, beta), gy))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("E,M,D", SHAPES)
def test_forward_and_backward_match_reference(E, M, D, dtype, device):
    x, gamma, beta, gy = _case(E, M, D, dtype, device)
    y, mean, rstd = torch.ops.cdred_fast.layernorm_mish(x, gamma, beta, 1e-5)
    y_ref, mean_ref, rstd_ref = reference.layernorm_mish(x, gamma, beta, 1e-5)
    for got, want in ((y, y_ref), (mean, mean_ref), (rstd, rstd_ref)):
        assert got.dtype == dtype and got.device.type == device
        torch.testing.assert_close(got, want, **TOL[dtype])
    fused = _grads(lambda *a: ops.layernorm_mish(*a), x, gamma, beta, gy)
    ref = _grads(lambda *a: ops.layernorm_mish(*a, impl="reference"), x, gamma, beta, gy)
    for name, got, want in zip(("y", "grad_x", "grad_gamma", "grad_beta"), fused, ref):
        # grad_gamma / grad_beta sum M rows: the tolerance grows with sqrt(M)
        scale = 1.0 if name in ("y", "grad_x") else max(1.0, math.sqrt(M))
        tol = {k: v * scale for k, v in TOL[dtype].items()}
        torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f"{name}: {m}")
    if M == 0:
        assert torch.equal(fused[2], torch.zeros_like(gamma)) and torch.equal(fused[3], torch.zeros_like(beta))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_variance_rows(dtype, device):
    """Constant rows (all x equal, also K = 1-like degenerate Linears): xhat = 0 exactly, y = Mish(beta),
    and the gradients are finite and equal PyTorch's LayerNorm + Mish ones (rstd = 1/sqrt(eps))."""
    E, M, D = 2, 5, 16
    x, gamma, beta, gy = _case(E, M, D, dtype, device)
    x = torch.full_like(x, 3.25)
    x[1, 2] = torch.linspace(-1, 1, D, dtype=dtype, device=device)  # one ordinary row among them
    y, mean, rstd = torch.ops.cdred_fast.layernorm_mish(x, gamma, beta, 1e-5)
    const = torch.ones(E, M, dtype=torch.bool, device=device)
    const[1, 2] = False
    assert torch.equal(mean[const], torch.full_like(mean[const], 3.25))
    # every constant row gives the same output, Mish(beta)
    assert torch.equal(y[0], y[0, :1].expand(M, D))
    torch.testing.assert_close(y[0], F.mish(beta[0]).expand(M, D), **TOL[dtype])
    fused = _grads(lambda *a: ops.layernorm_mish(*a), x, gamma, beta, gy)
    ref = _grads(lambda *a: ops.layernorm_mish(*a, impl="reference"), x, gamma, beta, gy)
    for got, want in zip(fused, ref):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **{k: 10 * v for k, v in TOL[dtype].items()})


@pytest.mark.parametrize("shift,spread", [(1e4, 1.0), (1e3, 0.1)])
def test_large_mean_small_spread_float32(shift, spread):
    """Rows far from 0 (mean / std = 1e4): float32 accuracy against float64 on the same (float32-
    rounded) inputs. The shifted one-pass sums keep the kernel at least as accurate as PyTorch's own
    float32 LayerNorm + Mish on every output (measured: 2-4x more accurate)."""
    x, gamma, beta, gy = _case(2, 33, 64, torch.float64, "cpu", scale=spread, shift=shift)
    x32, g32, b32, gy32 = (t.float() for t in (x, gamma, beta, gy))
    exact = _grads(lambda *a: ops.layernorm_mish(*a, impl="reference"), *(t.double() for t in (x32, g32, b32, gy32)))
    fused = _grads(lambda *a: ops.layernorm_mish(*a), x32, g32, b32, gy32)
    torch32 = _grads(lambda *a: ops.layernorm_mish(*a, impl="reference"), x32, g32, b32, gy32)
    for name, f, t, e in zip(("y", "grad_x", "grad_gamma", "grad_beta"), fused, torch32, exact):
        err_fused, err_torch = (f.double() - e).abs().max(), (t.double() - e).abs().max()
        assert err_fused <= err_torch, (name, err_fused.item(), err_torch.item())


def _mish_grad_via_op(u: torch.Tensor) -> torch.Tensor:
    """Mish'(u) from the fused backward: with x = 0 rows xhat = 0, so y = Mish(beta) and, for one row
    with grad_y = 1, grad_beta = Mish'(beta)."""
    D = u.numel()
    x = torch.zeros(1, 1, D, dtype=u.dtype, device=u.device)
    gamma = torch.ones(1, D, dtype=u.dtype, device=u.device)
    y, mean, rstd = torch.ops.cdred_fast.layernorm_mish(x, gamma, u.view(1, D), 1e-5)
    _, _, grad_beta = torch.ops.cdred_fast.layernorm_mish_backward(
        torch.ones_like(x), x, mean, rstd, gamma, u.view(1, D)
    )
    return grad_beta.view(-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mish_derivative_accuracy(dtype, device):
    """Mish' (one exp, common/ln_mish_math.h) against the float64 autograd derivative of F.mish on a dense grid:
    float32 absolute error <= 2e-6 (|Mish'| <= 1.1, so a few ulp), float64 <= 1e-14."""
    u = torch.cat([torch.linspace(-90, 30, 200001, dtype=torch.float64), torch.tensor([-1e30, 1e30, 0.0])])
    u = u.to(dtype)
    got = _mish_grad_via_op(u.to(device)).cpu().double()
    u64 = u.double().requires_grad_(True)
    (exact,) = torch.autograd.grad(F.mish(u64).sum(), u64)
    err = (got - exact).abs()
    assert err.max() <= (2e-6 if dtype == torch.float32 else 1e-14), (err.max(), u[err.argmax()])
    # PyTorch's own derivative in the same dtype agrees too
    ut = u.clone().requires_grad_(True)
    (torch_grad,) = torch.autograd.grad(F.mish(ut).sum(), ut)
    torch.testing.assert_close(got.to(dtype), torch_grad, rtol=0, atol=4e-6 if dtype == torch.float32 else 1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_mish_derivative_special_values(device):
    u = torch.tensor([math.inf, -math.inf, math.nan, 25.0, -200.0], device=device)
    got = _mish_grad_via_op(u).cpu()
    assert got[0] == 1 and math.isnan(got[1]) and math.isnan(got[2]) and got[3] == 1 and got[4] == 0


def test_results_do_not_depend_on_thread_count():
    """grad_gamma / grad_beta are summed per 64-row chunk, then over chunks in order: bitwise the
    same results with 1 and 2 threads (and every output of the forward too)."""
    x, gamma, beta, gy = _case(3, 1000, 96, torch.float32, "cpu")
    old = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            fwd = torch.ops.cdred_fast.layernorm_mish(x, gamma, beta, 1e-5)
            bwd = torch.ops.cdred_fast.layernorm_mish_backward(gy, x, fwd[1], fwd[2], gamma, beta)
            results.append((*fwd, *bwd))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_non_contiguous_inputs():
    x, gamma, beta, gy = _case(2, 9, 6, torch.float64, "cpu")
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strides (.., 1, M)
    assert not xt.is_contiguous()
    got = _grads(lambda *a: ops.layernorm_mish(*a), xt, gamma, beta, gy.transpose(1, 2).contiguous().transpose(1, 2))
    want = _grads(lambda *a: ops.layernorm_mish(*a, impl="reference"), x, gamma, beta, gy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


# ----------------------------------------------------------------------------- wrapper shapes, autograd, opcheck, compile
@pytest.mark.parametrize("layout", ["[D]", "[E, D]"])
def test_wrapper_layouts(layout):
    """gamma [D]: any x [..., D] (one network); gamma [E, D]: x [E, ..., D] (per-member affine)."""
    g = torch.Generator().manual_seed(0)
    if layout == "[D]":
        x, gamma, beta = torch.randn(4, 3, 8, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
        want = F.mish(F.layer_norm(x, (8,), gamma, beta, 1e-5))
    else:
        x, gamma, beta = (
            torch.randn(2, 3, 5, 8, generator=g),
            torch.randn(2, 8, generator=g),
            torch.randn(2, 8, generator=g),
        )
        want = torch.stack([F.mish(F.layer_norm(x[e], (8,), gamma[e], beta[e], 1e-5)) for e in range(2)])
    for impl in ("fused", "reference"):
        got = ops.layernorm_mish(x, gamma, beta, impl=impl)
        assert got.shape == x.shape
        torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    x, gamma, beta, _ = _case(2, 6, 4, torch.float64, device)
    inputs = tuple(t.requires_grad_(True) for t in (x, gamma, beta))
    assert torch.autograd.gradcheck(lambda x, g, b: ops.layernorm_mish(x, g, b), inputs)
    # one network (gamma [D]) on a 2-D batch, through the wrapper's reshapes
    x2 = x[0].detach().requires_grad_(True)
    g2, b2 = gamma[0].detach().requires_grad_(True), beta[0].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, g, b: ops.layernorm_mish(x, g, b), (x2, g2, b2))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, gamma, beta, gy = _case(2, 70, 12, torch.float32, device)
    y, mean, rstd = torch.ops.cdred_fast.layernorm_mish(x, gamma, beta, 1e-5)
    torch.library.opcheck(torch.ops.cdred_fast.layernorm_mish.default, (x, gamma, beta, 1e-5))
    torch.library.opcheck(
        torch.ops.cdred_fast.layernorm_mish.default,
        (x.requires_grad_(True), gamma.requires_grad_(True), beta.requires_grad_(True), 1e-5),
    )
    torch.library.opcheck(
        torch.ops.cdred_fast.layernorm_mish_backward.default,
        (gy, x.detach(), mean, rstd, gamma.detach(), beta.detach()),
    )


def test_torch_compile_fullgraph_forward_and_backward():
    x, gamma, beta, gy = _case(3, 20, 16, torch.float32, "cpu")

    def f(x, gamma, beta):
        return ops.layernorm_mish(x, gamma, beta)

    compiled = torch.compile(f, fullgraph=True)
    got = _grads(compiled, x, gamma, beta, gy)
    want = _grads(lambda *a: ops.layernorm_mish(*a, impl="reference"), x, gamma, beta, gy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- bad inputs
def _good():
    x, gamma, beta, gy = _case(2, 5, 4, torch.float32, "cpu")
    return dict(x=x, gamma=gamma, beta=beta, eps=1e-5)


BAD = [
    ("x int", lambda a: a.update(x=a["x"].long()), TypeError, "x'? must be float32"),
    ("x half", lambda a: a.update(x=a["x"].half()), TypeError, "x'? must be float32"),
    ("gamma 3-D", lambda a: a.update(gamma=a["gamma"][None]), ValueError, "gamma"),
    ("gamma dtype", lambda a: a.update(gamma=a["gamma"].double()), TypeError, "gamma'? has dtype"),
    ("beta D", lambda a: a.update(beta=a["beta"][:, :3]), ValueError, "beta"),
    ("x D", lambda a: a.update(x=a["x"][..., :3]), ValueError, "x"),
    ("x E", lambda a: a.update(x=a["x"][:1]), ValueError, "x"),
    ("eps negative", lambda a: a.update(eps=-1.0), ValueError, "eps'? must be (a )?finite"),
    ("eps nan", lambda a: a.update(eps=math.nan), ValueError, "eps'? must be (a )?finite"),
]


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("desc,mutate,exc,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_wrapper(desc, mutate, exc, fragment, impl):
    a = _good()
    mutate(a)
    with pytest.raises(exc, match=fragment):
        ops.layernorm_mish(a["x"], a["gamma"], a["beta"], a["eps"], impl=impl)


@pytest.mark.parametrize("desc,mutate,exc,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_kernel(desc, mutate, exc, fragment):
    """Direct torch.ops calls are checked by the C++ kernel (x must be [E, M, D] there)."""
    a = _good()
    mutate(a)
    with pytest.raises(exc, match="cdred_fast::layernorm_mish: argument"):
        torch.ops.cdred_fast.layernorm_mish.default(a["x"], a["gamma"], a["beta"], a["eps"])


def test_bad_inputs_backward_kernel():
    x, gamma, beta, gy = _case(2, 5, 4, torch.float32, "cpu")
    y, mean, rstd = torch.ops.cdred_fast.layernorm_mish(x, gamma, beta, 1e-5)
    bwd = torch.ops.cdred_fast.layernorm_mish_backward.default
    with pytest.raises(ValueError, match="argument 'grad_y' has shape"):
        bwd(gy[:, :3], x, mean, rstd, gamma, beta)
    with pytest.raises(ValueError, match="argument 'mean' has shape"):
        bwd(gy, x, mean[:, :3], rstd, gamma, beta)
    with pytest.raises(TypeError, match="argument 'rstd' has dtype"):
        bwd(gy, x, mean, rstd.double(), gamma, beta)
    with pytest.raises(ValueError, match="argument 'beta' has shape"):
        bwd(gy, x, mean, rstd, gamma, beta[:1])


@pytest.mark.cuda
@needs_cuda
def test_mixed_devices_rejected():
    a = _good()
    with pytest.raises(ValueError, match="gamma is on"):
        ops.layernorm_mish(a["x"].cuda(), a["gamma"], a["beta"])
    with pytest.raises(ValueError, match="argument 'gamma' is on"):
        torch.ops.cdred_fast.layernorm_mish.default(a["x"].cuda(), a["gamma"], a["beta"], 1e-5)


@pytest.mark.cuda
@needs_cuda
def test_cuda_no_host_sync():
    x, gamma, beta, gy = _case(3, 200, 64, torch.float32, "cuda")
    x.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = ops.layernorm_mish(x, gamma, beta)
        (gx,) = torch.autograd.grad(y, (x,), gy)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(gx).all()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("E,M,D", [(1, 600_000, 4), (4097, 2, 4096)], ids=["rows", "columns"])
def test_cuda_past_the_grid_cap(E, M, D):
    """Sizes past the launch caps of csrc/block/cuda.cu (at most 65535 blocks), so each grid-stride
    loop runs more than once: E * M = 600000 rows for the one-warp-per-row forward and backward
    (65535 * 8 warps), and E * D = 16.8M columns for the column partials and sums (65535 * 256
    threads)."""
    assert E * M > 65535 * 8 or E * D > 65535 * 256
    x, gamma, beta, gy = _case(E, M, D, torch.float64, "cuda")
    fused = _grads(lambda *a: ops.layernorm_mish(*a), x, gamma, beta, gy)
    ref = _grads(lambda *a: ops.layernorm_mish(*a, impl="reference"), x, gamma, beta, gy)
    for name, got, want in zip(("y", "grad_x", "grad_gamma", "grad_beta"), fused, ref):
        scale = 1.0 if name in ("y", "grad_x") else max(1.0, math.sqrt(M))
        tol = {k: v * scale for k, v in TOL[torch.float64].items()}
        torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------- in the networks
def test_normed_linear_and_ensemble_fused_equal_pytorch():
    """A Block (and the stacked Q-style ensemble, with an index of members) with kernels="fused"
    gives PyTorch's LayerNorm + Mish outputs and parameter gradients."""
    torch.manual_seed(0)
    net = mlp(10, [32, 32], 7)
    ens = Ensemble([mlp(10, [32, 32], 7) for _ in range(4)])
    for module in (net, ens):
        for p in module.parameters():  # non-trivial LayerNorm affine
            p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(33, 10, dtype=torch.float32)
    idx = torch.tensor([3, 1])
    for module, call in ((net, lambda m: m(x)), (ens, lambda m: m(x, index=idx))):
        results = {}
        for kernels in ("reference", "fused"):
            use_kernels(module, kernels)
            module.zero_grad()
            out = call(module)
            out.square().sum().backward()
            results[kernels] = (out.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None])
        torch.testing.assert_close(results["fused"][0], results["reference"][0], **TOL[torch.float32])
        assert len(results["fused"][1]) == len(results["reference"][1]) > 0
        for g, w in zip(results["fused"][1], results["reference"][1]):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_reference_blocks_never_call_the_op(monkeypatch):
    """kernels="reference" (the default of a bare Block) stays pure PyTorch."""

    def boom(*a, **k):
        raise AssertionError("fused op called")

    monkeypatch.setattr(ops, "layernorm_mish", boom)
    net = mlp(6, [8], 3)
    assert all(m.kernels == "reference" for m in net.modules() if isinstance(m, NormedLinear))
    net(torch.randn(4, 6)).sum().backward()
    use_kernels(net, "fused")
    with pytest.raises(AssertionError, match="fused op called"):
        net(torch.randn(4, 6))


def test_non_mish_blocks_stay_pytorch():
    """Blocks with another activation (the SimNorm last Block of the encoder and dynamics) keep
    PyTorch's LayerNorm + activation; use_kernels rejects unknown choices."""
    block = NormedLinear(6, 8, act=nn.Tanh())
    use_kernels(block, "fused")
    x = torch.randn(3, 6)
    torch.testing.assert_close(block(x), torch.tanh(block.ln(F.linear(x, block.weight, block.bias))))
    with pytest.raises(ValueError, match="kernels must be one of"):
        use_kernels(block, "cuda")


def test_ensemble_mlp_training_path_uses_fused_block_backward(monkeypatch):
    """With parameters that require grad, ops.ensemble_mlp runs its trainable form (GEMMs + the
    fused layernorm_mish), which matches the one-shot fused forward and the reference gradients."""
    g = torch.Generator().manual_seed(3)
    dims = [9, 16, 16, 5]
    ws = [(torch.randn(2, o, i, generator=g) / math.sqrt(i)).requires_grad_(True) for i, o in zip(dims, dims[1:])]
    bs = [(0.1 * torch.randn(2, o, generator=g)).requires_grad_(True) for o in dims[1:]]
    lws = [(1 + 0.2 * torch.randn(2, o, generator=g)).requires_grad_(True) for o in dims[1:-1]]
    lbs = [(0.3 * torch.randn(2, o, generator=g)).requires_grad_(True) for o in dims[1:-1]]
    x = torch.randn(40, 9, generator=g)
    params = [*ws, *bs, *lws, *lbs]
    calls = []
    monkeypatch.setattr(ops.rnd, "_ensemble_mlp_trainable", _spy(ops.rnd._ensemble_mlp_trainable, calls))
    out = ops.ensemble_mlp(x, ws, bs, lws, lbs)
    assert calls, "the differentiable call did not take the trainable path"
    with torch.no_grad():
        one_shot = ops.ensemble_mlp(x, ws, bs, lws, lbs)
    assert len(calls) == 1  # no-grad calls keep the one-shot fused forward
    torch.testing.assert_close(out.detach(), one_shot, **TOL[torch.float32])
    gy = torch.randn_like(out)
    got = torch.autograd.grad(out, params, gy)
    want = torch.autograd.grad(ops.ensemble_mlp(x, ws, bs, lws, lbs, impl="reference"), params, gy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _spy(fn, calls):
    def wrapped(*a, **k):
        calls.append(1)
        return fn(*a, **k)

    return wrapped


def test_fused_blocks_compile_without_graph_breaks():
    """The Block's fused/unfused choice reads module constants only, so a network of fused Blocks
    traces as one graph (fullgraph=True), forward and backward, and matches PyTorch's Blocks."""
    torch.manual_seed(0)
    net = use_kernels(mlp(6, [16, 16], 3), "fused")
    x = torch.randn(5, 6)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), net[0].weight)
    use_kernels(net, "reference")
    want = net(x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), net[0].weight)
    torch.testing.assert_close(out, want, **TOL[torch.float32])
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5)
