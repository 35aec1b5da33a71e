"""method="iqmpc" end to end (SPEC.md section 6): the agent's update (clip over all model parameters,
no StepLR, the gradient penalty), the soft-return MPPI plan (against soft_planning_return, fused
against reference), checkpoints, and a tiny run through the cdred-fast command with --resume and eval.
"""

import copy
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from testing_utils import TINY, needs_cuda

from cdred_fast import CDREDConfig
from cdred_fast.agent import CDREDAgent
from cdred_fast.checkpoint import agent_from_checkpoint, load_checkpoint
from cdred_fast.methods import iqmpc as iq
from cdred_fast.planner import trajectory_value
from cdred_fast.world_model import ScalarQEnsemble, choose_two_heads, randn

OBS, ACT, H = 6, 2, 3


def make_agent(**over) -> CDREDAgent:
    return CDREDAgent(CDREDConfig(**{**TINY, "method": "iqmpc", "episode_length": 100, **over}), OBS, ACT)


def batches(seed: int, B: int = 8):
    g = torch.Generator().manual_seed(seed)

    def one():
        return {"obs": torch.randn(H + 1, B, OBS, generator=g), "action": torch.rand(H, B, ACT, generator=g) * 2 - 1}

    return one(), one()


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# =============================================================================== the world model and the update
def test_world_model_has_the_scalar_critic_and_no_reward_part():
    agent = make_agent()
    m = agent.model
    assert isinstance(m.scalar_q, ScalarQEnsemble) and m.scalar_q.num_q == 5
    assert m.Qs is None and m.target_Qs is None and m.reward_model is None and m.reward_head is None
    assert not any(p.requires_grad for p in m.scalar_q.target_Qs.parameters())
    trained = {id(p) for group in agent.optim.param_groups for p in group["params"]}
    assert {id(p) for p in m.scalar_q.Qs.parameters()} <= trained
    assert not {id(p) for p in m.scalar_q.target_Qs.parameters()} & trained
    assert not {id(p) for p in m.pi_net.parameters()} & trained  # the policy has its own optimiser
    z, a = torch.randn(4, TINY["latent_dim"]), torch.rand(4, ACT)
    assert torch.equal(m.Q(z, a, "all"), torch.zeros(5, 4))  # zero-initialised last layers


def test_update_clips_all_model_parameters_and_has_no_step_lr(monkeypatch):
    """The clip sees every parameter of the model that can learn (encoder, dynamics, Q heads and
    the policy: not the target heads); grad_norm_release is that norm; the policy's gradient at the
    clip is its stale gradient from the previous update plus the world-model loss's (v0)."""
    agent = make_agent(dropout=0.0)
    m = agent.model
    assert agent.scheduler is None and agent.pi_scheduler is None
    assert agent.state_dict()["scheduler"] is None and agent.state_dict()["pi_scheduler"] is None

    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        seen.append(([id(p) for p in params], {id(p): p.grad.clone() for p in params if p.grad is not None}))
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    beh, exp = batches(0)
    agent.update(beh, exp, generator=torch.Generator().manual_seed(1))
    stale = [p.grad.clone() for p in m.pi_net.parameters()]
    everything = {id(p) for p in m.parameters() if p.requires_grad}
    assert set(seen[0][0]) == everything and len(seen[0][0]) == len(everything)
    assert {id(p) for p in m.pi_net.parameters()} <= everything
    assert not {id(p) for p in m.scalar_q.target_Qs.parameters()} & everything

    # the gradient the second update's world-model loss gives the policy (dropout 0: reproducible)
    beh, exp = batches(1)
    obs, action, nb = agent._concat(beh, exp)
    m.train(True)
    losses = agent.compute_losses(obs, action, nb, agent.draw_noise(obs.shape[1], torch.Generator().manual_seed(2)))
    g_v0 = torch.autograd.grad(losses["total"], list(m.pi_net.parameters()))
    m.train(False)

    seen.clear()
    stats = agent.update(beh, exp, generator=torch.Generator().manual_seed(2))
    grads = seen[0][1]
    for p, s, g in zip(m.pi_net.parameters(), stale, g_v0):
        torch.testing.assert_close(grads[id(p)], s + g, rtol=1e-5, atol=1e-8)
    total = math.sqrt(sum(float(g.double().square().sum()) for g in grads.values()))
    assert stats["grad_norm_release"] == pytest.approx(total, rel=1e-5)
    wm = math.sqrt(sum(float(grads[id(p)].double().square().sum()) for p in agent._wm_params if id(p) in grads))
    assert stats["grad_norm"] == pytest.approx(wm, rel=1e-5)
    assert stats["lr"] == agent.cfg.lr and stats["pi_scale"] == 1.0  # no StepLR, no running scale


