"""IQ-MPC (SPEC.md section 6): cdred_fast.methods.iqmpc against hand computations.

The expected numbers are computed here sample by sample with plain formulas: each Q head is
evaluated from its stacked weights as ``Linear -> LayerNorm -> Mish`` written out, the policy
is a small closed-form stand-in with the SPEC section 1 log-probability written out, and the
gradient penalty's input gradient is taken by central finite differences. Everything runs in
float64 with dropout 0, so the comparisons are tight.
"""

import math

import pytest
import torch
from testing_utils import SMALL_MODEL

from cdred_fast.config import CDREDConfig
from cdred_fast.methods import iqmpc as iq
from cdred_fast.world_model import WorldModel

F64 = torch.float64
ATOL = 1e-10


# =============================================================================== fixtures and hand models
def make_q(L, A, seed=0, hidden=6, num_q=5, zero_last=False):
    """A float64 ScalarQEnsemble with every parameter (online and target) random and distinct."""
    q = iq.ScalarQEnsemble(L, A, mlp_dim=hidden, num_q=num_q, dropout=0.0).to(F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(q.Qs.parameters()) + list(q.target_Qs.parameters()):
            p.copy_(0.6 * torch.randn(p.shape, generator=g, dtype=F64))
        if zero_last:
            q.Qs.layers[-1].weight.zero_()
    return q


def hand_head(q, k, z, a, target=False):
    """Head ``k`` on one sample, from the stacked weights (float)."""
    net = q.target_Qs if target else q.Qs
    x = [float(v) for v in z] + [float(v) for v in a]
    for layer in net.layers:
        W, b = layer.weight[k].tolist(), layer.bias[k].tolist()
        h = [sum(W[o][i] * x[i] for i in range(len(x))) + b[o] for o in range(len(b))]
        if layer.normed:
            mean = sum(h) / len(h)
            var = sum((v - mean) ** 2 for v in h) / len(h)
            g, beta = layer.ln_weight[k].tolist(), layer.ln_bias[k].tolist()
            h = [(v - mean) / math.sqrt(var + layer.ln_eps) * g[o] + beta[o] for o, v in enumerate(h)]
            h = [v * math.tanh(math.log1p(math.exp(v))) for v in h]  # Mish
        x = h
    assert len(x) == 1
    return x[0]


class FakePi:
    """A closed-form policy: ``mu = W z``, ``log_std = c``, ``a = tanh(mu + exp(c) eps)``, log-prob of SPEC section 1."""

    def __init__(self, L, A, seed=1, c=-0.7):
        g = torch.Generator().manual_seed(seed)
        self.W = 0.8 * torch.randn(A, L, generator=g, dtype=F64)
        self.c = c

    def __call__(self, z, eps=None, generator=None):
        mu = z @ self.W.T
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        log_std = torch.full_like(mu, self.c)
        a = torch.tanh(mu + eps * math.exp(self.c))
        A = mu.shape[-1]
        lp = A * ((-0.5 * eps.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi))
        lp = lp - torch.log(torch.relu(1 - a.pow(2)) + 1e-6).sum(-1)
        return torch.tanh(mu), a, lp, log_std

    def hand(self, z, eps):
        """(action list, log-prob) for one sample."""
        A, L = self.W.shape
        mu = [sum(float(self.W[i, j]) * float(z[j]) for j in range(L)) for i in range(A)]
        a = [math.tanh(mu[i] + math.exp(self.c) * float(eps[i])) for i in range(A)]
        gauss = sum(-0.5 * float(eps[i]) ** 2 - self.c for i in range(A)) - 0.5 * math.log(2 * math.pi)
        return a, A * gauss - sum(math.log(max(1 - v * v, 0.0) + 1e-6) for v in a)


class FakeDynamics:
    """``z' = tanh(M z + K a)``."""

    def __init__(self, L, A, seed=2):
        g = torch.Generator().manual_seed(seed)
        self.M = 0.7 * torch.randn(L, L, generator=g, dtype=F64)
        self.K = 0.7 * torch.randn(L, A, generator=g, dtype=F64)

    def __call__(self, z, a):
        return torch.tanh(z @ self.M.T + a @ self.K.T)

    def hand(self, z, a):
        L, A = self.K.shape
        return [
            math.tanh(
                sum(float(self.M[i, j]) * float(z[j]) for j in range(L))
                + sum(float(self.K[i, j]) * float(a[j]) for j in range(A))
            )
            for i in range(L)
        ]


def hand_qmin(q, pair, z, a, target=False):
    return min(hand_head(q, int(pair[0]), z, a, target), hand_head(q, int(pair[1]), z, a, target))


def hand_qavg(q, pair, z, a, target=False):
    return 0.5 * (hand_head(q, int(pair[0]), z, a, target) + hand_head(q, int(pair[1]), z, a, target))


def rand(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def pairs(rows, seed=0, num_q=5):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_q, generator=g)[:2] for _ in range(rows)])


