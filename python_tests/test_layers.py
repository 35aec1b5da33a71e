"""Layers: blocks, MLP, SimNorm, initialisations, symlog/two-hot, vectorised ensemble.

Reference computations are written independently in numpy.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdred_fast import layers, ops
from cdred_fast.layers import (
    SPARSE_DROPOUT_MAX_P,
    Ensemble,
    NormedLinear,
    SimNorm,
    block_dropout,
    dropout_positions,
    mlp,
    soft_ce,
    symexp,
    symlog,
    target_init_,
    trunc_normal_init_,
    two_hot,
    two_hot_inv,
)


# --------------------------------------------------------------------------- numpy twins
def np_layernorm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_mish(x):
    return x * np.tanh(np.log1p(np.exp(x)))


def np_simnorm(x, dim=8):
    out = np.empty_like(x)
    for start in range(0, x.shape[-1], dim):
        grp = x[..., start : start + dim]
        e = np.exp(grp - grp.max(-1, keepdims=True))
        out[..., start : start + dim] = e / e.sum(-1, keepdims=True)
    return out


def np_forward(seq, x):
    """Forward of an mlp() Sequential in float64 numpy (eval mode: no dropout)."""
    h = np.asarray(x, dtype=np.float64)
    for layer in seq:
        W = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        h = h @ W.T + b
        if isinstance(layer, NormedLinear):
            h = np_layernorm(h, layer.ln.weight.detach().double().numpy(), layer.ln.bias.detach().double().numpy())
            h = np_simnorm(h, layer.act.dim) if isinstance(layer.act, SimNorm) else np_mish(h)
    return h


def randomize_(module, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


# --------------------------------------------------------------------------- blocks and MLPs
def test_mlp_structure():
    net = mlp(10, [32, 16], 4, dropout=0.1)
    assert [type(l) for l in net] == [NormedLinear, NormedLinear, nn.Linear]
    assert net[0].dropout is not None and net[0].dropout.p == 0.1
    assert net[1].dropout is None  # dropout only after the first Linear
    assert isinstance(net[0].act, nn.Mish)
    enc = mlp(10, [32], 16, last_act=SimNorm(8))
    assert isinstance(enc[-1], NormedLinear) and isinstance(enc[-1].act, SimNorm)


@pytest.mark.parametrize("last_act", [None, SimNorm(8)])
def test_mlp_forward_matches_numpy(last_act):
    torch.manual_seed(0)
    net = randomize_(mlp(6, [12, 10], 16, last_act=last_act)).eval()
    x = torch.randn(5, 6)
    out = net(x).detach().double().numpy()
    np.testing.assert_allclose(out, np_forward(net, x.numpy()), rtol=1e-5, atol=1e-6)


def test_simnorm_groups_of_8():
    x = torch.randn(3, 4, 24)
    y = SimNorm(8)(x)
    np.testing.assert_allclose(y.numpy(), np_simnorm(x.numpy().astype(np.float64)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(y.reshape(3, 4, 3, 8).sum(-1).numpy(), 1.0, atol=1e-6)
    # large logits (the max shift keeps exp finite) and the gradient (the shift is detached: exact)
    big = SimNorm(8)(torch.tensor([[1000.0, 999.0] + [0.0] * 6]))
    np.testing.assert_allclose(big[0, :2].numpy(), [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], rtol=1e-6)
    x64 = (torch.randn(5, 16, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(SimNorm(8), (x64,))


def test_dropout_is_before_layernorm_and_only_in_train_mode():
    torch.manual_seed(0)
    layer = randomize_(NormedLinear(8, 64, dropout=0.5))
    x = torch.randn(4, 8)
    layer.eval()
    np.testing.assert_allclose(layer(x).detach().numpy(), layer(x).detach().numpy())
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)
    # Dropout sits before LayerNorm: the dropped units are re-normalised and pass Mish,
    # so (unlike dropout applied after the activation) almost no output is exactly 0.
    assert (a == 0).float().mean() < 0.05


def test_dropout_positions_draw_a_bernoulli_sequence():
    """The sparse draw (geometric gaps) drops each element independently with probability p."""
    torch.manual_seed(0)
    # every position, the first and last included, dropped with probability p, in 5,000 draws
    # of 4 (an off-by-one in the running sum would never drop position 0)
    p, draws = 0.25, 5000
    hits = torch.zeros(4)
    both = 0
    for _ in range(draws):
        pos = dropout_positions(4, p)
        assert pos.dtype == torch.long and bool((pos[1:] > pos[:-1]).all())
        hits[pos] += 1
        both += int(0 in pos and 1 in pos)
    sigma = math.sqrt(p * (1 - p) / draws)
    assert (hits / draws - p).abs().max() < 5 * sigma, hits / draws
    assert abs(both / draws - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / draws)  # independent
    # one long draw: count, range, and the spread of counts over blocks (binomial: var = mean (1 - p))
    n, p = 1_000_000, 0.01
    pos = dropout_positions(n, p)
    assert 0 <= int(pos.min()) and int(pos.max()) < n and bool((pos[1:] > pos[:-1]).all())
    assert abs(len(pos) - n * p) < 6 * math.sqrt(n * p * (1 - p))
    counts = torch.bincount(pos // 1000, minlength=n // 1000).double()
    dispersion = float(counts.var() / counts.mean()) / (1 - p)
    assert 0.8 < dispersion < 1.2, dispersion
    assert len(dropout_positions(0, p)) == 0
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="p must lie in"):
            dropout_positions(10, bad)


def test_block_dropout_fused_is_dropout_with_a_sparse_mask(monkeypatch):
    p = 0.05
    x = torch.randn(5, 301, 64).transpose(0, 1)  # not contiguous; N not a round number
    torch.manual_seed(1)
    out = block_dropout(x.requires_grad_(), p, True, "fused")
    dropped = out == 0
    assert abs(float(dropped.double().mean()) - p) < 6 * math.sqrt(p * (1 - p) / x.numel())
    torch.testing.assert_close(out[~dropped], (x / (1 - p))[~dropped], rtol=1e-6, atol=0)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, g / (1 - p)), rtol=1e-6, atol=0)
    # float64 gradient check, with the same draw at every call
    x64 = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: (torch.manual_seed(2), block_dropout(t, 0.1, True, "fused"))[1], (x64,))
    # what runs where: the sparse draw for fused Blocks in training at small p on the CPU only
    calls = []
    monkeypatch.setattr(layers, "dropout_positions", lambda *a: calls.append(a) or dropout_positions(*a))
    assert torch.equal(block_dropout(x, p, False, "fused"), x) and not calls
    for kernels, rate in (("reference", p), ("fused", 2 * SPARSE_DROPOUT_MAX_P)):
        torch.manual_seed(3)
        got = block_dropout(x, rate, True, kernels)
        torch.manual_seed(3)
        assert torch.equal(got, torch.nn.functional.dropout(x, rate, True)) and not calls
    ens = Ensemble(_members(3, dropout=p)).train()
    layers.use_kernels(ens, "fused")
    ens(torch.randn(10, 6))
    assert calls == [(3 * 10 * 16, p)]


needs_cpu_kernels = pytest.mark.skipif(
    "cpu" not in ops.FUSED_DEVICE_TYPES, reason="the CPU kernels of the extension are not built"
)


def _fused_and_reference(n, dropout, dtype):
    """Two copies of one ensemble, Blocks fused and reference, in training mode."""
    fused = Ensemble(_members(n, dropout=dropout)).to(dtype).train()
    ref = copy.deepcopy(fused)
    return layers.use_kernels(fused, "fused"), layers.use_kernels(ref, "reference")


@needs_cpu_kernels
@pytest.mark.parametrize("index", [None, [2, 0], [1]], ids=["all", "two-members", "one-member"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_ensemble_in_training_is_the_reference_with_the_same_mask(dtype, index, monkeypatch):
    """The fused stacked layers (one product for a shared input, dropout's scale folded into it,
    mask and LayerNorm -> Mish in one step: layers._SharedDropoutBlockTail) compute what the
    reference layers compute with the same dropout mask: outputs and every gradient."""
    p = SPARSE_DROPOUT_MAX_P
    fused, ref = _fused_and_reference(3, p, dtype)
    index = None if index is None else torch.tensor(index)
    x = torch.randn(37, 6, dtype=dtype)  # shared by the members; N not a round number
    draws, real_positions, real_dropout = [], layers.dropout_positions, layers.block_dropout

    def record(numel, rate):
        draws.append(real_positions(numel, rate))
        return draws[-1]

    def replay(h, rate, training, kernels):  # F.dropout's arithmetic with the recorded mask
        mask = torch.zeros(h.numel(), dtype=torch.bool)
        mask[draws.pop(0)] = True
        return h * (~mask.view(h.shape)).to(h.dtype) / (1 - rate)

    def unexpected(*args):
        raise AssertionError("the fused shared-input layer went through block_dropout")

    out = {}
    for name, net, patches in (
        ("fused", fused, [("dropout_positions", record), ("block_dropout", unexpected)]),
        ("ref", ref, [("block_dropout", replay)]),
    ):
        for patch in patches:
            monkeypatch.setattr(layers, *patch)
        xi = x.clone().requires_grad_()
        y = net(xi, index=index)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=dtype)).view(y.shape))
        out[name] = [y.detach(), xi.grad] + [q.grad for q in net.parameters()]
        monkeypatch.setattr(layers, "dropout_positions", real_positions)
        monkeypatch.setattr(layers, "block_dropout", real_dropout)
        if name == "fused":
            assert len(draws) == 1 and len(draws[0]) > 0  # one mask, which drops
    assert not draws  # replayed once
    E = 3 if index is None else len(index)
    assert out["fused"][0].shape == (E, 37, 5)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(out["fused"], out["ref"]):
        if want is None:
            assert got is None or not got.any()
            continue
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


@needs_cpu_kernels
def test_shared_dropout_block_tail_gradients():
    """float64 gradient check of the fused tail (a fixed mask) against finite differences."""
    torch.manual_seed(0)
    E, N, D = 3, 7, 5
    h = torch.randn(N, E * D, dtype=torch.float64, requires_grad=True)
    gamma = (1 + 0.1 * torch.randn(E, D, dtype=torch.float64)).requires_grad_()
    beta = (0.1 * torch.randn(E, D, dtype=torch.float64)).requires_grad_()
    positions = torch.tensor([0, 4, 17, E * N * D - 1])  # the first and the last element among them
    # h as the layer passes it: the [E, N, D] row-keeping view of one [N, E * D] product
    f = lambda h, g, b: layers._SharedDropoutBlockTail.apply(h.view(N, E, D).transpose(0, 1), positions, g, b, 1e-5)
    assert torch.autograd.gradcheck(f, (h, gamma, beta))
    y = f(h, gamma, beta)
    # the dropped elements enter the LayerNorm as zeros: the reference on [E, N, D]
    x = h.detach().view(N, E, D).transpose(0, 1).reshape(-1).clone()
    x[positions] = 0
    x = x.view(E, N, D)
    want = F.mish(F.layer_norm(x, (D,), eps=1e-5) * gamma.unsqueeze(1) + beta.unsqueeze(1))
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    # the input is not written into, for one member too (the [E, N, D] view of h is h itself)
    h1, zeros, ones = torch.randn(4, 6, dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64), torch.ones(1, 6)
    before = h1.clone()
    layers._SharedDropoutBlockTail.apply(
        h1.view(4, 1, 6).transpose(0, 1), torch.tensor([0, 5]), ones.double(), zeros, 1e-5
    )
    assert torch.equal(h1, before)


@needs_cpu_kernels
def test_fused_ensemble_in_eval_matches_the_reference():
    """Without dropout the fused stacked layers differ from the reference only in how the shared
    input's product is laid out (and the fused LayerNorm -> Mish)."""
    fused, ref = _fused_and_reference(4, 0.0, torch.float64)
    fused.eval(), ref.eval()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    for index in (None, torch.tensor([3, 1])):
        torch.testing.assert_close(fused(x, index=index), ref(x, index=index), rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- initialisation
def test_trunc_normal_init():
    torch.manual_seed(0)
    net = trunc_normal_init_(mlp(256, [256], 256))
    w = torch.cat([m.weight.flatten() for m in net if isinstance(m, nn.Linear)])
    assert abs(w.std().item() - 0.02) < 0.001
    assert abs(w.mean().item()) < 0.001
    for m in net:
        assert (m.bias == 0).all()
    assert (net[0].ln.weight == 1).all() and (net[0].ln.bias == 0).all()


def test_target_init_orthogonal_hidden_default_last():
    torch.manual_seed(0)
    fan_in = 48
    net = target_init_(mlp(64, [48, 48], 32))
    for m in net[:-1]:
        W = m.weight.detach().double()
        np.testing.assert_allclose((W @ W.T).numpy(), np.eye(W.shape[0]), atol=1e-5)  # orthogonal rows, gain 1
        assert (m.bias == 0).all()
    last = net[-1]
    bound = 1 / math.sqrt(fan_in)
    assert last.weight.abs().max() <= bound and last.bias.abs().max() <= bound
    # uniform(-bound, bound) has std bound/sqrt(3), far from the 0.02 of the other init
    assert abs(last.weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    assert (last.bias != 0).any()


# --------------------------------------------------------------------------- symlog and two-hot
def test_symlog_symexp():
    x = torch.tensor([-5.0, -1.0, 0.0, math.e - 1, 100.0], dtype=torch.float64)
    np.testing.assert_allclose(symlog(x).numpy(), np.sign(x.numpy()) * np.log(1 + np.abs(x.numpy())))
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)
    np.testing.assert_allclose(symexp(symlog(x)).numpy(), x.numpy(), rtol=1e-12)


def test_two_hot_hand_cases():
    # 101 bins on [-10, 10]: bin size 0.2, bin 50 is 0.
    mid = symexp(torch.tensor([0.1], dtype=torch.float64))  # symlog = 0.1 -> halfway between bins 50 and 51
    t = two_hot(mid, 101, -10.0, 10.0)[0]
    assert t[50].item() == pytest.approx(0.5) and t[51].item() == pytest.approx(0.5)
    assert t.sum().item() == pytest.approx(1.0)
    zero = two_hot(torch.zeros(1, dtype=torch.float64), 101, -10.0, 10.0)[0]
    assert zero[50].item() == pytest.approx(1.0) and zero.sum().item() == pytest.approx(1.0)
    # symlog = -9.95 -> 25 % on bin 0 (-10), 75 % on bin 1 (-9.8)
    y = symexp(torch.tensor([-9.85], dtype=torch.float64))
    t = two_hot(y, 101, -10.0, 10.0)[0]
    assert t[0].item() == pytest.approx(0.25) and t[1].item() == pytest.approx(0.75)
    # clamping outside the range
    big = two_hot(torch.tensor([1e9, -1e9], dtype=torch.float64), 101, -10.0, 10.0)
    assert big[0, 100].item() == pytest.approx(1.0) and big[1, 0].item() == pytest.approx(1.0)


def test_two_hot_round_trip():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 500, generator=g, dtype=torch.float64) * 2 - 1) * 200
    for nb in (101, 11):
        enc = two_hot(x, nb, -10.0, 10.0)
        assert enc.shape == (2, 500, nb)
        bins = np.linspace(-10, 10, nb)
        np.testing.assert_allclose(
            (enc.numpy() * bins).sum(-1), np.sign(x.numpy()) * np.log1p(np.abs(x.numpy())), atol=1e-10
        )
        assert ((enc > 0).sum(-1) <= 2).all() and (enc >= 0).all()
        # decode: logits = log(two-hot); softmax recovers the two-hot; symexp recovers x
        np.testing.assert_allclose(two_hot_inv(enc.log(), -10.0, 10.0).numpy(), x.numpy(), rtol=1e-8, atol=1e-8)