def test_cdred_logs_the_release_norm_with_the_stale_policy_gradient(monkeypatch):
    """CDRED: the clip stays over the world-model optimiser's parameters; grad_norm_release adds the
    policy's stale gradient, as the released clip over model.parameters() saw it."""
    agent = CDREDAgent(CDREDConfig(**TINY, episode_length=100), OBS, ACT)
    beh, exp = batches(0)
    first = agent.update(beh, exp)
    assert first["grad_norm_release"] == pytest.approx(first["grad_norm"], rel=1e-6)  # no stale gradient yet
    stale = math.sqrt(sum(float(p.grad.double().square().sum()) for p in agent.model.pi_net.parameters()))
    assert stale > 0
    second = agent.update(*batches(1))
    assert second["grad_norm_release"] == pytest.approx(math.hypot(second["grad_norm"], stale), rel=1e-5)
    assert agent.scheduler is not None


def test_policy_loss_has_no_running_scale():
    agent = make_agent()
    beh, exp = batches(0)
    for _ in range(2):
        stats = agent.update(beh, exp)
    zs = torch.randn(H + 1, 16, TINY["latent_dim"])
    noise = agent.draw_noise(16, torch.Generator().manual_seed(0))
    want = iq.iqmpc_policy_loss(agent.model.scalar_q, agent.model.pi, zs, eps=noise.pi_eps, heads=noise.pi_heads)
    torch.testing.assert_close(agent.policy_loss(zs, noise), want)
    assert float(agent.scale.value) == 1.0 and stats["pi_scale"] == 1.0


@pytest.mark.parametrize("grad_pen", [False, True])
def test_updates_with_and_without_the_gradient_penalty(grad_pen):
    agent = make_agent(grad_pen=grad_pen, grad_pen_coef=2.0)
    for seed in range(3):
        stats = agent.update(*batches(seed))
    assert all(math.isfinite(v) for v in stats.values())
    for key in ("q_diff", "q_expert", "q_behavioral", "decoded_reward_expert", "decoded_reward_behavioral", "v0"):
        assert key in stats
    assert stats["q_diff"] == pytest.approx(stats["q_expert"] - stats["q_behavioral"], abs=1e-6)
    assert stats["reward_behavioral"] == pytest.approx(stats["decoded_reward_behavioral"], abs=1e-6)
    assert (stats["grad_pen"] > 0) == grad_pen


def test_bad_combinations_name_the_fields():
    with pytest.raises(ValueError) as err:
        CDREDConfig(grad_pen=True)
    msg = str(err.value)
    assert "\n" not in msg and "grad_pen" in msg and "method='cdred'" in msg and "iqmpc" in msg
    with pytest.raises(ValueError, match="grad_pen"):
        CDREDConfig(grad_pen=True, method="tdmpc2")
    with pytest.raises(TypeError, match="grad_pen"):
        CDREDConfig(method="iqmpc", grad_pen="yes")
    with pytest.raises(ValueError, match="grad_pen_coef"):
        CDREDConfig(method="iqmpc", grad_pen_coef=-1.0)
    assert CDREDConfig(method="iqmpc", grad_pen=True).grad_pen


# =============================================================================== planning
def test_planning_return_is_the_soft_return():
    """The MPPI loop's return from the method's RolloutFunctions equals soft_planning_return given
    the same draws (replayed from the generator in the order the functions take them)."""
    torch.manual_seed(0)
    agent = make_agent(kernels="reference")
    m = agent.model
    with torch.no_grad():
        for p in m.scalar_q.Qs.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    R, L = 5, TINY["latent_dim"]
    z0 = m.encode(torch.randn(OBS)).detach()
    actions = torch.rand(H, R, ACT) * 2 - 1
    with torch.no_grad(), m.planning():
        got = trajectory_value(agent.rollout_functions(torch.Generator().manual_seed(1)), z0, actions, agent.discount)
        g = torch.Generator().manual_seed(1)
        q_heads, hat_eps, next_eps, next_heads = [], [], [], []
        for _ in range(H):
            q_heads.append(choose_two_heads(5, g, "cpu"))
            hat_eps.append(randn((R, ACT), g, "cpu"))
            next_eps.append(randn((R, ACT), g, "cpu"))
            next_heads.append(choose_two_heads(5, g, "cpu"))
        term_eps, term_log_eps = randn((R, ACT), g, "cpu"), randn((R, ACT), g, "cpu")
        noise = iq.SoftReturnNoise(
            q_heads=torch.stack(q_heads),
            hat_eps=torch.stack(hat_eps),
            next_eps=torch.stack(next_eps),
            next_heads=torch.stack(next_heads),
            term_eps=term_eps,
            term_log_eps=term_log_eps,
            term_heads=choose_two_heads(5, g, "cpu"),
        )
        want = iq.soft_planning_return(m.scalar_q, m.pi, m.next, z0.expand(R, L), actions, agent.discount, noise=noise)
    assert not torch.equal(want, torch.zeros(R))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    fns = agent.rollout_functions()
    assert fns.deterministic is False and fns.transition is not None