def make_noise(H, N, nb, A, num_q=5, seed=10, gp=False):
    return iq.IQMPCCriticNoise(
        v0_eps=rand(N - nb, A, seed=seed),
        v0_heads=torch.tensor([3, 1]),
        next_eps=rand(H, N, A, seed=seed + 1),
        next_heads=torch.tensor([0, 4]),
        dec_eps=rand(H, N, A, seed=seed + 2),
        dec_heads=pairs(H, seed + 3, num_q),
        dec_next_heads=pairs(H, seed + 4, num_q),
        gp_u=torch.rand(H, num_q, nb, generator=torch.Generator().manual_seed(seed + 5), dtype=F64) if gp else None,
        gp_heads=pairs(H * num_q, seed + 6, num_q).view(H, num_q, 2) if gp else None,
    )


# =============================================================================== constants
def test_release_coefficients():
    assert iq.CHI2_COEF == 0.5 and iq.CHI2_ALPHA == 0.5
    assert iq.CONSISTENCY_COEF == 20.0 and iq.CRITIC_COEF == 0.1
    assert iq.ENTROPY_COEF == 1e-4 and iq.GRAD_PEN_COEF == 1.0 and iq.GRAD_PEN_DEFAULT is False
    assert iq.NUM_Q == 5 and iq.TAU == 0.01 and iq.RHO == 0.5 and iq.GRAD_CLIP_NORM == 20.0
    assert iq.BUFFER_SIZE == 1_000_000 and iq.USE_STEP_LR is False and iq.MPC_DEFAULT is True
    c, v = torch.tensor(2.0), torch.tensor(3.0)
    assert float(iq.iqmpc_total_loss(c, v)) == pytest.approx(20 * 2 + 0.1 * 3)


# =============================================================================== the scalar ensemble
def test_scalar_q_init_zero_output_and_target_copy():
    q = iq.ScalarQEnsemble(8, 2, mlp_dim=16, num_q=5, dropout=0.01)
    assert q.Qs.size == 5 and q.Qs.out_dim == 1 and q.Qs.in_dim == 10
    assert torch.count_nonzero(q.Qs.layers[-1].weight) == 0 and torch.count_nonzero(q.Qs.layers[-1].bias) == 0
    assert q.Qs.layers[0].dropout_p == 0.01 and q.Qs.layers[1].dropout_p == 0.0
    hidden_std = float(q.Qs.layers[0].weight.detach().std())
    assert 0.01 < hidden_std < 0.03  # truncated normal, std 0.02
    z, a = torch.randn(7, 8), torch.randn(7, 2)
    out = q(z, a, "all")
    assert out.shape == (5, 7) and torch.count_nonzero(out) == 0
    for p, pt in zip(q.Qs.parameters(), q.target_Qs.parameters()):
        assert torch.equal(p, pt) and not pt.requires_grad and p.data_ptr() != pt.data_ptr()
    q.train(True)
    assert q.Qs.training and not q.target_Qs.training