def test_soft_ce_matches_numpy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 101, generator=g, dtype=torch.float64)
    y = torch.randn(3, 7, generator=g, dtype=torch.float64) * 5
    got = soft_ce(logits, y, -10.0, 10.0).numpy()
    L = logits.numpy()
    want = np.zeros((3, 7))
    for i in range(3):
        for j in range(7):
            s = np.sign(y[i, j].item()) * np.log1p(abs(y[i, j].item()))
            pos = (s + 10) / 0.2
            lo = int(np.floor(pos))
            target = np.zeros(101)
            target[lo] += 1 - (pos - lo)
            target[min(lo + 1, 100)] += pos - lo
            logp = L[i, j] - L[i, j].max() - np.log(np.exp(L[i, j] - L[i, j].max()).sum())
            want[i, j] = -(target * logp).sum()
    np.testing.assert_allclose(got, want, rtol=1e-10)


# --------------------------------------------------------------------------- ensemble
def _members(n, last_act=None, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return [randomize_(mlp(6, [16, 16], 5, last_act=last_act, dropout=dropout), seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("last_act", [None, SimNorm(5)])
def test_ensemble_matches_members(last_act):
    members = _members(4, last_act=last_act)
    ens = Ensemble(members).eval()
    x = torch.randn(3, 2, 6)
    out = ens(x)
    assert out.shape == (4, 3, 2, 5)
    for k, m in enumerate(members):
        np.testing.assert_allclose(out[k].detach().numpy(), np_forward(m, x.numpy()), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ens.member(k)(x).detach().numpy(), out[k].detach().numpy(), rtol=1e-6, atol=1e-7)
    sub = ens(x, index=torch.tensor([3, 1]))
    np.testing.assert_allclose(sub.detach().numpy(), out[[3, 1]].detach().numpy(), rtol=1e-6, atol=1e-7)


def test_ensemble_parameters_are_real_and_trainable():
    ens = Ensemble(_members(3))
    sd = ens.state_dict()
    assert sd["layers.0.weight"].shape == (3, 16, 6)
    assert sd["layers.0.ln_weight"].shape == (3, 16)
    assert sd["layers.2.weight"].shape == (3, 5, 16)
    assert all(isinstance(p, nn.Parameter) for p in ens.parameters())
    ens(torch.randn(4, 6)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ens.parameters())
    # state_dict round trip into a differently initialised ensemble
    other = Ensemble(_members(3, seed=10))
    other.load_state_dict(sd)
    x = torch.randn(4, 6)
    torch.testing.assert_close(other(x), ens(x))


def test_ensemble_dropout_independent_per_member():
    members = _members(2, dropout=0.5)
    with torch.no_grad():  # make both members identical so only dropout can tell them apart
        for p0, p1 in zip(members[0].parameters(), members[1].parameters()):
            p1.copy_(p0)
    ens = Ensemble(members)
    x = torch.randn(8, 6)
    ens.eval()
    out = ens(x)
    torch.testing.assert_close(out[0], out[1])
    ens.train()
    out = ens(x)
    assert not torch.allclose(out[0], out[1])
