"""World model (SPEC section 1) and CDRED reward model (SPEC section 2) on tiny networks.

Hand computations are written independently (numpy loops) and use the networks only as
black boxes; the network blocks themselves are checked in test_layers.py.
"""

import math

import numpy as np
import pytest
import torch
from testing_utils import SMALL_MODEL

from cdred_fast import _lib, reference
from cdred_fast.config import CDREDConfig
from cdred_fast.reward import CDREDReward
from cdred_fast.world_model import WorldModel

OBS, ACT = 7, 3


def small_cfg(**kw):
    base = dict(
        SMALL_MODEL,
        batch_size=8,
        num_samples=32,
        num_elites=4,
        num_pi_trajs=4,
        kernels="reference",
    )
    base.update(kw)
    return CDREDConfig(**base)


def perturb_(params, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def np_decode(logits, vmin=-10.0, vmax=10.0):
    """symexp(sum softmax(logits) * bins) over the last axis, numpy."""
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    s = (p * np.linspace(vmin, vmax, logits.shape[-1])).sum(-1)
    return np.sign(s) * np.expm1(np.abs(s))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WorldModel(small_cfg(), OBS, ACT)


# --------------------------------------------------------------------------- world model
def test_shapes_and_simnorm_latents(model):
    obs = torch.randn(4, 5, OBS)
    z = model.encode(obs)
    assert z.shape == (4, 5, 16)
    np.testing.assert_allclose(z.reshape(4, 5, 2, 8).sum(-1).detach().numpy(), 1.0, atol=1e-6)
    a = torch.rand(4, 5, ACT) * 2 - 1
    z2 = model.next(z, a)
    assert z2.shape == (4, 5, 16)
    np.testing.assert_allclose(z2.reshape(4, 5, 2, 8).sum(-1).detach().numpy(), 1.0, atol=1e-6)
    assert model.Q(z, a, "all").shape == (5, 4, 5, 101)
    assert model.Q(z, a, "min").shape == (4, 5)
    assert model.reward_model(torch.cat([z, a], -1)).shape == (4, 5)
    mu, act, logp, log_std = model.pi(z)
    assert mu.shape == act.shape == log_std.shape == (4, 5, ACT) and logp.shape == (4, 5)


def test_q_last_layer_zero_initialised(model):
    z = model.encode(torch.randn(6, OBS))
    a = torch.rand(6, ACT)
    assert (model.Qs.layers[-1].weight == 0).all()
    assert (model.Q(z, a, "all") == 0).all()  # uniform distribution over symmetric bins -> Q = 0
    assert model.Q(z, a, "avg").abs().max() < 1e-5


def test_q_min_avg_of_two_heads_by_hand(model):
    perturb_(model.Qs.parameters())
    z = model.encode(torch.randn(6, OBS))
    a = torch.rand(6, ACT) * 2 - 1
    logits = model.Q(z, a, "all").detach().numpy()
    per_head = np_decode(logits)  # [5, 6]
    heads = torch.tensor([3, 1])
    np.testing.assert_allclose(
        model.Q(z, a, "min", heads=heads).detach().numpy(), np.minimum(per_head[3], per_head[1]), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        model.Q(z, a, "avg", heads=heads).detach().numpy(), (per_head[3] + per_head[1]) / 2, rtol=1e-4, atol=1e-6
    )
    # random heads: two distinct heads, and over many draws every head is used
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(60):
        q = model.Q(z, a, "min", generator=g).detach().numpy()
        match = [
            (i, j)
            for i in range(5)
            for j in range(5)
            if i < j and np.allclose(q, np.minimum(per_head[i], per_head[j]), rtol=1e-4, atol=1e-6)
        ]
        assert match
        seen.update(match[0])
    assert seen == set(range(5))
    with pytest.raises(ValueError, match="return_type"):
        model.Q(z, a, "max")


def test_policy_prior_by_hand(model):
    model.double()  # the tanh correction near |a| = 1 needs float64 to compare tightly
    perturb_(model.pi_net.parameters(), scale=0.5)
    z = model.encode(torch.randn(6, OBS, dtype=torch.float64)).detach()
    eps = torch.randn(6, ACT, dtype=torch.float64)
    mu_t, a, logp, log_std = model.pi(z, eps=eps)
    out = model.pi_net(z).detach().double().numpy()
    mu, rho = out[:, :ACT], out[:, ACT:]
    ls = -10 + 0.5 * 12 * (np.tanh(rho) + 1)
    u = mu + np.exp(ls) * eps.double().numpy()
    # SPEC section 1 (the released code): the Gaussian part is scaled by the action dimension A.
    want_logp = np.zeros(6)
    for i in range(6):
        residual = 0.0
        for j in range(ACT):
            sd = math.exp(ls[i, j])
            residual += -((u[i, j] - mu[i, j]) ** 2) / (2 * sd * sd) - math.log(sd)
            want_logp[i] -= math.log(1 - math.tanh(u[i, j]) ** 2 + 1e-6)
        want_logp[i] += ACT * (residual - 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(log_std.detach().numpy(), ls, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.detach().numpy(), np.tanh(u), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mu_t.detach().numpy(), np.tanh(mu), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logp.detach().numpy(), want_logp, rtol=1e-9, atol=1e-9)
    # log-std stays in [log_std_min, log_std_max]
    with torch.no_grad():
        model.pi_net[-1].bias[ACT:] = 1e3
    assert torch.allclose(model.pi(z)[3], torch.tensor(2.0, dtype=torch.float64))
    with torch.no_grad():
        model.pi_net[-1].bias[ACT:] = -1e3
    assert torch.allclose(model.pi(z)[3], torch.tensor(-10.0, dtype=torch.float64))


def test_pi_generator_reproducible(model):
    z = model.encode(torch.randn(4, OBS))
    a1 = model.pi(z, generator=torch.Generator().manual_seed(3))[1]
    a2 = model.pi(z, generator=torch.Generator().manual_seed(3))[1]
    a3 = model.pi(z, generator=torch.Generator().manual_seed(4))[1]
    torch.testing.assert_close(a1, a2)
    assert not torch.allclose(a1, a3)


def test_target_q_polyak_and_frozen(model):
    for p, pt in zip(model.Qs.parameters(), model.target_Qs.parameters()):
        torch.testing.assert_close(p, pt)
        assert not pt.requires_grad
    old = [p.detach().clone() for p in model.target_Qs.parameters()]
    perturb_(model.Qs.parameters())
    model.soft_update_target_Q()
    tau = model.cfg.tau
    for p, pt, o in zip(model.Qs.parameters(), model.target_Qs.parameters(), old):
        torch.testing.assert_close(pt, (1 - tau) * o + tau * p.detach())
    model.train()
    assert model.Qs.training and not model.target_Qs.training


def test_dropout_on_in_training_off_while_planning():
    torch.manual_seed(0)
    m = WorldModel(small_cfg(dropout=0.5), OBS, ACT)
    perturb_(m.Qs.parameters())
    z = m.encode(torch.randn(16, OBS))
    a = torch.rand(16, ACT)
    m.train()
    assert not torch.allclose(m.Q(z, a, "all"), m.Q(z, a, "all"))
    with m.planning():
        assert not m.training
        torch.testing.assert_close(m.Q(z, a, "all"), m.Q(z, a, "all"))
    assert m.training and m.Qs.training  # mode restored
    m.eval()
    with m.planning():
        pass
    assert not m.training


def test_track_q_grad(model):
    model.track_q_grad(False)
    assert not any(p.requires_grad for p in model.Qs.parameters())
    model.track_q_grad(True)
    assert all(p.requires_grad for p in model.Qs.parameters())


def test_reward_has_no_grad(model):
    z = model.encode(torch.randn(5, OBS))
    a = torch.rand(5, ACT, requires_grad=True)
    r = model.reward_model(torch.cat([z, a], -1))
    assert not r.requires_grad and r.shape == (5,)


def test_pixel_model_needs_an_image_shape():
    # the pixel encoder itself is tested in test_pixels.py
    cfg = small_cfg(obs="rgb", latent_dim=32, num_channels=2)
    with pytest.raises(ValueError, match="obs='rgb' needs observations of shape"):
        WorldModel(cfg, OBS, ACT)
    assert WorldModel(cfg, (9, 64, 64), ACT).encode(torch.zeros(2, 9, 64, 64, dtype=torch.uint8)).shape == (2, 32)


# --------------------------------------------------------------------------- CDRED reward model
def np_cdred_reward(fe, fb, T, alpha, zeta, sigma, g):
    """SPEC Eq. 7-8 with explicit loops (non-degenerate targets)."""
    K, N, D = T.shape
    out = np.zeros(N)
    for i in range(N):

        def bonus(f, i=i):
            dist, cnt = 0.0, 0.0
            for d in range(D):
                mu = sum(T[k, i, d] for k in range(K)) / K
                b2 = sum(T[k, i, d] ** 2 for k in range(K)) / K
                dist += (f[i, d] - mu) ** 2
                cnt += math.sqrt(abs(f[i, d] ** 2 - mu**2) / (b2 - mu**2))
            return alpha * dist + (1 - alpha) * cnt / D

        gf = (lambda v: v) if g == "linear" else math.exp
        out[i] = zeta * gf(-sigma * bonus(fe)) - (1 - zeta) * gf(-sigma * bonus(fb))
    return out


def make_reward(**kw):
    torch.manual_seed(0)
    cfg = small_cfg(**kw)
    rm = CDREDReward(cfg, 10)
    perturb_(rm.predictor_parameters(), scale=0.2)
    return rm


def test_targets_registered_frozen_and_independent():
    rm = make_reward()
    sd = rm.state_dict()
    assert any(k.startswith("target_nets.") for k in sd)
    assert sd["target_nets.layers.0.weight"].shape == (3, 16, 10)
    assert all(not p.requires_grad for p in rm.target_nets.parameters())
    trainable = {id(p) for p in rm.predictor_parameters()}
    assert not any(id(p) in trainable for p in rm.target_nets.parameters())
    x = torch.randn(6, 10)
    t = rm.targets(x)
    assert t.shape == (3, 6, 8) and not t.requires_grad
    for k in range(3):
        torch.testing.assert_close(t[k], rm.target_nets.member(k)(x))
    assert not torch.allclose(t[0], t[1])  # independent random networks
    rm64 = rm.to(torch.float64)  # buffers/params move with .to()
    assert rm64.target_nets.layers[0].weight.dtype == torch.float64


@pytest.mark.parametrize(
    "g, zeta, alpha, sigma",
    [("linear", 0.8, 0.9, 1.0), ("exp", 0.8, 0.9, 1.0), ("linear", 0.3, 0.5, 2.0), ("exp", 1.0, 0.9, 0.5)],
)
def test_reward_by_hand(g, zeta, alpha, sigma):
    rm = make_reward(g=g, zeta=zeta, alpha=alpha, sigma=sigma)
    x = torch.randn(5, 10)
    r = rm(x).double().numpy()
    fe = rm.expert_predictor(x).detach().double().numpy()
    fb = rm.behavioral_predictor(x).detach().double().numpy()
    T = np.stack([rm.target_nets.member(k)(x).detach().double().numpy() for k in range(3)])
    np.testing.assert_allclose(r, np_cdred_reward(fe, fb, T, alpha, zeta, sigma, g), rtol=1e-4, atol=1e-5)
    assert rm(x.reshape(5, 1, 10)).shape == (5, 1)


def test_zeta_one_is_uncoupled_red_reward():
    rm = make_reward(zeta=1.0)
    x = torch.randn(5, 10)
    before = rm(x)
    perturb_(rm.behavioral_predictor.parameters(), scale=1.0, seed=5)
    torch.testing.assert_close(rm(x), before)


def test_predictor_loss_by_hand():
    rm = make_reward()
    xe, xb = torch.randn(6, 10), torch.randn(4, 10)
    ie, ib = torch.tensor([0, 2, 1, 1, 0, 2]), torch.tensor([2, 2, 0, 1])
    le, lb = rm.predictor_loss(xe, xb, idx_expert=ie, idx_behavioral=ib)
    assert le.shape == (6,) and lb.shape == (4,)
    for x, idx, f, got in ((xe, ie, rm.expert_predictor, le), (xb, ib, rm.behavioral_predictor, lb)):
        pred = f(x).detach().numpy()
        for i in range(x.shape[0]):
            tk = rm.target_nets.member(int(idx[i]))(x[i : i + 1]).detach().numpy()[0]
            want = sum((pred[i, d] - tk[d]) ** 2 for d in range(8)) / 8
            assert got[i].item() == pytest.approx(want, rel=1e-5)


def test_predictor_loss_gradients_and_random_indices():
    rm = make_reward()
    xe = torch.randn(64, 10, requires_grad=True)
    xb = torch.randn(64, 10)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    le, lb = rm.predictor_loss(xe, xb, generator=g1)
    le2, lb2 = rm.predictor_loss(xe, xb, generator=g2)
    torch.testing.assert_close(le, le2)
    torch.testing.assert_close(lb, lb2)
    # each sample's loss is the loss against one of the K targets
    with torch.no_grad():
        all_k = torch.stack([(rm.expert_predictor(xe) - rm.targets(xe)[k]).pow(2).mean(-1) for k in range(3)])
    hit = (all_k - le.detach()).abs() < 1e-6
    assert hit.any(0).all()
    assert (hit.float().sum(1) > 0).all()  # all three targets get used on 64 samples
    (le.mean() + lb.mean()).backward()
    assert xe.grad is not None and xe.grad.abs().sum() > 0
    assert all(p.grad is None for p in rm.target_nets.parameters())
    assert all(p.grad is not None for p in rm.predictor_parameters())


@pytest.mark.skipif(not _lib.available(), reason="C++ extension not built")
def test_fused_reward_matches_reference():
    rm = make_reward(kernels="fused")
    x = torch.randn(33, 10)
    torch.testing.assert_close(rm(x), rm(x, impl="reference"), rtol=1e-5, atol=1e-6)


def test_reward_uses_reference_ops():
    rm = make_reward()
    x = torch.randn(5, 10)
    want = reference.cdred_reward(
        rm.expert_predictor(x), rm.behavioral_predictor(x), rm.targets(x), 0.9, 0.8, 1.0, "linear", 1e-6
    )
    torch.testing.assert_close(rm(x), want.detach())