def test_scalar_q_heads_min_avg_all_against_hand():
    L, A = 3, 2
    q = make_q(L, A)
    z, a = rand(4, L, seed=1), rand(4, A, seed=2)
    with torch.no_grad():
        allq = q(z, a, "all")
        tq = q(z, a, "all", target=True)
    for i in range(4):
        for k in range(5):
            assert float(allq[k, i]) == pytest.approx(hand_head(q, k, z[i], a[i]), abs=ATOL)
            assert float(tq[k, i]) == pytest.approx(hand_head(q, k, z[i], a[i], target=True), abs=ATOL)
    pair = torch.tensor([4, 2])
    with torch.no_grad():
        mn, av = q(z, a, "min", heads=pair), q(z, a, "avg", heads=pair)
    for i in range(4):
        assert float(mn[i]) == pytest.approx(hand_qmin(q, pair, z[i], a[i]), abs=ATOL)
        assert float(av[i]) == pytest.approx(hand_qavg(q, pair, z[i], a[i]), abs=ATOL)
    # leading dimensions are free
    assert q(z.view(2, 2, L), a.view(2, 2, A), "all").shape == (5, 2, 2)


def test_scalar_q_soft_update_and_track_grad():
    q = make_q(3, 2)
    before = [p.clone() for p in q.target_Qs.parameters()]
    q.soft_update_target(0.25)
    for p, pt, b in zip(q.Qs.parameters(), q.target_Qs.parameters(), before):
        torch.testing.assert_close(pt, 0.75 * b + 0.25 * p)
    q.track_grad(False)
    assert not any(p.requires_grad for p in q.Qs.parameters())
    q.track_grad(True)
    assert all(p.requires_grad for p in q.Qs.parameters())


def test_scalar_q_from_config():
    cfg = CDREDConfig(latent_dim=16, mlp_dim=32, num_q=5, dropout=0.01, episode_length=100, kernels="reference")
    q = iq.ScalarQEnsemble.from_config(cfg, 3)
    assert (q.latent_dim, q.action_dim, q.num_q) == (16, 3, 5)
    assert q.Qs.layers[0].weight.shape == (5, 32, 19) and q.Qs.layers[-1].weight.shape == (5, 1, 32)