def test_policy_sequences_are_revalued_every_iteration(monkeypatch):
    """deterministic=False: all N rows (the N_pi policy sequences included) are rolled out in each
    of the J iterations."""
    agent = make_agent()
    calls = []
    real = agent.method.rollout_functions

    def counting(model, generator=None):
        fns = real(model, generator)
        inner = fns.transition

        def transition(z, a):
            calls.append(z.shape[0])
            return inner(z, a)

        return type(fns)(**{**fns.__dict__, "transition": transition})

    monkeypatch.setattr(agent.method, "rollout_functions", counting)
    agent.act(torch.randn(OBS), t0=True)
    assert calls == [TINY["num_samples"]] * (H * TINY["iterations"])


def test_fused_agent_plans_like_reference_agent():
    """Same weights, same seeded generator: kernels="fused" and "reference" IQ-MPC agents act alike
    (the tolerance of the CDRED agent's test in test_planner.py)."""
    kw = dict(
        latent_dim=16,
        enc_dim=16,
        mlp_dim=32,
        num_samples=64,
        num_elites=8,
        num_pi_trajs=4,
        episode_length=100,
        dropout=0.0,
        method="iqmpc",
    )
    torch.manual_seed(0)
    fused = CDREDAgent(CDREDConfig(kernels="fused", **kw), OBS, ACT)
    reference = CDREDAgent(CDREDConfig(kernels="reference", **kw), OBS, ACT)
    with torch.no_grad():
        for p in fused.model.scalar_q.Qs.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    reference.model.load_state_dict(fused.model.state_dict())
    assert fused.planner.impl == "fused" and reference.planner.impl == "reference"
    obs = torch.randn(OBS)
    for step in range(3):
        for eval_mode in (False, True):
            a_f = fused.act(obs, t0=step == 0, eval_mode=eval_mode, generator=torch.Generator().manual_seed(step))
            a_r = reference.act(obs, t0=step == 0, eval_mode=eval_mode, generator=torch.Generator().manual_seed(step))
            torch.testing.assert_close(a_f, a_r, rtol=0, atol=5e-4)


def test_drop_in_planner_from_agent_plans_like_the_agent():
    """Planner.from_agent keeps the method's soft return: same draws, same action."""
    from cdred_fast import Planner

    agent = make_agent()
    planner = Planner.from_agent(agent)
    z = torch.randn(1, TINY["latent_dim"])
    for step in range(2):
        state = torch.get_rng_state()
        a_agent = agent.plan(z, t0=step == 0)
        torch.set_rng_state(state)
        with agent.model.planning():
            a_planner = planner.plan(z, t0=step == 0)
        torch.testing.assert_close(a_planner.reshape(-1), a_agent, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("eval_mode", [False, True])
def test_capture_graph_replays_the_eager_iqmpc_plan(eval_mode):
    """cfg.capture_graph=True with the soft return (its draws inside the recorded plan): replays
    equal eager plans from the same generator state."""
    kw = dict(TINY, method="iqmpc", episode_length=100, dropout=0.0)
    torch.manual_seed(0)
    graphed = CDREDAgent(CDREDConfig(capture_graph=True, **kw), OBS, ACT, device="cuda")
    eager = CDREDAgent(CDREDConfig(**kw), OBS, ACT, device="cuda")
    with torch.no_grad():
        for p in graphed.model.scalar_q.Qs.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    eager.model.load_state_dict(graphed.model.state_dict())
    g_graph, g_eager = torch.Generator(device="cuda").manual_seed(0), torch.Generator(device="cuda")
    obs = torch.randn(4, OBS)
    graphed.act(obs[0], t0=True, eval_mode=eval_mode, generator=g_graph)  # records the graph
    for step in range(4):
        g_eager.set_state(g_graph.get_state())
        a_g = graphed.act(obs[step], t0=step == 0, eval_mode=eval_mode, generator=g_graph)
        a_e = eager.act(obs[step], t0=step == 0, eval_mode=eval_mode, generator=g_eager)
        torch.testing.assert_close(a_g, a_e, rtol=1e-6, atol=1e-6)


# =============================================================================== checkpoints
def test_state_dict_round_trip_keeps_target_heads_and_stale_gradient(tmp_path):
    agent = make_agent()
    for seed in range(2):
        agent.update(*batches(seed))
    state = agent.state_dict()
    assert any(k.startswith("scalar_q.target_Qs.") for k in state["model"])
    path = tmp_path / "agent.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    other = make_agent()
    other.load_state_dict(loaded)
    for k, v in agent.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v), k
    for p, q in zip(agent.model.pi_net.parameters(), other.model.pi_net.parameters()):
        assert torch.equal(p.grad, q.grad)
    # the same next update from the same draws (dropout off: no global RNG in the losses)
    a, b = make_agent(dropout=0.0), make_agent(dropout=0.0)
    a.update(*batches(0))
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # a copy: Adam's loaded "step" tensors alias the source's
    sa = a.update(*batches(1), generator=torch.Generator().manual_seed(3))
    sb = b.update(*batches(1), generator=torch.Generator().manual_seed(3))
    assert sa == sb
    cdred = CDREDAgent(CDREDConfig(**TINY, episode_length=100), OBS, ACT)
    with pytest.raises(ValueError, match="StepLR"):
        cdred.load_state_dict({**cdred.state_dict(), "scheduler": None})


