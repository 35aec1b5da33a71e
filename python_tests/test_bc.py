"""BC (SPEC.md section 7): cdred_fast.methods.bc against hand computations.

The expected log-likelihoods are written out per sample with ``math`` (atanh of the clamped
action, the Gaussian density of ``u``, the tanh Jacobian), from the policy head's outputs.
"""

import math

import pytest
import torch
from testing_utils import SMALL_MODEL

from cdred_fast.config import CDREDConfig
from cdred_fast.methods import bc
from cdred_fast.world_model import WorldModel

F64 = torch.float64


def make_model(A=3, obs=5, seed=0):
    cfg = CDREDConfig(**SMALL_MODEL, kernels="reference")
    torch.manual_seed(seed)
    m = WorldModel(cfg, obs, A).to(F64)
    with torch.no_grad():  # a policy head with outputs of a useful size (the init's std 0.02 gives mu ~ 0)
        m.pi_net[-1].weight.normal_(0, 0.5)
        m.pi_net[-1].bias.normal_(0, 0.5)
    return m


def hand_ll(mu, log_std, action, bound=1 - 1e-6):
    """Log-density of one action under tanh(N(mu, sigma^2)), per SPEC section 7."""
    total = 0.0
    for m_i, ls_i, a_i in zip(mu, log_std, action):
        a_c = min(max(float(a_i), -bound), bound)
        u = math.atanh(a_c)
        sigma = math.exp(float(ls_i))
        eps = (u - float(m_i)) / sigma
        total += -0.5 * eps * eps - float(ls_i) - 0.5 * math.log(2 * math.pi) - math.log(1 - a_c * a_c)
    return total


def head_outputs(m, z):
    """(mu, log_std) from pi_net, the squashing of SPEC section 1 written out."""
    out = m.pi_net(z).detach()
    A = out.shape[-1] // 2
    mu, rho = out[..., :A], out[..., A:]
    lo, hi = m.cfg.log_std_min, m.cfg.log_std_max
    return mu, lo + 0.5 * (hi - lo) * (torch.tanh(rho) + 1)


def test_policy_mean_log_std_matches_world_model_pi():
    m = make_model()
    z = torch.randn(4, 16, dtype=F64)
    mu, log_std = bc.policy_mean_log_std(m, z)
    tanh_mu, _, _, ls = m.pi(z, eps=torch.zeros(4, 3, dtype=F64))
    torch.testing.assert_close(torch.tanh(mu), tanh_mu)
    torch.testing.assert_close(log_std, ls)
    torch.testing.assert_close(bc.bc_act(m, z), tanh_mu)


def test_log_likelihood_against_hand():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 3, generator=g, dtype=F64)
    log_std = torch.rand(5, 3, generator=g, dtype=F64) * 2 - 1.5
    action = torch.rand(5, 3, generator=g, dtype=F64) * 1.8 - 0.9
    action[0, 0], action[1, 2], action[2, 1] = 1.0, -1.0, 1.0 + 5e-4  # at and just past the bound: clamped
    ll = bc.tanh_gaussian_log_likelihood(mu, log_std, action)
    assert ll.shape == (5,) and torch.isfinite(ll).all()
    for i in range(5):
        assert float(ll[i]) == pytest.approx(hand_ll(mu[i], log_std[i], action[i]), rel=1e-10, abs=1e-8)
    # the clamp: atanh(1 - 1e-6) = 7.254...
    one = bc.tanh_gaussian_log_likelihood(
        torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64)
    )
    u = math.atanh(1 - 1e-6)
    expected = -0.5 * u * u - 0.5 * math.log(2 * math.pi) - math.log((1e-6) * (2 - 1e-6))
    assert float(one) == pytest.approx(expected, rel=1e-9)


def test_log_likelihood_is_a_density_in_one_dimension():
    """Integrates to 1 over (-1, 1) (A = 1): it is the exact tanh-Gaussian density, not the A-scaled log pi."""
    a = torch.linspace(-1 + 1e-7, 1 - 1e-7, 400_001, dtype=F64)
    mu, ls = torch.full_like(a, 0.3), torch.full_like(a, -0.5)
    p = bc.tanh_gaussian_log_likelihood(mu.unsqueeze(-1), ls.unsqueeze(-1), a.unsqueeze(-1)).exp()
    assert float(torch.trapezoid(p, a)) == pytest.approx(1.0, abs=1e-4)