def test_scalar_q_shape_errors():
    q = make_q(3, 2)
    with pytest.raises(ValueError, match=r"z must be \[\.\.\., L=3\]"):
        q(torch.zeros(4, 5, dtype=F64), torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"a must be \[\.\.\., A=2\]"):
        q(torch.zeros(4, 3, dtype=F64), torch.zeros(4, 1, dtype=F64))
    with pytest.raises(ValueError, match="share their leading dimensions"):
        q(torch.zeros(4, 3, dtype=F64), torch.zeros(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="return_type"):
        q(torch.zeros(4, 3, dtype=F64), torch.zeros(4, 2, dtype=F64), "max")
    with pytest.raises(ValueError, match="heads must be an integer tensor"):
        q(torch.zeros(4, 3, dtype=F64), torch.zeros(4, 2, dtype=F64), "min", heads=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_q must be >= 2"):
        iq.ScalarQEnsemble(3, 2, num_q=1)


# =============================================================================== soft value
@pytest.mark.parametrize("target", [False, True])
def test_value_against_hand(target):
    L, A, c = 3, 2, 0.1
    q, pi = make_q(L, A), FakePi(L, A)
    z, eps, pair = rand(5, L, seed=3), rand(5, A, seed=4), torch.tensor([1, 3])
    v = iq.iqmpc_value(q, pi, z, target=target, entropy_coef=c, eps=eps, heads=pair)
    for i in range(5):
        act, lp = pi.hand(z[i], eps[i])
        expected = hand_qmin(q, pair, z[i], act, target) - c * lp
        assert float(v[i].detach()) == pytest.approx(expected, abs=ATOL)
    assert v.requires_grad != target  # V_bar has no gradient


# =============================================================================== critic loss
def hand_critic(q, pi, zs, action, next_z, nb, gamma, rho, c, noise, gp=None):
    """L_critic of SPEC section 6 by loops; ``gp[t][k]`` the penalties (or None)."""
    H, N = action.shape[0], action.shape[1]
    ne = N - nb
    y = [
        [
            gamma
            * (
                hand_qmin(q, noise.next_heads, next_z[t, i], pi.hand(next_z[t, i], noise.next_eps[t, i])[0], True)
                - c * pi.hand(next_z[t, i], noise.next_eps[t, i])[1]
            )
            for i in range(N)
        ]
        for t in range(H)
    ]
    v0 = 0.0
    for j in range(ne):
        act, lp = pi.hand(zs[0, nb + j], noise.v0_eps[j])
        v0 += (hand_qmin(q, noise.v0_heads, zs[0, nb + j], act) - c * lp) / ne
    total, qsum_e, qsum_b = 0.0, 0.0, 0.0
    for t in range(H):
        for k in range(5):
            d = [hand_head(q, k, zs[t, i], action[t, i]) - y[t][i] for i in range(N)]
            softq = -sum(d[nb:]) / ne
            chi2 = 1.0 / (4 * 0.5) * sum(v * v for v in d) / N
            l_tq = softq + (1 - gamma) * v0 + chi2 + (gp[t][k] if gp is not None else 0.0)
            total += rho**t * l_tq
            qsum_e += sum(hand_head(q, k, zs[t, i], action[t, i]) for i in range(nb, N))
            qsum_b += sum(hand_head(q, k, zs[t, i], action[t, i]) for i in range(nb))
    q_diff = qsum_e / (H * 5 * ne) - qsum_b / (H * 5 * nb)
    return total / (H * 5), v0, q_diff


def hand_decoded(q, pi, z_obs, action, next_z, gamma, c, noise):
    H, N = action.shape[:2]
    out = [[0.0] * N for _ in range(H)]
    for t in range(H):
        for i in range(N):
            act, lp = pi.hand(next_z[t, i], noise.dec_eps[t, i])
            out[t][i] = hand_qmin(q, noise.dec_heads[t], z_obs[t, i], action[t, i]) - gamma * (
                hand_qmin(q, noise.dec_next_heads[t], next_z[t, i], act) - c * lp
            )
    return out


@pytest.mark.parametrize("H,N,nb,A", [(3, 5, 2, 2), (1, 2, 1, 1)])  # defaults-like, and H = 1, A = 1, one sample each
def test_critic_loss_against_hand(H, N, nb, A):
    L, gamma, rho, c = 3, 0.9, 0.5, 0.1
    q, pi = make_q(L, A), FakePi(L, A)
    q.train(True)
    zs, action, next_z = rand(H + 1, N, L, seed=5), rand(H, N, A, seed=6, scale=0.5).clamp(-1, 1), rand(H, N, L, seed=7)
    noise = make_noise(H, N, nb, A)
    loss, stats = iq.iqmpc_critic_loss(q, pi, zs, action, next_z, nb, gamma, rho=rho, entropy_coef=c, noise=noise)
    expected, v0, q_diff = hand_critic(q, pi, zs, action, next_z, nb, gamma, rho, c, noise)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-9)
    assert float(stats["critic_loss"]) == pytest.approx(expected, abs=1e-9)
    assert float(stats["v0"]) == pytest.approx(v0, abs=1e-9)
    assert float(stats["q_diff"]) == pytest.approx(q_diff, abs=1e-9)
    assert float(stats["grad_pen"]) == 0.0
    # decoded reward on h(s_t) = [zs[0], next_z[:-1]] by default
    z_obs = torch.cat([zs[:1], next_z[:-1]])
    dec = hand_decoded(q, pi, z_obs, action, next_z, gamma, c, noise)
    flat = [v for row in dec for v in row]
    assert float(stats["decoded_reward"]) == pytest.approx(sum(flat) / len(flat), abs=1e-9)
    exp_e = sum(v for row in dec for v in row[nb:]) / (H * (N - nb))
    exp_b = sum(v for row in dec for v in row[:nb]) / (H * nb)
    assert float(stats["decoded_reward_expert"]) == pytest.approx(exp_e, abs=1e-9)
    assert float(stats["decoded_reward_behavioral"]) == pytest.approx(exp_b, abs=1e-9)
    direct = iq.decoded_reward(
        q,
        pi,
        z_obs,
        action,
        next_z,
        gamma,
        entropy_coef=c,
        eps=noise.dec_eps,
        heads=noise.dec_heads,
        next_heads=noise.dec_next_heads,
    )
    torch.testing.assert_close(direct, torch.tensor(dec, dtype=F64), atol=1e-9, rtol=0)


def test_critic_loss_explicit_z_obs():
    H, N, nb, L, A = 2, 4, 2, 3, 2
    q, pi = make_q(L, A), FakePi(L, A)
    zs, action, next_z, z_obs = (
        rand(H + 1, N, L, seed=5),
        rand(H, N, A, seed=6, scale=0.4),
        rand(H, N, L, seed=7),
        rand(H, N, L, seed=8),
    )
    noise = make_noise(H, N, nb, A)
    _, stats = iq.iqmpc_critic_loss(q, pi, zs, action, next_z, nb, 0.95, entropy_coef=0.1, noise=noise, z_obs=z_obs)
    dec = hand_decoded(q, pi, z_obs, action, next_z, 0.95, 0.1, noise)
    assert float(stats["decoded_reward"]) == pytest.approx(sum(v for r in dec for v in r) / (H * N), abs=1e-9)


def test_critic_loss_gradients_flow_as_released():
    """v0's gradient reaches the Q heads, the latents z_0 and the policy; next_z and the target get none."""
    H, N, nb, L, A = 2, 4, 2, 3, 2
    q = make_q(L, A)
    W = torch.nn.Parameter(rand(A, L, seed=9))

    def pi(z, eps=None, generator=None):
        mu = z @ W.T
        a = torch.tanh(mu + 0.5 * eps)
        return torch.tanh(mu), a, (-0.5 * eps.pow(2)).sum(-1) - torch.log(1 - a.pow(2) + 1e-6).sum(-1), mu

    zs = rand(H + 1, N, L, seed=5).requires_grad_(True)
    next_z = rand(H, N, L, seed=7).requires_grad_(True)
    action = rand(H, N, A, seed=6, scale=0.4)
    loss, _ = iq.iqmpc_critic_loss(q, pi, zs, action, next_z, nb, 0.95, entropy_coef=0.1, noise=make_noise(H, N, nb, A))
    loss.backward()
    assert next_z.grad is None
    assert all(p.grad is None for p in q.target_Qs.parameters())
    assert W.grad is not None and torch.count_nonzero(W.grad) > 0
    # z_0: behavioural rows only through Q_q(z_0, a_0); expert rows also through v0; the last latent unused
    assert torch.count_nonzero(zs.grad[0]) > 0 and torch.count_nonzero(zs.grad[H]) == 0
    assert all(p.grad is not None for p in q.Qs.parameters())


def test_critic_loss_default_noise_and_world_model_policy():
    """Runs with the real policy prior and drawn noise (dropout on); a generator makes it reproducible."""
    cfg = CDREDConfig(**SMALL_MODEL, kernels="reference")
    m = WorldModel(cfg, 5, 3)
    q = iq.ScalarQEnsemble.from_config(cfg, 3)
    with torch.no_grad():
        q.Qs.layers[-1].weight.normal_(0, 0.1)
    q.train(False)
    zs, action, next_z = torch.randn(4, 8, 16), torch.rand(3, 8, 3) * 2 - 1, torch.randn(3, 8, 16)
    out = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(3)
        loss, stats = iq.iqmpc_critic_loss(q, m.pi, zs, action, next_z, 4, 0.99, grad_pen=True, generator=gen)
        out.append(float(loss.detach()))
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert out[0] == out[1]


def test_critic_loss_shape_errors():
    H, N, nb, L, A = 2, 4, 2, 3, 2
    q, pi = make_q(L, A), FakePi(L, A)
    zs, action, next_z = rand(H + 1, N, L), rand(H, N, A), rand(H, N, L)
    call = lambda **kw: iq.iqmpc_critic_loss(
        q,
        pi,
        kw.get("zs", zs),
        kw.get("action", action),
        kw.get("next_z", next_z),
        kw.get("nb", nb),
        kw.get("gamma", 0.9),
        noise=kw.get("noise"),
        grad_pen=kw.get("grad_pen", False),
    )
    with pytest.raises(ValueError, match=r"zs must be \[H\+1, N, L=3\]"):
        call(zs=rand(N, L))
    with pytest.raises(ValueError, match=r"zs must be .*H >= 1"):
        call(zs=rand(1, N, L))
    with pytest.raises(ValueError, match=r"action must be \[2, 4, 2\]"):
        call(action=rand(H, N, A + 1))
    with pytest.raises(ValueError, match=r"next_z must be \[2, 4, 3\]"):
        call(next_z=rand(H + 1, N, L))
    with pytest.raises(ValueError, match="n_behavioral must be in"):
        call(nb=0)
    with pytest.raises(ValueError, match="n_behavioral must be in"):
        call(nb=N)
    with pytest.raises(ValueError, match="discount must be in"):
        call(gamma=1.0)
    with pytest.raises(ValueError, match="as many of each"):
        call(nb=1, grad_pen=True)
    with pytest.raises(ValueError, match=r"noise.v0_eps must be \[2, 2\]"):
        call(noise=make_noise(H, N, 1, A))
    with pytest.raises(ValueError, match=r"noise.gp_u must be \[2, 5, 2\]"):
        call(noise=make_noise(H, N, nb, A), grad_pen=True)


# =============================================================================== gradient penalty
def fd_grad_norm(q, pair, x, L, h=1e-6):
    """||grad_x Q_avg(x)|| by central differences (x a float list of length L + A)."""
    total = 0.0
    for j in range(len(x)):
        xp, xm = list(x), list(x)
        xp[j] += h
        xm[j] -= h
        d = (hand_qavg(q, pair, xp[:L], xp[L:]) - hand_qavg(q, pair, xm[:L], xm[L:])) / (2 * h)
        total += d * d
    return math.sqrt(total)


def hand_gp(q, pair, ze, ae, zb, ab, u, L, coef=1.0):
    vals = []
    for i in range(len(u)):
        xe = [float(v) for v in ze[i]] + [float(v) for v in ae[i]]
        xb = [float(v) for v in zb[i]] + [float(v) for v in ab[i]]
        x = [float(u[i]) * e + (1 - float(u[i])) * b for e, b in zip(xe, xb)]
        vals.append((fd_grad_norm(q, pair, x, L) - 1) ** 2)
    return coef * sum(vals) / len(vals)


def test_gradient_penalty_against_finite_differences():
    P, n, L, A = 3, 4, 3, 2
    q = make_q(L, A)
    ze, zb, ae, ab = rand(P, n, L, seed=1), rand(P, n, L, seed=2), rand(P, n, A, seed=3), rand(P, n, A, seed=4)
    u = torch.rand(P, n, generator=torch.Generator().manual_seed(5), dtype=F64)
    heads = pairs(P, 6)
    gp = iq.gradient_penalty(q, ze, ae, zb, ab, u, heads, coef=2.0)
    assert gp.shape == (P,)
    for p in range(P):
        assert float(gp[p].detach()) == pytest.approx(
            hand_gp(q, heads[p], ze[p], ae[p], zb[p], ab[p], u[p], L, 2.0), abs=1e-6
        )


def test_gradient_penalty_inputs_detached_and_heads_learn():
    P, n, L, A = 2, 3, 3, 2
    q = make_q(L, A)
    ze, zb = rand(P, n, L, seed=1).requires_grad_(True), rand(P, n, L, seed=2).requires_grad_(True)
    ae, ab = rand(P, n, A, seed=3), rand(P, n, A, seed=4)
    gp = iq.gradient_penalty(q, ze, ae, zb, ab, torch.full((P, n), 0.3, dtype=F64), pairs(P, 1))
    gp.sum().backward()
    assert ze.grad is None and zb.grad is None
    # every parameter but the last bias (which does not change grad_x Q) learns from the penalty
    last_bias = q.Qs.layers[-1].bias
    for p in q.Qs.parameters():
        if p is last_bias:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and torch.count_nonzero(p.grad) > 0


def test_gradient_penalty_at_zero_init_is_one_with_finite_gradient():
    """Zero last layer: Q is constant, grad 0, GP = (0 - 1)^2 = 1; the norm's backward at 0 stays finite."""
    q = make_q(3, 2, zero_last=True)
    gp = iq.gradient_penalty(
        q,
        rand(2, 3, 3),
        rand(2, 3, 2),
        rand(2, 3, 3, seed=1),
        rand(2, 3, 2, seed=1),
        torch.full((2, 3), 0.5, dtype=F64),
        pairs(2),
    )
    torch.testing.assert_close(gp, torch.ones(2, dtype=F64))
    gp.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in q.Qs.parameters() if p.grad is not None)


