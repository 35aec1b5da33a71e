"""CDREDAgent (SPEC section 3): every loss term against a hand computation, the update's side
effects, acting, and checkpoints. Networks are used as black boxes here (they are checked in
test_layers.py / test_world_model.py); the loss arithmetic is redone with numpy loops.
"""

import io
import math

import numpy as np
import pytest
import torch
from testing_utils import (
    BF16_UNIT_ROUNDOFF,
    SMALL_MODEL,
    cpu_bf16_features,
)

from cdred_fast.agent import CDREDAgent, RunningScale
from cdred_fast.config import CDREDConfig
from cdred_fast.planner import trajectory_value
from cdred_fast.precision import (
    AUTO_ACT_MIN_WIDTH,
    FLOAT32_CLASS_BOUND,
    acting_width,
    cpu_native_bf16,
    describe,
    matmul_precision,
    matmul_precisions,
    medium_is_float32_class,
    medium_matmul_error,
    resolve_matmul_precision,
)

OBS, ACT, B, H = 6, 2, 8, 3
UPDATE_KEYS = {
    "consistency_loss",
    "value_loss",
    "reward_loss",
    "pi_loss",
    "total_loss",
    "grad_norm",
    "pi_grad_norm",
    "reward_expert",
    "reward_behavioral",
    "q_gap",
    "pi_scale",
    "lr",
}


def small_cfg(**kw):
    base = dict(
        SMALL_MODEL,
        batch_size=B,
        horizon=H,
        num_samples=32,
        num_elites=4,
        num_pi_trajs=4,
        kernels="reference",
        dropout=0.0,
    )
    base.update(kw)
    return CDREDConfig(**base)