def test_log_likelihood_matches_policy_log_prob_when_a_is_one():
    """For A = 1 the SPEC section 1 log pi has no extra factor: equal up to its 1e-6 guard."""
    m = make_model(A=1)
    z, eps = torch.randn(6, 16, dtype=F64), torch.randn(6, 1, dtype=F64) * 0.5
    _, a, log_prob, _ = m.pi(z, eps=eps)
    mu, log_std = bc.policy_mean_log_std(m, z)
    ll = bc.tanh_gaussian_log_likelihood(mu, log_std, a)
    torch.testing.assert_close(ll.detach(), log_prob.detach(), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("shape", [(4, 2), (1, 1)])  # a batch, and batch 1 x H 1 (the loss' leading dims)
def test_bc_loss_against_hand(shape):
    A = 3
    m = make_model(A)
    z = torch.randn(*shape, 16, dtype=F64)
    action = torch.rand(*shape, A, dtype=F64) * 2 - 1
    loss, stats = bc.bc_loss(m, z, action)
    mu, log_std = head_outputs(m, z)
    mu, log_std, act = mu.reshape(-1, A), log_std.reshape(-1, A), action.reshape(-1, A)
    vals = [hand_ll(mu[i], log_std[i], act[i]) for i in range(act.shape[0])]
    expected = -sum(vals) / len(vals)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-10)
    assert float(stats["bc_loss"]) == pytest.approx(expected, rel=1e-10)
    assert float(stats["bc_log_likelihood"]) == pytest.approx(-expected, rel=1e-10)
    mse = sum((math.tanh(float(mu[i, j])) - float(act[i, j])) ** 2 for i in range(act.shape[0]) for j in range(A))
    assert float(stats["bc_mse"]) == pytest.approx(mse / act.numel(), rel=1e-10)


@pytest.mark.parametrize("T,B,A", [(3, 4, 2), (1, 1, 1)])
def test_bc_loss_rho_weighting_against_hand(T, B, A):
    m = make_model(A)
    z = torch.randn(T, B, 16, dtype=F64)
    action = torch.rand(T, B, A, dtype=F64) * 2 - 1
    loss, _ = bc.bc_loss(m, z, action, rho=0.5)
    mu, log_std = head_outputs(m, z)
    expected = 0.0
    for t in range(T):
        row = sum(hand_ll(mu[t, b], log_std[t, b], action[t, b]) for b in range(B)) / B
        expected += -(0.5**t) * row / T
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-10)


def test_bc_loss_trains_encoder_and_policy():
    m = make_model()
    obs = torch.randn(8, 5, dtype=F64)
    loss, _ = bc.bc_loss(m, m.encode(obs), torch.rand(8, 3, dtype=F64) * 2 - 1)
    loss.backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.pi_net.parameters())
    assert all(p.grad is None for p in m.dynamics.parameters())


def test_maximum_likelihood_optimum():
    """The likelihood's maximiser for one state: mu = mean(atanh a), sigma = std(atanh a) (population)."""
    g = torch.Generator().manual_seed(3)
    action = torch.tanh(0.4 + 0.7 * torch.randn(200, 1, generator=g, dtype=F64))
    mu = torch.zeros(1, dtype=F64, requires_grad=True)
    log_std = torch.zeros(1, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([mu, log_std], lr=0.05)
    for _ in range(600):
        nll = -bc.tanh_gaussian_log_likelihood(mu.expand(200, 1), log_std.expand(200, 1), action).mean()
        opt.zero_grad()
        nll.backward()
        opt.step()
    u = [math.atanh(float(a)) for a in action[:, 0]]
    mean = sum(u) / len(u)
    std = math.sqrt(sum((v - mean) ** 2 for v in u) / len(u))
    assert float(mu.detach()) == pytest.approx(mean, abs=1e-3)
    assert math.exp(float(log_std.detach())) == pytest.approx(std, abs=1e-3)


def test_bc_training_increases_the_likelihood():
    """Adam on encoder + policy prior from the released init: the expert actions' likelihood rises."""
    torch.manual_seed(0)
    m = make_model(A=2)
    with torch.no_grad():  # back to the released init of the policy's last layer (std 0.02, bias 0)
        torch.nn.init.trunc_normal_(m.pi_net[-1].weight, std=0.02)
        m.pi_net[-1].bias.zero_()
    obs = torch.randn(16, 5, dtype=F64)
    target = torch.tanh(obs[:, :2] * 1.5)
    opt = torch.optim.Adam(list(m.encoder.parameters()) + list(m.pi_net.parameters()), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, _ = bc.bc_loss(m, m.encode(obs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 1e-2 * losses[0]


def test_bc_errors():
    m = make_model(A=3)
    z = torch.randn(4, 16, dtype=F64)
    with pytest.raises(ValueError, match=r"action must be \[\.\.\., A=3\]"):
        bc.bc_loss(m, z, torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="share their leading dimensions"):
        bc.bc_loss(m, z, torch.zeros(5, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        bc.bc_loss(m, z, torch.full((4, 3), 1.5, dtype=F64))
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = torch.zeros(4, 3, dtype=F64)
        bad[0, 0] = float("nan")
        bc.bc_loss(m, z, bad)
    with pytest.raises(ValueError, match=r"with rho, z and action must be \[T, B, \.\.\.\]"):
        bc.bc_loss(m, z, torch.zeros(4, 3, dtype=F64), rho=0.5)
    with pytest.raises(ValueError, match="same shape"):
        bc.tanh_gaussian_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"bound must be in \(0, 1\)"):
        bc.tanh_gaussian_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), bound=1.0)
    # just outside [-1, 1] (float noise) is clamped, not refused
    loss, _ = bc.bc_loss(m, z, torch.full((4, 3), 1.0 + 1e-4, dtype=F64))
    assert torch.isfinite(loss)
