"""The paper's ablations as config values (SPEC.md section 7): the reward on observations
(reward_input="obs"), fewer demonstrations (num_demos = the first N episodes of a file), the
uncoupled reward (zeta = 1) and the exponential shaping (g = "exp")."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from testing_utils import TINY, csv_rows, run_cli, tiny_overrides

from cdred_fast import CDREDConfig
from cdred_fast import trainer as trainer_mod
from cdred_fast.agent import CDREDAgent
from cdred_fast.data import Demonstrations
from cdred_fast.trainer import SCRIPTED_DEMOS, Trainer, obtain_demonstrations

OBS, ACT, B = 6, 2, 4


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    H = TINY.get("horizon", 3)

    def one():
        return {"obs": torch.randn(H + 1, B, OBS, generator=g), "action": torch.rand(H, B, ACT, generator=g) * 2 - 1}

    return one(), one()


# --------------------------------------------------------------------------- reward_input="obs"
def test_reward_input_obs_needs_mpc_false_cdred_and_state():
    with pytest.raises(ValueError, match=r"reward_input='obs' requires mpc=False"):
        CDREDConfig(reward_input="obs")
    with pytest.raises(ValueError, match=r"reward_input.*method='tdmpc2'"):
        CDREDConfig(reward_input="obs", mpc=False, method="tdmpc2")
    with pytest.raises(ValueError, match=r"reward_input.*method='bc'"):
        CDREDConfig(reward_input="obs", mpc=False, method="bc")
    with pytest.raises(ValueError, match=r"reward_input.*obs='rgb'"):
        CDREDConfig(reward_input="obs", mpc=False, obs="rgb")
    with pytest.raises(ValueError, match="reward_input must be one of"):
        CDREDConfig(reward_input="pixels")
    assert CDREDConfig(reward_input="obs", mpc=False).reward_input == "obs"


def test_reward_input_obs_rewards_and_gradients():
    """Targets and predictors on [s; a]: the TD rewards are R(s_t, a_t) of the real observations, and
    the predictor loss sends no gradient into the encoder (the latent reward's does)."""
    torch.manual_seed(0)
    cfg = CDREDConfig(**TINY, episode_length=100, kernels="reference", reward_input="obs", mpc=False)
    agent = CDREDAgent(cfg, OBS, ACT)
    m = agent.model
    assert m.reward_model.in_dim == OBS + ACT
    beh, exp = batches()
    obs, action, nb = agent._concat(beh, exp)
    losses = agent.compute_losses(obs, action, nb, agent.draw_noise(obs.shape[1]))
    want = m.reward_model(torch.cat([obs[:-1], action], dim=-1))
    torch.testing.assert_close(losses["rewards"], want, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(losses["reward"], list(m.encoder.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    with pytest.raises(ValueError, match="imagined latents"):
        agent.plan(torch.zeros(cfg.latent_dim))
    stats = agent.update(beh, exp)
    assert np.isfinite(stats["reward_loss"]) and np.isfinite(stats["reward_expert"])

    latent = CDREDAgent(CDREDConfig(**TINY, episode_length=100, kernels="reference"), OBS, ACT)
    obs, action, nb = latent._concat(beh, exp)
    losses = latent.compute_losses(obs, action, nb, latent.draw_noise(obs.shape[1]))
    grads = torch.autograd.grad(losses["reward"], list(latent.model.encoder.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------- zeta = 1, g = "exp"
def test_zeta_one_and_exp_reach_the_training_reward():
    """The config's zeta and g are the reward the update trains on: with zeta = 1 the behavioural
    predictor plays no part, and with g = exp the reward exp(-sigma b_phi) lies in (0, 1]."""
    torch.manual_seed(0)
    cfg = CDREDConfig(**TINY, episode_length=100, kernels="reference", zeta=1.0, g="exp")
    agent = CDREDAgent(cfg, OBS, ACT)
    beh, exp = batches(1)
    obs, action, nb = agent._concat(beh, exp)
    noise = agent.draw_noise(obs.shape[1])
    r1 = agent.compute_losses(obs, action, nb, noise)["rewards"]
    assert bool(((r1 > 0) & (r1 <= 1)).all())
    with torch.no_grad():
        for p in agent.model.reward_model.behavioral_predictor.parameters():
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(agent.compute_losses(obs, action, nb, noise)["rewards"], r1, rtol=0, atol=0)


# --------------------------------------------------------------------------- num_demos
def demo_set(n=3, T=5, task="mw-reach"):
    rng = np.random.default_rng(0)
    eps = []
    for i in range(n):
        states = rng.standard_normal((T + i + 1, OBS))  # contiguous: next_obs[t] = obs[t + 1]
        eps.append(
            {
                "obs": states[:-1],
                "action": rng.uniform(-1, 1, (T + i, ACT)),
                "reward": rng.standard_normal(T + i),
                "next_obs": states[1:],
                "success": i % 2 == 0,
                "seed": 10 + i,
            }
        )
    return Demonstrations.from_episodes(eps, task=task)


ENV = SimpleNamespace(observation_space=SimpleNamespace(shape=(OBS,)), action_space=SimpleNamespace(shape=(ACT,)))


def test_num_demos_takes_the_first_episodes_of_a_file(tmp_path):
    demos = demo_set(3)
    path = demos.save(tmp_path / "d.npz")
    assert obtain_demonstrations(CDREDConfig(task="mw-reach"), path, ENV).num_episodes == 3  # None: all
    two = obtain_demonstrations(CDREDConfig(task="mw-reach", num_demos=2), path, ENV)
    assert two.num_episodes == 2 and two.seeds.tolist() == [10, 11] and two.success.tolist() == [True, False]
    n = int(demos.episode_lengths[:2].sum())
    np.testing.assert_array_equal(two.obs, demos.obs[:n])
    np.testing.assert_array_equal(two.action, demos.action[:n])
    assert obtain_demonstrations(CDREDConfig(task="mw-reach", num_demos=1), demos, ENV).num_episodes == 1
    with pytest.raises(ValueError, match=r"num_demos=5 .*d\.npz.* \(3\)"):
        obtain_demonstrations(CDREDConfig(task="mw-reach", num_demos=5), path, ENV)
    with pytest.raises(ValueError, match=r"num_demos=4 .*\(3\)"):
        obtain_demonstrations(CDREDConfig(task="mw-reach", num_demos=4), demos, ENV)


def test_num_demos_with_a_scripted_expert(monkeypatch):
    """Scripted collection keeps collecting num_demos successful episodes (SCRIPTED_DEMOS by default)."""
    asked = []
    monkeypatch.setattr(trainer_mod, "collect", lambda env, policy, n, **kw: asked.append(n) or "demos")
    assert obtain_demonstrations(CDREDConfig(task="mw-reach"), None, ENV) == "demos"
    obtain_demonstrations(CDREDConfig(task="mw-reach", num_demos=7), None, ENV)
    assert asked == [SCRIPTED_DEMOS, 7] and SCRIPTED_DEMOS == 100


# --------------------------------------------------------------------------- the command line
def test_cli_reward_input_obs_and_num_demos(tmp_path):
    proc = run_cli("train", "--work-dir", str(tmp_path / "bad"), "reward_input=obs", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "reward_input='obs' requires mpc=False" in proc.stderr
    proc = run_cli("collect", "mw-reach", "--episodes", "2", "--out", str(tmp_path / "d.npz"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    common = ["--no-progress", "--demos", str(tmp_path / "d.npz"), "task=mw-reach", *tiny_overrides()]
    proc = run_cli("train", *common, "--work-dir", str(tmp_path / "bad"), "num_demos=5", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "num_demos=5" in proc.stderr and "(2)" in proc.stderr

    run = tmp_path / "run"
    args = ["steps=200", "seed_steps=100", "eval_freq=200", "eval_episodes=1", "num_demos=1"]
    proc = run_cli("train", *common, "--work-dir", str(run), "reward_input=obs", "mpc=false", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 expert episodes" in proc.stdout and "after training (step 200)" in proc.stdout
    assert Demonstrations.load(run / "demos.npz").num_episodes == 1
    assert np.isfinite(float(csv_rows(run / "train.csv")[-1]["reward_expert"]))
    proc = run_cli("eval", str(run / "checkpoint.pt"), "--episodes", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 200


def test_resume_uses_the_runs_own_demonstrations(tmp_path):
    """A resumed run reads work_dir/demos.npz (already the demonstrations it uses) without cutting it
    again: a checkpoint whose config asks for more demonstrations than were available when it started
    (as runs written before num_demos applied to files) resumes with those it has."""
    from cdred_fast.checkpoint import load_checkpoint

    cfg = dict(TINY, task="mw-reach", method="bc", steps=10, eval_freq=10, eval_episodes=1, num_demos=2)
    Trainer(CDREDConfig(**cfg), tmp_path / "run", progress=False, tensorboard=False).train()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state["config"]["num_demos"] = 100
    torch.save(state, ckpt)
    resumed = Trainer(
        CDREDConfig(**{**cfg, "num_demos": 100, "steps": 20}), tmp_path / "run", resume=True, progress=False
    )
    assert resumed.demos.num_episodes == 2 and resumed.step == 10
