"""Evaluation leaves training as it found it: the planner's warm start and torch's global RNG are
restored afterwards, so evaluating in the middle of a training episode does not change a single
training action (cdred_fast.trainer.evaluate, CDREDAgent.preserve_plan_state)."""

import numpy as np
import pytest
import torch
from testing_utils import TINY

from cdred_fast import CDREDConfig
from cdred_fast import trainer as trainer_mod
from cdred_fast.agent import CDREDAgent
from cdred_fast.planner import MPPIPlanner, MPPISettings
from cdred_fast.trainer import Trainer

OBS, ACT = 6, 2


def test_planner_preserved_restores_the_warm_start():
    planner = MPPIPlanner(MPPISettings.from_config(CDREDConfig(**TINY), ACT), 0.99, kernels="reference")
    with planner.preserved():
        planner.restore_warm_start(torch.ones(1, 3, ACT))
    assert planner.prev_mean is None
    saved = torch.randn(1, 3, ACT)
    planner.restore_warm_start(saved)
    with planner.preserved():
        planner.reset()
    torch.testing.assert_close(planner.prev_mean, saved, rtol=0, atol=0)
    state = planner.warm_start_state()
    state.add_(1.0)  # a copy: changing it does not change the planner's
    torch.testing.assert_close(planner.prev_mean, saved, rtol=0, atol=0)


def _acts(agent, obs, evaluate_between: bool):
    """Two training steps of one episode (t0, then a warm-started plan), with or without an
    evaluation episode between them; every draw from its own generator."""
    g = torch.Generator().manual_seed(5)
    first = agent.act(obs[0], t0=True, generator=g)
    if evaluate_between:
        with agent.preserve_plan_state():
            ge = torch.Generator().manual_seed(9)
            for t in range(3):
                agent.act(obs[2 + t], t0=t == 0, eval_mode=True, generator=ge)
    return first, agent.act(obs[1], generator=g)


def test_agent_warm_start_survives_an_evaluation():
    torch.manual_seed(0)
    agent = CDREDAgent(CDREDConfig(**TINY, episode_length=100, kernels="reference"), OBS, ACT)
    obs = torch.randn(5, OBS)
    a0, a1 = _acts(agent, obs, evaluate_between=False)
    b0, b1 = _acts(agent, obs, evaluate_between=True)
    torch.testing.assert_close(b0, a0, rtol=0, atol=0)
    torch.testing.assert_close(b1, a1, rtol=0, atol=0)
    # without the context the evaluation's plans would have replaced the warm start
    g = torch.Generator().manual_seed(5)
    agent.act(obs[0], t0=True, generator=g)
    ge = torch.Generator().manual_seed(9)
    for t in range(3):
        agent.act(obs[2 + t], t0=t == 0, eval_mode=True, generator=ge)
    assert not torch.equal(agent.act(obs[1], generator=g), a1)


def _cfg(eval_freq):
    return CDREDConfig(
        **TINY, task="mw-reach", steps=200, seed_steps=100, eval_freq=eval_freq, eval_episodes=1, num_demos=1
    )


def _train(tmp_path, name, eval_freq):
    tr = Trainer(_cfg(eval_freq), tmp_path / name, progress=False, tensorboard=False)
    tr.train()
    return tr


def test_mid_episode_evaluation_does_not_change_training(tmp_path, monkeypatch):
    """The same run with an evaluation at step 150 (in the middle of the second training episode,
    while the agent plans with warm starts) and without: every training action, and the
    trained model, are identical. Evaluation draws from torch's global RNG (MPPI noise, policy
    samples, Q heads), so the check covers both the warm start and the RNG."""
    quiet = _train(tmp_path, "quiet", eval_freq=1000)
    busy = _train(tmp_path, "busy", eval_freq=75)
    assert [int(float(r["step"])) for r in busy.logger.eval.rows] == [0, 75, 150, 200]
    a, b = quiet.buffer.state_dict(), busy.buffer.state_dict()
    torch.testing.assert_close(b["action"], a["action"], rtol=0, atol=0)
    for k, v in quiet.agent.model.state_dict().items():
        torch.testing.assert_close(busy.agent.model.state_dict()[k], v, rtol=0, atol=0, msg=k)

    # the check is sensitive: an evaluation that restores neither changes the training actions
    monkeypatch.setattr(trainer_mod, "evaluate", trainer_mod._evaluate)
    careless = _train(tmp_path, "careless", eval_freq=75)
    c = careless.buffer.state_dict()["action"]
    assert not np.array_equal(c[100:].numpy(), a["action"][100:].numpy())


def test_evaluate_episodes_are_the_episodes_of_evaluate():
    """trainer.evaluate_episodes plays evaluate's episodes one by one with the same draws:
    evaluate's values are their means, each call leaves the global RNG as it found it (so the
    two calls see the same draws), and at least one episode is required."""
    cfg = CDREDConfig(**TINY, task="mw-reach", episode_length=30, kernels="reference")
    env = trainer_mod.make_env(cfg, seed=cfg.seed + trainer_mod.EVAL_SEED_OFFSET)
    torch.manual_seed(0)
    agent = CDREDAgent(cfg, env.observation_space.shape[0], env.action_space.shape[0])
    torch.manual_seed(3)
    summary = trainer_mod.evaluate(agent, env, 3, seed=1000)
    episodes = trainer_mod.evaluate_episodes(agent, env, 3, seed=1000)
    assert len(episodes) == 3
    returns = [e[0] for e in episodes]
    assert len(set(returns)) == 3  # three different episodes (reset seeds 1000, 1001, 1002)
    assert summary["episode_return"] == float(np.mean(returns))
    assert summary["success"] == float(np.mean([float(e[1]) for e in episodes]))
    assert summary["success_any"] == float(np.mean([float(e[2]) for e in episodes]))
    # other draws give other episodes: the equality above is not a property of any two calls
    torch.manual_seed(4)
    assert trainer_mod.evaluate_episodes(agent, env, 3, seed=1000) != episodes
    with pytest.raises(ValueError, match="at least one episode"):
        trainer_mod.evaluate_episodes(agent, env, 0, seed=1000)