def test_gradient_penalty_fused_blocks_match_reference():
    """The fused LayerNorm-Mish op has no double backward: the penalty runs its Blocks on the
    reference path, so a fused ensemble gives the same value and parameter gradients."""
    from cdred_fast.layers import use_kernels

    P, n, L, A = 2, 3, 8, 2
    grads = []
    for kernels in ("reference", "fused"):
        q = make_q(L, A, hidden=8).to(torch.float32)
        use_kernels(q, kernels)
        gp = iq.gradient_penalty(
            q,
            rand(P, n, L).float(),
            rand(P, n, A).float(),
            rand(P, n, L, seed=1).float(),
            rand(P, n, A, seed=1).float(),
            torch.full((P, n), 0.4),
            pairs(P),
        )
        gp.sum().backward()
        grads.append(
            (gp.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in q.Qs.parameters()])
        )
        assert all(m.kernels == kernels for m in q.Qs.layers)  # restored after the penalty
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_critic_loss_with_grad_pen_against_hand():
    H, N, nb, L, A = 2, 4, 2, 3, 2
    gamma, rho, c = 0.9, 0.5, 0.1
    q, pi = make_q(L, A), FakePi(L, A)
    zs, action, next_z = rand(H + 1, N, L, seed=5), rand(H, N, A, seed=6, scale=0.5), rand(H, N, L, seed=7)
    noise = make_noise(H, N, nb, A, gp=True)
    loss, stats = iq.iqmpc_critic_loss(
        q, pi, zs, action, next_z, nb, gamma, rho=rho, entropy_coef=c, noise=noise, grad_pen=True, grad_pen_coef=1.0
    )
    gp = [
        [
            hand_gp(
                q, noise.gp_heads[t, k], zs[t, nb:], action[t, nb:], zs[t, :nb], action[t, :nb], noise.gp_u[t, k], L
            )
            for k in range(5)
        ]
        for t in range(H)
    ]
    expected, _, _ = hand_critic(q, pi, zs, action, next_z, nb, gamma, rho, c, noise, gp=gp)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
    assert float(stats["grad_pen"]) == pytest.approx(sum(sum(r) for r in gp) / (H * 5), abs=1e-6)