def make_agent(seed=0, **kw):
    torch.manual_seed(seed)
    agent = CDREDAgent(small_cfg(**kw), OBS, ACT)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # give the zero-initialised Q heads (and their target copy) some structure
        for p, pt in zip(agent.model.Qs.parameters(), agent.model.target_Qs.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
            pt.add_(torch.randn(p.shape, generator=g) * 0.5)
    return agent


def make_batches(seed=1):
    g = torch.Generator().manual_seed(seed)
    beh = {"obs": torch.randn(H + 1, B, OBS, generator=g), "action": torch.rand(H, B, ACT, generator=g) * 2 - 1}
    exp = {"obs": torch.randn(H + 1, B, OBS, generator=g) + 1.0, "action": torch.rand(H, B, ACT, generator=g) * 2 - 1}
    return beh, exp


# --------------------------------------------------------------------------- numpy helpers
def np_(t):
    return t.detach().double().numpy()


def np_decode(logits, vmin=-10.0, vmax=10.0):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    s = (e / e.sum(-1, keepdims=True) * np.linspace(vmin, vmax, logits.shape[-1])).sum(-1)
    return np.sign(s) * np.expm1(np.abs(s))


def np_ce(logits, y, nb=101, vmin=-10.0, vmax=10.0):
    """Cross-entropy of one logit vector against the two-hot of the scalar y."""
    s = min(max(np.sign(y) * np.log1p(abs(y)), vmin), vmax)
    pos = (s - vmin) / ((vmax - vmin) / (nb - 1))
    lo = min(int(np.floor(pos)), nb - 2)
    target = np.zeros(nb)
    target[lo], target[lo + 1] = 1 - (pos - lo), pos - lo
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    return -(target * logp).sum()


def hand_losses(agent, beh, exp, noise):
    """Steps 1-8 of SPEC section 3, each half of the batch computed on its own."""
    cfg, m = agent.cfg, agent.model
    gamma, rho = agent.discount, cfg.rho
    out = {"zs": {}, "rewards": {}}
    cons = value = rew = 0.0
    halves = {"beh": (beh, slice(0, B)), "exp": (exp, slice(B, 2 * B))}
    per_half = {}
    for name, (batch, cols) in halves.items():
        obs, act = batch["obs"], batch["action"]
        with torch.no_grad():
            next_z = [m.encode(obs[t + 1]) for t in range(H)]
            zs = [m.encode(obs[0])]
            for t in range(H):
                zs.append(m.next(zs[-1], act[t]))
            rewards = [np_(m.reward_model(torch.cat([zs[t], act[t]], -1))) for t in range(H)]
            y = []
            for t in range(H):
                a_next = m.pi(next_z[t], eps=noise.td_eps[t, cols])[1]
                tl = np_(m.target_Qs(torch.cat([next_z[t], a_next], -1)))  # [num_q, B, bins]
                heads = noise.td_heads.tolist()
                qmin = np.minimum(np_decode(tl[heads[0]]), np_decode(tl[heads[1]]))
                y.append(rewards[t] + gamma * qmin)
            online = [np_(m.Qs(torch.cat([zs[t], act[t]], -1))) for t in range(H)]
            x = [torch.cat([zs[t], act[t]], -1) for t in range(H)]
            pred = m.reward_model.expert_predictor if name == "exp" else m.reward_model.behavioral_predictor
            preds = [np_(pred(x[t])) for t in range(H)]
            targets = [
                [np_(m.reward_model.target_nets.member(k)(x[t])) for k in range(cfg.num_targets)] for t in range(H)
            ]
        per_half[name] = dict(
            zs=zs, next_z=next_z, rewards=rewards, y=y, online=online, preds=preds, targets=targets, cols=cols
        )

    for t in range(H):
        sq = [((np_(h["zs"][t + 1]) - np_(h["next_z"][t])) ** 2) for h in per_half.values()]
        cons += rho**t * np.concatenate(sq).mean()  # MSE over all 2B samples
        for q in range(cfg.num_q):
            ces = [np_ce(h["online"][t][q, i], h["y"][t][i]) for h in per_half.values() for i in range(B)]
            value += rho**t * np.mean(ces)
        for h in per_half.values():
            idx = noise.target_idx[t, h["cols"]].tolist()
            losses = [((h["preds"][t][i] - h["targets"][t][idx[i]][i]) ** 2).sum() / cfg.rnd_dim for i in range(B)]
            rew += rho**t * np.mean(losses)
    out["consistency"] = cons / H
    out["value"] = value / (H * cfg.num_q)
    out["reward"] = rew / H
    out["total"] = 20 * out["consistency"] + 0.1 * out["value"] + 0.1 * out["reward"]
    out["reward_expert"] = np.mean(per_half["exp"]["rewards"])
    out["reward_behavioral"] = np.mean(per_half["beh"]["rewards"])
    out["td"] = np.concatenate([np.stack(per_half["beh"]["y"]), np.stack(per_half["exp"]["y"])], axis=1)
    out["zs"] = torch.cat([torch.stack(per_half["beh"]["zs"]), torch.stack(per_half["exp"]["zs"])], dim=1)
    return out


def hand_policy_loss(agent, zs, noise, scale_before):
    cfg, m = agent.cfg, agent.model
    with torch.no_grad():
        terms = []
        qs, logps = [], []
        for t in range(H + 1):
            _, a, logp, _ = m.pi(zs[t], eps=noise.pi_eps[t])
            logits = np_(m.Qs(torch.cat([zs[t], a], -1)))
            h0, h1 = noise.pi_heads.tolist()
            qs.append(np.minimum(np_decode(logits[h0]), np_decode(logits[h1])))
            logps.append(np_(logp))
    p5, p95 = np.percentile(qs[0], 5), np.percentile(qs[0], 95)  # linear interpolation
    S = scale_before + cfg.tau * (max(p95 - p5, 1.0) - scale_before)
    for t in range(H + 1):
        terms.append(cfg.rho**t * np.mean(cfg.entropy_coef * logps[t] - qs[t] / S))
    return np.mean(terms), S, p95 - p5


# --------------------------------------------------------------------------- loss terms by hand
def test_losses_match_hand_computation():
    agent = make_agent(entropy_coef=0.1)
    beh, exp = make_batches()
    noise = agent.draw_noise(2 * B, torch.Generator().manual_seed(7))
    obs, action, nb = agent._concat(beh, exp)
    got = agent.compute_losses(obs, action, nb, noise)
    want = hand_losses(agent, beh, exp, noise)
    for key in ("consistency", "value", "reward", "total"):
        assert got[key].item() == pytest.approx(want[key], rel=1e-4, abs=1e-7), key
    np.testing.assert_allclose(np_(got["td_targets"]), want["td"], rtol=1e-4, atol=1e-5)
    assert abs(want["reward_expert"] - want["reward_behavioral"]) > 1e-4  # halves distinguishable

    loss, S, spread = hand_policy_loss(agent, want["zs"], noise, 1.0)
    assert spread > 1.0  # the percentile range (not the floor of 1) sets S here
    got_pi = agent.policy_loss(got["zs"], noise)
    assert agent.scale.value.item() == pytest.approx(S, rel=1e-5)
    assert got_pi.item() == pytest.approx(loss, rel=1e-4, abs=1e-7)


def test_running_scale():
    s = RunningScale(tau=0.5)
    s.update(torch.linspace(0, 0.5, 11))  # range below 1 -> clamp to 1 -> stays 1
    assert s.value.item() == pytest.approx(1.0)
    x = torch.arange(101.0)
    s.update(x)  # P95 - P5 = 90 -> 1 + 0.5 * (90 - 1)
    assert s.value.item() == pytest.approx(45.5)
    torch.testing.assert_close(s(torch.tensor([91.0])), torch.tensor([2.0]))


# --------------------------------------------------------------------------- the update
def test_update_side_effects_and_stats():
    agent = make_agent(entropy_coef=0.1)
    m = agent.model
    beh, exp = make_batches()
    noise = agent.draw_noise(2 * B, torch.Generator().manual_seed(7))
    want = hand_losses(agent, beh, exp, noise)

    snap = {k: v.detach().clone() for k, v in m.state_dict().items()}
    stats = agent.update(beh, exp, generator=torch.Generator().manual_seed(7))
    after = m.state_dict()

    assert UPDATE_KEYS <= set(stats) and all(math.isfinite(v) for v in stats.values())
    for key in ("consistency", "value", "reward", "total"):
        assert stats[f"{key}_loss"] == pytest.approx(want[key], rel=1e-4, abs=1e-7)
    assert stats["reward_expert"] == pytest.approx(want["reward_expert"], rel=1e-4, abs=1e-6)
    assert stats["reward_behavioral"] == pytest.approx(want["reward_behavioral"], rel=1e-4, abs=1e-6)
    # (the policy step runs after the model step, so its Q differs from the hand one: S is
    # checked by hand in test_losses_match_hand_computation)
    assert stats["pi_scale"] >= 1.0
    assert stats["grad_norm"] > 0 and stats["pi_grad_norm"] > 0

    # targets never trained; every trained part moved
    for k in snap:
        if k.startswith("reward_model.target_nets."):
            assert torch.equal(snap[k], after[k]), k
    for prefix in (
        "reward_model.expert_predictor.",
        "reward_model.behavioral_predictor.",
        "encoder.",
        "dynamics.",
        "Qs.",
        "pi_net.",
    ):
        assert any(not torch.equal(snap[k], after[k]) for k in snap if k.startswith(prefix)), prefix
    # Polyak target: Q_bar <- (1 - tau) Q_bar + tau Q
    tau = agent.cfg.tau
    for k in snap:
        if k.startswith("target_Qs."):
            online = after["Qs." + k[len("target_Qs.") :]]
            torch.testing.assert_close(after[k], (1 - tau) * snap[k] + tau * online)
    assert not m.training and agent.step == 1


def test_optimizer_groups_and_lr_schedule():
    agent = make_agent(lr=1e-3, enc_lr_scale=0.3, lr_step=2, lr_gamma=0.5, pi_lr=2e-3)
    lrs = [g["lr"] for g in agent.optim.param_groups]
    assert lrs[0] == pytest.approx(3e-4) and all(lr == pytest.approx(1e-3) for lr in lrs[1:])
    assert agent.pi_optim.param_groups[0]["eps"] == 1e-5
    opt_ids = {id(p) for g in agent.optim.param_groups for p in g["params"]}
    assert not any(id(p) in opt_ids for p in agent.model.reward_model.target_nets.parameters())
    assert not any(id(p) in opt_ids for p in agent.model.target_Qs.parameters())
    assert not any(id(p) in opt_ids for p in agent.model.pi_net.parameters())
    beh, exp = make_batches()
    stats = [agent.update(beh, exp) for _ in range(4)]
    assert [s["lr"] for s in stats] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    assert [s["pi_lr"] for s in stats] == pytest.approx([2e-3, 1e-3, 1e-3, 5e-4])
    assert agent.optim.param_groups[0]["lr"] == pytest.approx(0.3 * 2.5e-4)


def test_update_decreases_predictor_loss():
    agent = make_agent(lr=1e-3)
    beh, exp = make_batches()
    noise = agent.draw_noise(2 * B, torch.Generator().manual_seed(0))
    obs, action, nb = agent._concat(beh, exp)

    def predictor_loss():
        with torch.no_grad():
            return agent.compute_losses(obs, action, nb, noise)["reward"].item()

    before = predictor_loss()
    for i in range(15):
        agent.update(beh, exp, generator=torch.Generator().manual_seed(i))
    assert predictor_loss() < 0.7 * before


def test_grad_clipping_bounds_the_step():
    agent = make_agent(grad_clip_norm=1e-8)
    beh, exp = make_batches()
    stats = agent.update(beh, exp)
    assert stats["grad_norm"] > 1e-8  # reported norm is the pre-clip norm
    # after clipping, the gradients Adam saw have norm <= clip
    grads = [p.grad for g in agent.optim.param_groups for p in g["params"] if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) <= 1e-8 * 1.01


def test_bad_batch_shapes():
    agent = make_agent()
    beh, exp = make_batches()
    bad = {"obs": beh["obs"][:H], "action": beh["action"]}
    with pytest.raises(ValueError, match="behavioral_batch"):
        agent.update(bad, exp)
    bad = {"obs": exp["obs"], "action": exp["action"][..., :1]}
    with pytest.raises(ValueError, match="expert_batch"):
        agent.update(beh, bad)


# --------------------------------------------------------------------------- acting
def test_act_policy_prior():
    agent = make_agent(mpc=False)
    obs = np.random.default_rng(0).standard_normal(OBS).astype(np.float32)
    a_eval = agent.act(obs, eval_mode=True)
    with torch.no_grad():
        mu = agent.model.pi(agent.model.encode(torch.as_tensor(obs)[None]))[0][0]
    torch.testing.assert_close(a_eval, mu)
    a = agent.act(obs, generator=torch.Generator().manual_seed(0))
    assert a.shape == (ACT,) and not torch.allclose(a, a_eval)


def test_act_mpc_shape_range_and_reproducible():
    agent = make_agent()
    obs = torch.randn(OBS)
    a1 = agent.act(obs, t0=True, generator=torch.Generator().manual_seed(0))
    a2 = agent.act(obs, t0=True, generator=torch.Generator().manual_seed(0))
    assert a1.shape == (ACT,) and a1.device.type == "cpu" and (a1.abs() <= 1).all()
    torch.testing.assert_close(a1, a2)


# --------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_weights_only():
    agent = make_agent(seed=0)
    beh, exp = make_batches()
    for i in range(2):
        agent.update(beh, exp, generator=torch.Generator().manual_seed(i))
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert any(k.startswith("reward_model.target_nets.") for k in state["model"])

    other = make_agent(seed=123)  # different random targets / weights before loading
    x = torch.randn(5, agent.cfg.latent_dim + ACT)
    assert not torch.allclose(other.model.reward_model(x), agent.model.reward_model(x))
    other.load_state_dict(state)
    torch.testing.assert_close(other.model.reward_model(x), agent.model.reward_model(x))
    assert other.step == agent.step == 2
    assert other.scale.value.item() == agent.scale.value.item()

    obs = torch.randn(OBS)
    a1 = agent.act(obs, t0=True, generator=torch.Generator().manual_seed(5))
    a2 = other.act(obs, t0=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a1, a2)

    # optimiser and scheduler state came along: the next update is identical
    s1 = agent.update(beh, exp, generator=torch.Generator().manual_seed(9))
    s2 = other.update(beh, exp, generator=torch.Generator().manual_seed(9))
    assert s1 == pytest.approx(s2, rel=1e-6)


def test_fused_kernels_use_fused_adam_and_checkpoints_load_across_kernels():
    """kernels="fused" updates with torch's fused Adam, "reference" with the for-loop one (same
    rule); the optimiser state of either loads into the other, and the next update agrees."""
    beh, exp = make_batches()
    agents = {k: make_agent(seed=0, kernels=k, dropout=0.0) for k in ("fused", "reference")}
    for kernels, agent in agents.items():
        assert bool(agent.optim.defaults["fused"]) == bool(agent.pi_optim.defaults["fused"]) == (kernels == "fused")
        agent.update(beh, exp, generator=torch.Generator().manual_seed(0))
    for src, dst in (("reference", "fused"), ("fused", "reference")):
        buf = io.BytesIO()
        torch.save(agents[src].state_dict(), buf)
        other = make_agent(seed=1, kernels=dst, dropout=0.0)
        other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
        assert other.optim.state_dict()["state"].keys() == agents[src].optim.state_dict()["state"].keys()
        twin = make_agent(seed=1, kernels=src, dropout=0.0)  # src's state, src's kernels
        twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
        for agent in (other, twin):
            agent.update(beh, exp, generator=torch.Generator().manual_seed(3))
        for (name, p1), p2 in zip(twin.model.named_parameters(), other.model.parameters()):
            p1, p2 = p1.detach(), p2.detach()
            torch.testing.assert_close(p2, p1, rtol=1e-4, atol=1e-4 * float(p1.abs().max()) + 1e-7, msg=name)


@pytest.mark.parametrize("kernels", ["fused", "reference"])
def test_one_target_evaluation_equals_separate_reward_and_loss(kernels):
    """The update's shared path (targets once) gives the rewards, losses and gradients of the
    separate reward() and predictor_loss() calls."""
    agent = make_agent(kernels=kernels)
    rm = agent.model.reward_model
    g = torch.Generator().manual_seed(3)
    H, N, nb = 3, 10, 4
    x = torch.randn(H, N, rm.in_dim, generator=g, requires_grad=True)
    idx = torch.randint(rm.num_targets, (H, N), generator=g)
    rewards, le, lb = rm.reward_and_predictor_loss(x, nb, idx[:, nb:], idx[:, :nb])
    grads = torch.autograd.grad((le.sum() + 2 * lb.sum()), [x, *rm.predictor_parameters()])

    x2 = x.detach().clone().requires_grad_(True)
    ref_rewards = rm(x2.detach())
    flat = lambda t: t.reshape(-1, t.shape[-1])
    le2, lb2 = rm.predictor_loss(
        flat(x2[:, nb:]), flat(x2[:, :nb]), idx_expert=idx[:, nb:].reshape(-1), idx_behavioral=idx[:, :nb].reshape(-1)
    )
    grads2 = torch.autograd.grad((le2.sum() + 2 * lb2.sum()), [x2, *rm.predictor_parameters()])

    assert not rewards.requires_grad
    torch.testing.assert_close(rewards, ref_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(le.reshape(-1), le2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lb.reshape(-1), lb2, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kernels", ["fused", "reference"])
def test_planning_reward_with_a_shared_latent_equals_the_full_input(kernels):
    """The planning reward of rows that all start from one latent (the first planning step) takes the
    x_shared path (shared_reward(z [L], a)); it must equal the reward on the materialised [z ; a] rows.
    float32 planning (bfloat16 reward networks: test_bf16_planning.py)."""
    agent = make_agent(kernels=kernels, planning_precision="float32")
    m, fns = agent.model, agent.rollout_functions()
    g = torch.Generator().manual_seed(4)
    z = torch.randn(agent.cfg.latent_dim, generator=g)
    a = torch.rand(7, agent.action_dim, generator=g) * 2 - 1
    z = z.expand(7, -1)
    shared = fns.shared_reward(z[0], a)
    full = fns.reward(z.contiguous(), a)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full, m.reward_model(torch.cat([z, a], -1), impl="reference"), rtol=1e-5, atol=1e-6)


def test_fused_and_reference_agents_give_the_same_updates():
    """Same weights, same batches, same random draws: kernels='fused' and kernels='reference'
    produce the same statistics and the same parameters over several updates (float32;
    the fused reward, ensemble forward and MPPI ops differ from the reference by rounding)."""
    fused, ref = make_agent(kernels="fused"), make_agent(kernels="reference")
    ref.model.load_state_dict(fused.model.state_dict())
    beh, exp = make_batches()
    for step in range(3):
        s_f = fused.update(beh, exp, generator=torch.Generator().manual_seed(10 + step))
        s_r = ref.update(beh, exp, generator=torch.Generator().manual_seed(10 + step))
        assert s_f.keys() == s_r.keys()
        for k in s_f:
            assert s_f[k] == pytest.approx(s_r[k], rel=1e-4, abs=1e-5), (step, k)
    for (name, a), b in zip(fused.model.state_dict().items(), ref.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    obs = torch.randn(OBS)
    a_f = fused.act(obs, t0=True, generator=torch.Generator().manual_seed(5))
    a_r = ref.act(obs, t0=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a_f, a_r, rtol=1e-4, atol=5e-4)


def test_matmul_precision_is_set_while_acting_and_updating_then_restored():
    """cfg.matmul_precision holds inside act() and update() (seen from inside the networks) and the
    caller's setting is restored afterwards, also when the update raises."""
    agent = make_agent(kernels="fused", matmul_precision="medium")
    seen = []
    agent.model.dynamics.register_forward_hook(lambda *a: seen.append(torch.get_float32_matmul_precision()))
    before = torch.get_float32_matmul_precision()
    assert before == "highest"
    agent.act(torch.randn(OBS), t0=True, generator=torch.Generator().manual_seed(0))
    beh, exp = make_batches()
    agent.update(beh, exp, generator=torch.Generator().manual_seed(1))
    assert seen and set(seen) == {"medium"}
    assert torch.get_float32_matmul_precision() == before
    bad = {**beh, "obs": beh["obs"][:, :, :3]}
    with pytest.raises(ValueError):
        agent.update(bad, exp)
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        small_cfg(matmul_precision="bf16")


def test_matmul_precision_after_the_callers_per_backend_settings():
    """A caller that used torch's per-backend API (``torch.backends.cuda.matmul.fp32_precision``),
    after which ``torch.get_float32_matmul_precision()`` raises, can still act and update: the
    agent's precision context saves and restores the per-backend settings."""
    backends = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        with pytest.raises(RuntimeError, match="legacy and new APIs"):
            torch.get_float32_matmul_precision()
        before = tuple(b.fp32_precision for b in backends)
        agent = make_agent(kernels="fused", matmul_precision="medium")
        seen = []
        agent.model.dynamics.register_forward_hook(lambda *a: seen.append(torch.get_float32_matmul_precision()))
        agent.act(torch.randn(OBS), t0=True, generator=torch.Generator().manual_seed(0))
        agent.update(*make_batches(), generator=torch.Generator().manual_seed(1))
        assert seen and set(seen) == {"medium"}
        assert tuple(b.fp32_precision for b in backends) == before
    finally:
        torch.set_float32_matmul_precision("highest")  # every backend back to IEEE float32
    assert torch.get_float32_matmul_precision() == "highest"


def test_matmul_precision_auto_is_medium_where_its_products_stay_float32():
    """cfg.matmul_precision="auto": 'medium' on a CPU whose 'medium' products measure
    float32-class against float64 (oneDNN's float32 kernels); on an AMX CPU 'medium' for acting
    and 'highest' for the update; 'highest' where they would be bfloat16 on another CPU and on
    CUDA. On the AMX CPU acting uses 'medium' only for models whose widest acting layer is at
    least AUTO_ACT_MIN_WIDTH (256). The agent acts and updates in the resolved precisions, and the
    CLI's line names them."""
    e_medium, e_highest = medium_matmul_error()
    float32_class = e_medium <= FLOAT32_CLASS_BOUND
    assert medium_is_float32_class() is float32_class
    # the bound separates the two kinds of product: float32's error is far below it, and operands
    # rounded to bfloat16 (what 'medium' does on an AMX CPU) land far above it on the same data
    assert e_highest < FLOAT32_CLASS_BOUND / 16
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 256, generator=g), torch.randn(256, 256, generator=g)
    exact = x.double() @ w.double().t()
    rounded = (x.bfloat16().float() @ w.bfloat16().float().t()).double()
    assert ((rounded - exact).abs().max() / exact.abs().max()).item() > 4 * FLOAT32_CLASS_BOUND
    # on an AMX CPU, where it is bfloat16: acting only (results/amx-medium-seeds/, amx-medium-dmc/),
    # for wide models (bench/act_width_check.py)
    amx = "amx_bf16" in cpu_native_bf16()
    expected_act = "medium" if float32_class or amx else "highest"  # at SPEC's widths
    expected_narrow = "medium" if float32_class else "highest"  # below AUTO_ACT_MIN_WIDTH
    expected_update = "medium" if float32_class else "highest"
    assert AUTO_ACT_MIN_WIDTH == 256
    assert resolve_matmul_precision("auto", "cpu") == expected_act  # "act" and SPEC's widths by default
    assert resolve_matmul_precision("auto", "cpu", "act") == expected_act
    assert resolve_matmul_precision("auto", "cpu", "act", acting_width(CDREDConfig())) == expected_act
    assert resolve_matmul_precision("auto", "cpu", "act", 256) == expected_act
    assert resolve_matmul_precision("auto", "cpu", "act", 255) == expected_narrow
    assert resolve_matmul_precision("auto", "cpu", "update") == expected_update
    for width in (32, 255, 256, 1024):
        assert resolve_matmul_precision("auto", "cpu", "update", width) == expected_update
        assert resolve_matmul_precision("auto", "cuda", "act", width) == "highest"
    with pytest.raises(ValueError, match="width must be a positive layer width"):
        resolve_matmul_precision("auto", "cpu", "act", 0)
    assert (
        resolve_matmul_precision("auto", "cuda", "act")
        == "highest"
        == resolve_matmul_precision("auto", "cuda", "update")
    )
    for p in ("highest", "high", "medium"):
        for phase in ("act", "update"):
            assert resolve_matmul_precision(p, "cpu", phase) == p == resolve_matmul_precision(p, "cuda", phase)
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        resolve_matmul_precision("low", "cpu")
    with pytest.raises(ValueError, match="phase must be one of"):
        resolve_matmul_precision("auto", "cpu", "plan")
    with pytest.raises(ValueError, match="resolve it first"):
        with matmul_precision("auto"):
            pass
    # SMALL_MODEL is 32 wide; with predictors of 256 the model is wide (acting_width: the widest
    # of the MLPs and, for CDRED, the reward networks)
    for extra, act in (({}, expected_narrow), ({"rnd_predictor_hidden": (256, 256)}, expected_act)):
        assert acting_width(small_cfg(**extra)) == (256 if extra else 32)
        assert matmul_precisions(small_cfg(matmul_precision="auto", **extra), "cpu") == (act, expected_update)
        agent = make_agent(kernels="fused", matmul_precision="auto", **extra)
        seen = []
        agent.model.dynamics.register_forward_hook(
            lambda *a, seen=seen: seen.append(torch.get_float32_matmul_precision())
        )
        agent.act(torch.randn(OBS), t0=True, generator=torch.Generator().manual_seed(0))
        assert seen and set(seen) == {act}, (extra, seen, e_medium, e_highest, cpu_bf16_features())
        seen.clear()
        agent.update(*make_batches(), generator=torch.Generator().manual_seed(1))
        assert seen and set(seen) == {expected_update}, (extra, seen, e_medium, e_highest, cpu_bf16_features())
        assert torch.get_float32_matmul_precision() == "highest"
        line = describe(small_cfg(matmul_precision="auto", **extra), "cpu")
        if act == expected_update:
            assert f"matmul_precision {act} (auto)" in line
        else:
            assert f"matmul_precision {act} acting, {expected_update} in the update (auto)" in line
    # the reward networks count for CDRED only: a TD-MPC2 agent of the same config is 32 wide
    assert acting_width(small_cfg(method="tdmpc2", rnd_predictor_hidden=(256, 256))) == 32


def _plan_values(precision):
    """Sequence values G of 64 random action sequences from one latent (the quantity MPPI ranks),
    computed under ``matmul_precision(precision)``, or under the process default when None."""
    agent = make_agent(
        kernels="fused", matmul_precision=precision or "highest", mlp_dim=256, rnd_predictor_hidden=(256, 256)
    )
    with torch.no_grad(), agent.model.planning():
        z = agent.model.encode(torch.randn(1, OBS, generator=torch.Generator().manual_seed(0)))
        actions = torch.rand(H, 64, ACT, generator=torch.Generator().manual_seed(1)) * 2 - 1
        estimate = lambda: trajectory_value(  # noqa: E731
            agent.rollout_functions(torch.Generator().manual_seed(2)), z.expand(64, -1), actions, agent.discount
        )
        if precision is None:
            return estimate()
        with matmul_precision(precision):
            return estimate()


def test_matmul_precision_medium_stays_close_to_float32():
    """'medium' changes the plan's sequence values by no more than its products' precision allows.

    What 'medium' does depends on the CPU, so the bound is chosen from a direct measurement
    (precision.medium_matmul_error: float32 products under 'medium' vs float64):

    * float32-class products ('medium' is plain float32, or - as measured on this project's
      AMD EPYC with AVX512-BF16 but no AMX - accurate to ~6e-7 relative): the values agree to
      float32 rounding of reordered sums; bound 1e-4 relative (measured there: 3.7e-6).
    * bf16 products (Intel Xeon with AMX-BF16, through oneDNN: inputs rounded to bfloat16, unit
      roundoff u = 2**-8): to first order each product on the deepest path to G adds a relative
      error of about 2u (both operands rounded), and LayerNorm, Mish, SimNorm and the two-hot
      decoding do not amplify it. That path is H dynamics steps, then pi and a Q head, three
      Linear layers each (SPEC section 1): depth 3H + 6 = 15 at H = 3, bound 15 * 2u = 0.117
      relative (measured on such a Xeon: 3.05e-2).

    Also 'highest' inside the context manager is bit-identical to the process default.
    """
    assert torch.get_float32_matmul_precision() == "highest"  # the process default
    default, highest, medium = _plan_values(None), _plan_values("highest"), _plan_values("medium")
    assert torch.equal(highest, default)
    err = ((medium - highest).abs().max() / highest.abs().max()).item()
    e_medium, e_highest = medium_matmul_error()
    if e_medium > FLOAT32_CLASS_BOUND:
        depth = 3 * H + 3 + 3
        bound, kind = depth * 2 * BF16_UNIT_ROUNDOFF, "bf16"
    else:
        bound, kind = 1e-4, "float32-class"
    report = (
        f"medium vs highest: max relative difference {err:.2e}, bound {bound:.2e} ({kind} products: "
        f"probe error medium {e_medium:.1e}, highest {e_highest:.1e}; {cpu_bf16_features()})"
    )
    print(report)
    assert err < bound, report
