"""IQ-MPC's policy loss and soft planning return (SPEC section 6) against hand computations."""

import pytest
import torch
from test_iqmpc import ATOL, F64, FakeDynamics, FakePi, hand_qavg, hand_qmin, make_q, pairs, rand
from testing_utils import SMALL_MODEL

from cdred_fast.config import CDREDConfig
from cdred_fast.methods import iqmpc as iq
from cdred_fast.world_model import WorldModel


# =============================================================================== policy loss
@pytest.mark.parametrize("T,N,A", [(4, 3, 2), (2, 1, 1)])
def test_policy_loss_against_hand(T, N, A):
    L, rho, c = 3, 0.5, 0.1
    q, pi = make_q(L, A), FakePi(L, A)
    zs, eps, pair = rand(T, N, L, seed=11), rand(T, N, A, seed=12), torch.tensor([2, 0])
    loss = iq.iqmpc_policy_loss(q, pi, zs, rho=rho, entropy_coef=c, eps=eps, heads=pair)
    expected = 0.0
    for t in range(T):
        row = 0.0
        for i in range(N):
            act, lp = pi.hand(zs[t, i], eps[t, i])
            row += (c * lp - hand_qmin(q, pair, zs[t, i], act)) / N
        expected += rho**t * row / T  # mean over t, no running scale
    assert float(loss.detach()) == pytest.approx(expected, abs=ATOL)


def test_policy_loss_detaches_latents_and_errors():
    q, pi = make_q(3, 2), FakePi(3, 2)
    zs = rand(3, 2, 3).requires_grad_(True)
    loss = iq.iqmpc_policy_loss(q, pi, zs, eps=rand(3, 2, 2), heads=torch.tensor([0, 1]))
    loss.backward()
    assert zs.grad is None
    with pytest.raises(ValueError, match=r"zs must be \[H\+1, N, L=3\]"):
        iq.iqmpc_policy_loss(q, pi, rand(2, 3))
    with pytest.raises(ValueError, match=r"eps must be \[3, 2, 2\]"):
        iq.iqmpc_policy_loss(q, pi, rand(3, 2, 3), eps=rand(3, 2, 1))


# =============================================================================== planning return
def hand_soft_return(q, pi, dyn, z, actions, gamma, c, nz):
    H, R = actions.shape[:2]
    out = []
    for r in range(R):
        zr, G, disc = [float(v) for v in z[r]], 0.0, 1.0
        for t in range(H):
            a_t = actions[t, r]
            q_t = hand_qmin(q, nz.q_heads[t], zr, a_t)
            _, lp_hat = pi.hand(zr, nz.hat_eps[t, r])
            zr = dyn.hand(zr, a_t)
            a_next, lp_next = pi.hand(zr, nz.next_eps[t, r])
            v_next = hand_qmin(q, nz.next_heads[t], zr, a_next) - c * lp_next
            G += disc * ((q_t - gamma * v_next) - c * lp_hat)
            disc *= gamma
        _, lp_term = pi.hand(zr, nz.term_log_eps[r])
        a_term, _ = pi.hand(zr, nz.term_eps[r])
        out.append(G + disc * (hand_qavg(q, nz.term_heads, zr, a_term) - c * lp_term))
    return out


@pytest.mark.parametrize("H,R,A", [(3, 4, 2), (1, 1, 1)])
def test_soft_planning_return_against_hand(H, R, A):
    L, gamma, c = 3, 0.9, 0.1
    q, pi, dyn = make_q(L, A), FakePi(L, A), FakeDynamics(L, A)
    z, actions = rand(R, L, seed=20), rand(H, R, A, seed=21, scale=0.5).clamp(-1, 1)
    nz = iq.SoftReturnNoise(
        q_heads=pairs(H, 22),
        hat_eps=rand(H, R, A, seed=23),
        next_eps=rand(H, R, A, seed=24),
        next_heads=pairs(H, 25),
        term_eps=rand(R, A, seed=26),
        term_log_eps=rand(R, A, seed=27),
        term_heads=torch.tensor([1, 4]),
    )
    G = iq.soft_planning_return(q, pi, dyn, z, actions, gamma, entropy_coef=c, noise=nz)
    assert G.shape == (R,)
    torch.testing.assert_close(
        G, torch.tensor(hand_soft_return(q, pi, dyn, z, actions, gamma, c, nz), dtype=F64), atol=1e-9, rtol=0
    )


def test_soft_planning_return_is_redrawn_each_call():
    """The return is random: every call (every MPPI iteration) draws new noise, also for fixed sequences."""
    L, A = 3, 2
    q, pi, dyn = make_q(L, A), FakePi(L, A), FakeDynamics(L, A)
    z, actions = rand(6, L, seed=1), rand(3, 6, A, seed=2).clamp(-1, 1)
    value = iq.make_soft_return(q, pi, dyn, 0.9, entropy_coef=0.1, generator=torch.Generator().manual_seed(0))
    g1, g2 = value(z, actions), value(z, actions)
    assert not torch.equal(g1, g2)
    again = iq.make_soft_return(q, pi, dyn, 0.9, entropy_coef=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(z, actions), g1)  # reproducible from the generator state


def test_soft_planning_return_with_world_model_no_grad():
    cfg = CDREDConfig(**SMALL_MODEL, kernels="reference")
    m = WorldModel(cfg, 5, 3)
    q = iq.ScalarQEnsemble.from_config(cfg, 3).train(False)
    G = iq.soft_planning_return(q, m.pi, m.next, torch.randn(10, 16), torch.rand(3, 10, 3) * 2 - 1, 0.99)
    assert G.shape == (10,) and not G.requires_grad and torch.isfinite(G).all()


def test_soft_planning_return_shape_errors():
    q, pi, dyn = make_q(3, 2), FakePi(3, 2), FakeDynamics(3, 2)
    with pytest.raises(ValueError, match=r"z must be \[R, L=3\]"):
        iq.soft_planning_return(q, pi, dyn, rand(2, 2, 3), rand(3, 2, 2), 0.9)
    with pytest.raises(ValueError, match=r"actions must be \[H, R=4, A=2\]"):
        iq.soft_planning_return(q, pi, dyn, rand(4, 3), rand(3, 5, 2), 0.9)
    with pytest.raises(ValueError, match=r"noise.q_heads must be \[3, 2\]"):
        nz = iq.draw_soft_return_noise(2, 4, 2)
        iq.soft_planning_return(q, pi, dyn, rand(4, 3), rand(3, 4, 2), 0.9, noise=nz)