# =============================================================================== a tiny run through the command
def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cdred_fast.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_cli_train_resume_eval(tmp_path):
    overrides = [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY.items()]
    run = tmp_path / "run"
    args = ["train", "--no-progress", "--work-dir", str(run), "task=mw-reach", "method=iqmpc", "num_demos=2"]
    args += ["steps=200", "seed_steps=100", "eval_freq=200", "eval_episodes=1", "grad_pen=true", *overrides]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "IQ-MPC on mw-reach" in proc.stdout and "after training (step 200)" in proc.stdout
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["config"]["method"] == "iqmpc" and state["config"]["buffer_size"] is None
    assert any(k.startswith("scalar_q.target_Qs.") for k in state["agent"]["model"])
    assert state["agent"]["scheduler"] is None

    proc = _cli("train", "--no-progress", "--resume", "--work-dir", str(run), "steps=300", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed at step 200" in proc.stdout and "after training (step 300)" in proc.stdout
    train = rows(run / "train.csv")
    last = train[-1]
    for key in ("q_diff", "decoded_reward_expert", "reward_behavioral", "grad_pen", "grad_norm_release", "v0"):
        assert np.isfinite(float(last[key])), key
    assert float(last["grad_norm_release_max"]) >= float(last["grad_norm_release"])
    assert float(last["grad_norm_max"]) >= float(last["grad_norm"])
    assert float(last["grad_pen"]) > 0

    proc = _cli("eval", str(run / "checkpoint.pt"), "--episodes", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["step"] == 300 and 0.0 <= out["success"] <= 1.0

    proc = _cli("train", "--work-dir", str(tmp_path / "bad"), "grad_pen=true", cwd=tmp_path)
    assert proc.returncode == 2 and "grad_pen" in proc.stderr and "method" in proc.stderr


def test_agent_from_checkpoint_plans(tmp_path):
    """An agent rebuilt from a checkpoint's state (as `cdred-fast eval` does) acts like the saved one."""
    from cdred_fast.envs import make

    agent = make_agent()
    agent.update(*batches(0))
    env = make("mw-reach", "state", seed=0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = CDREDAgent(CDREDConfig(**TINY, method="iqmpc", episode_length=100), obs_dim, act_dim)
    state = {"config": agent.cfg.to_dict(), "agent": agent.state_dict()}
    rebuilt = agent_from_checkpoint(state, env)
    obs, _ = env.reset(seed=0)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(
        rebuilt.act(obs, t0=True, eval_mode=True, generator=g1), agent.act(obs, t0=True, eval_mode=True, generator=g2)
    )
    env.close()


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    """The checkpoint keeps what the next update needs, the target heads and the policy's stale
    gradient (part of the clip over all parameters) included: a resumed run equals an
    uninterrupted one bit for bit."""
    from cdred_fast.trainer import Trainer

    def cfg(steps):
        return CDREDConfig(
            **TINY,
            method="iqmpc",
            task="mw-reach",
            steps=steps,
            seed_steps=100,
            eval_freq=100,  # both runs evaluate at the same steps (evaluation draws from the global RNG)
            eval_episodes=1,
            num_demos=2,
            mpc=False,
            grad_clip_norm=0.05,  # every update clips: the stale policy gradient changes every step
        )

    full = Trainer(cfg(200), tmp_path / "full", progress=False, tensorboard=False)
    full.train()
    Trainer(cfg(100), tmp_path / "part", progress=False, tensorboard=False).train()
    resumed = Trainer(cfg(200), tmp_path / "part", resume=True, progress=False, tensorboard=False)
    assert resumed.buffer.capacity == 200  # min(1_000_000, steps)
    resumed.train()
    a, b = full.agent.model.state_dict(), resumed.agent.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
