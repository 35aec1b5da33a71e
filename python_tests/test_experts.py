"""RL experts (TD-MPC2 mode: a reward head trained on the environment reward), collecting
demonstrations with a trained checkpoint, and the trembling-hand setting of the config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from testing_utils import TINY as SHARED_TINY

from cdred_fast import CDREDConfig
from cdred_fast.agent import CDREDAgent
from cdred_fast.buffer import EpisodeBuffer
from cdred_fast.data import Demonstrations
from cdred_fast.layers import two_hot

OBS, ACT, H, B = 6, 2, 3, 16
TINY = {**SHARED_TINY, "num_bins": 21}


def expert_agent(**kw):
    torch.manual_seed(0)
    return CDREDAgent(CDREDConfig(**{**TINY, "method": "tdmpc2", "episode_length": 100, **kw}), OBS, ACT)


def fixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(H + 1, B, OBS, generator=g)
    action = torch.rand(H, B, ACT, generator=g) * 2 - 1
    reward = 3.0 * torch.tanh(obs[:-1, :, 0] + action[..., 0])  # a function of (s, a) to regress
    return {"obs": obs, "action": action, "reward": reward}


def test_method_and_trembling_hand_are_validated():
    assert CDREDConfig().method == "cdred" and CDREDConfig().trembling_hand == 0.0
    with pytest.raises(ValueError, match="method must be one of"):
        CDREDConfig(method="sac")
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="trembling_hand"):
            CDREDConfig(trembling_hand=bad)
    assert CDREDConfig(trembling_hand=1).trembling_hand == 1.0


def test_tdmpc2_model_has_a_reward_head_instead_of_the_cdred_reward():
    agent = expert_agent()
    m = agent.model
    assert m.reward_model is None
    head = [mod for mod in m.reward_head if isinstance(mod, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in head] == [(16 + ACT, 32), (32, 32), (32, 21)]
    assert torch.all(head[-1].weight == 0)  # zero-initialised like TD-MPC2 (reward 0 at the start)
    z, a = torch.rand(5, 16), torch.rand(5, ACT)
    torch.testing.assert_close(agent.rollout_functions().reward(z, a), torch.zeros(5), atol=1e-6, rtol=0)
    assert set(map(id, m.reward_head.parameters())) <= {id(p) for p in agent.optim.param_groups[3]["params"]}


def test_tdmpc2_reward_loss_is_the_rho_weighted_two_hot_cross_entropy():
    agent = expert_agent()
    batch = fixed_batch()
    obs, action, nb = agent._concat(batch)
    noise = agent.draw_noise(B, torch.Generator().manual_seed(1))
    agent.model.train(True)
    got = agent.compute_losses(obs, action, nb, noise, reward=batch["reward"])
    agent.model.train(False)
    logits = agent.model.reward_logits(got["zs"][:-1], action).detach()
    target = two_hot(batch["reward"], 21, -10.0, 10.0)  # [H, B, bins]
    ce = -(target * torch.log_softmax(logits, -1)).sum(-1)  # [H, B]
    expected = sum(0.5**t * ce[t].mean() for t in range(H)) / H
    torch.testing.assert_close(got["reward"], expected, rtol=1e-5, atol=1e-6)
    # the TD target uses the environment reward
    assert torch.equal(got["rewards"], batch["reward"])


def test_tdmpc2_updates_reduce_the_reward_loss_on_fixed_data():
    agent = expert_agent(lr=1e-3)
    batch = fixed_batch()
    g = torch.Generator().manual_seed(0)
    losses = [agent.update(batch, generator=g)["reward_loss"] for _ in range(150)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.5 * losses[0], (losses[0], losses[-10:])
    stats = agent.update(batch)
    assert "reward_expert" not in stats and np.isfinite(stats["q_value"])


def test_update_arguments_per_method():
    expert = expert_agent()
    batch = fixed_batch()
    with pytest.raises(ValueError, match="pass no expert_batch"):
        expert.update(batch, batch)
    with pytest.raises(ValueError, match="needs 'reward'"):
        expert.update({"obs": batch["obs"], "action": batch["action"]})
    with pytest.raises(ValueError, match=r"reward'\] must be \[H=3, B=16\]"):
        expert.update({**batch, "reward": batch["reward"][:2]})
    cdred = CDREDAgent(CDREDConfig(**TINY, episode_length=100), OBS, ACT)
    with pytest.raises(ValueError, match="needs an expert_batch"):
        cdred.update(batch)
    assert np.isfinite(cdred.update(batch, fixed_batch(1))["reward_expert"])  # rewards in a batch are ignored


def test_buffer_keeps_rewards():
    buf = EpisodeBuffer(100, 3, 1)
    obs = np.arange(11 * 3, dtype=np.float32).reshape(11, 3)
    buf.add_episode(obs, np.zeros((10, 1), np.float32), np.arange(10, dtype=np.float32) * 10)
    batch = buf.sample(50, 3, generator=torch.Generator().manual_seed(0))
    t0 = batch["obs"][0, :, 0] / 3  # obs[t] = (3t, 3t+1, 3t+2)
    torch.testing.assert_close(batch["reward"], (t0 + torch.arange(3)[:, None]) * 10)
    buf.add_episode(obs, np.zeros((10, 1), np.float32))  # no rewards: no "reward" in samples
    assert not buf.has_rewards and "reward" not in buf.sample(4, 3)


def _cli(*args):
    """Run the cdred-fast command in this process (click's runner: no interpreter start-up)."""
    from click.testing import CliRunner

    from cdred_fast.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_expert_train_then_collect_from_the_checkpoint(tmp_path):
    overrides = [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY.items()]
    code, out, err = _cli(
        "expert",
        "train",
        "mw-reach",
        "--no-progress",
        "--work-dir",
        tmp_path / "expert",
        "steps=200",
        "seed_steps=100",
        "eval_freq=200",
        "eval_episodes=1",
        "mpc=false",
        *overrides,
    )
    assert code == 0, err
    assert "TD-MPC2 expert on mw-reach" in out
    run = tmp_path / "expert"
    assert not (run / "demos.npz").exists()  # no demonstrations in TD-MPC2 mode
    ckpt = run / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["method"] == "tdmpc2" and state["buffer"]["has_reward"].all()
    assert any(k.startswith("reward_head.") for k in state["agent"]["model"])

    path = tmp_path / "demos.npz"
    code, out, err = _cli("collect", "mw-reach", "--policy", ckpt, "--episodes", 2, "--seed", 5, "--out", path)
    assert code == 0, err
    demos = Demonstrations.load(path, task="mw-reach", obs_dim=39, action_dim=4)
    assert demos.num_episodes == 2 and demos.episode_lengths.tolist() == [100, 100]
    assert demos.seeds.tolist() == [5, 6] and np.all(np.abs(demos.action) <= 1)

    # the checkpoint's agent in eval mode: collecting again gives the same episodes
    from cdred_fast.checkpoint import agent_from_checkpoint, config_from_checkpoint, load_checkpoint
    from cdred_fast.collect import AgentPolicy, collect
    from cdred_fast.trainer import make_env

    ckpt_state = load_checkpoint(ckpt)
    env = make_env(config_from_checkpoint(ckpt_state), seed=5)
    again = collect(env, AgentPolicy(agent_from_checkpoint(ckpt_state, env)), episodes=2, seed=5)
    np.testing.assert_array_equal(again.action, demos.action)

    code, out, err = _cli("collect", "cheetah-run", "--policy", ckpt, "--episodes", 1, "--out", path)
    assert code == 2 and "trained on 'mw-reach'" in err
    code, out, err = _cli("collect", "cheetah-run", "--episodes", 1, "--out", path)
    assert code == 2 and "expert train cheetah-run" in err
    code, out, err = _cli("eval", ckpt, "--episodes", 1, "--trembling-hand", 0.5)
    assert code == 0, err
    assert json.loads(out)["trembling_hand"] == 0.5


def test_trembling_hand_from_the_config(tmp_path):
    """cfg.trembling_hand reaches the training and the evaluation environment; the observed
    tremble frequency is p within 4.5 binomial standard deviations."""
    from cdred_fast.trainer import Trainer

    p, n = 0.3, 3000
    cfg = CDREDConfig(**TINY, method="tdmpc2", task="cartpole-swingup", trembling_hand=p, steps=10, mpc=False)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False)
    sd = np.sqrt(p * (1 - p) / n)
    sequences = []
    for env in (trainer.env, trainer.eval_env):
        env.reset()  # each environment's noise stream is seeded by its own seed (train / eval)
        trembled = []
        for _ in range(n):
            _, _, terminated, truncated, info = env.step(np.zeros(1, np.float32))
            trembled.append(info["trembled"])
            if terminated or truncated:
                env.reset()
        trembled = np.asarray(trembled)
        assert abs(trembled.mean() - p) < 4.5 * sd, trembled.mean()
        # consecutive decisions are independent: P(tremble | trembled before) is p as well
        after = trembled[1:][trembled[:-1]]
        assert abs(after.mean() - p) < 4.5 * np.sqrt(p * (1 - p) / after.size)
        sequences.append(trembled)
    assert not np.array_equal(*sequences)  # the two environments draw their own noise (own seeds)
    calm = Trainer(
        CDREDConfig(**TINY, method="tdmpc2", task="cartpole-swingup", steps=10),
        tmp_path / "calm",
        progress=False,
        tensorboard=False,
    )
    calm.env.reset()
    assert "trembled" not in calm.env.step(np.zeros(1, np.float32))[4]
