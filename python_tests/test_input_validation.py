"""Non-finite inputs to the agent and the trembling-hand wrapper are refused with a ValueError
(a NaN observation would otherwise give an arbitrary action, and in an update poison every
parameter); reward ops refuse eps <= 0 on both implementations."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from test_agent import ACT, OBS, make_agent, make_batches

from cdred_fast import ops
from cdred_fast.envs.wrappers import TremblingHand


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_act_refuses_non_finite_obs(bad):
    agent = make_agent()
    obs = np.zeros(OBS, np.float32)
    obs[2] = bad
    for mpc in (True, False):
        agent.cfg.mpc = mpc
        with pytest.raises(ValueError, match="act: obs contains NaN or inf"):
            agent.act(obs, t0=True)
    agent.cfg.mpc = True
    assert torch.isfinite(agent.act(np.zeros(OBS, np.float32), t0=True)).all()  # still acts afterwards


@pytest.mark.parametrize("key", ["obs", "action"])
@pytest.mark.parametrize("which", [0, 1])
def test_update_refuses_non_finite_batches(key, which):
    agent = make_agent()
    batches = make_batches()
    batches[which][key][1, 3, 0] = float("nan")
    before = [p.detach().clone() for p in agent.model.parameters()]
    with pytest.raises(ValueError, match=f"update: the batches' {key} contains NaN or inf"):
        agent.update(*batches)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.model.parameters()))


class _Box(gym.Env):
    observation_space = spaces.Box(-1, 1, (3,), np.float32)
    action_space = spaces.Box(-1, 1, (ACT,), np.float32)

    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.last = action
        return np.zeros(3, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_trembling_hand_validates_actions(p):
    env = TremblingHand(_Box(), p, seed=0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(ACT + 1, np.float32))
    env.step(np.zeros(ACT, np.float32))


def test_trembling_hand_still_trembles():
    """Valid actions pass the checks, and the wrapper still replaces some of them."""
    env = TremblingHand(_Box(), 0.5, seed=3)
    env.reset(seed=3)
    trembled = []
    for _ in range(20):
        _, _, _, _, info = env.step(np.full(ACT, 0.25, np.float32))
        trembled.append(info["trembled"])
    assert any(trembled) and not all(trembled)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan"), float("inf")])
def test_reward_ops_refuse_non_positive_eps(impl, eps):
    t = torch.full((3, 2, 4), 5.0)
    p = torch.randn(2, 4)
    msg = r"eps \(the variance guard\) must be a finite number > 0"
    with pytest.raises(ValueError, match=msg):
        ops.moment_bonus(p, t, eps=eps, impl=impl)
    with pytest.raises(ValueError, match=msg):
        ops.cdred_reward(p, p, t, eps=eps, impl=impl)


@pytest.mark.skipif(not ops.FUSED_AVAILABLE, reason="the op library is not built")
def test_reward_op_schemas_refuse_non_positive_eps():
    t = torch.full((3, 2, 4), 5.0)
    p = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"moment_bonus: argument 'eps' \(the variance guard\) must be finite and > 0"):
        torch.ops.cdred_fast.moment_bonus.default(p, t, 0.9, 0.0)
    with pytest.raises(ValueError, match=r"cdred_reward: argument 'eps' \(the variance guard\) must be finite and > 0"):
        torch.ops.cdred_fast.cdred_reward.default(p, p, t, 0.9, 0.8, 1.0, "linear", 0.0)
