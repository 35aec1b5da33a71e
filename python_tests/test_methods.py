"""The method registry (cdred_fast.methods): one method per CDREDConfig.method value, the agent
dispatching to it, and each method's planning return on the world model."""

import pytest
import torch
from testing_utils import TINY

from cdred_fast import methods
from cdred_fast.agent import CDREDAgent
from cdred_fast.config import METHOD_CHOICES, CDREDConfig
from cdred_fast.planner import trajectory_value

OBS, ACT = 6, 2


def test_registry_covers_the_config_choices():
    assert set(methods.names()) == set(METHOD_CHOICES)
    for name in METHOD_CHOICES:
        method = methods.get(name)
        assert isinstance(method, methods.Method) and method.name == name
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        methods.get("nope")


@pytest.mark.parametrize("name", METHOD_CHOICES)
def test_agent_dispatches_to_the_configured_method(name):
    agent = CDREDAgent(CDREDConfig(method=name, episode_length=100, **TINY), OBS, ACT)
    assert agent.method is methods.get(name)
    trained = {id(p) for group in agent.optim.param_groups for p in group["params"]}
    assert {id(p) for p in agent.method.reward_parameters(agent.model)} <= trained


@pytest.mark.parametrize(
    "name", [m for m in METHOD_CHOICES if m not in ("bc", "iqmpc")]
)  # BC does not plan; IQ-MPC: test_iqmpc_agent.py
def test_planning_return_by_hand(name):
    """G = sum_t gamma^t R(z_t, a_t) + gamma^H Q_avg(z_H, pi(z_H)) with the method's reward R: the
    CDRED reward of [z ; a], or TD-MPC2's decoded reward head; a shared start latent gives the same."""
    torch.manual_seed(0)
    agent = CDREDAgent(CDREDConfig(method=name, episode_length=100, kernels="reference", **TINY), OBS, ACT)
    m, gamma = agent.model, agent.discount
    z0 = m.encode(torch.randn(OBS)).detach()
    actions = torch.rand(agent.cfg.horizon, 5, ACT) * 2 - 1
    with torch.no_grad():
        got = trajectory_value(agent.rollout_functions(torch.Generator().manual_seed(1)), z0, actions, gamma)
        g = torch.Generator().manual_seed(1)
        z, want = z0.expand(5, -1), 0.0
        for t in range(actions.shape[0]):
            if name == "cdred":
                r = m.reward_model(torch.cat([z, actions[t]], -1))
            else:
                r = m.q_value(m.reward_logits(z, actions[t]))
            want = want + gamma**t * r
            z = m.next(z, actions[t])
        a = m.pi(z, generator=g)[1]
        want = want + gamma ** actions.shape[0] * m.Q(z, a, "avg", generator=g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_world_model_reward_part():
    """The agent builds the world model with its method's reward part; WorldModel alone takes it
    from cfg.method, or as given (None: no reward part)."""
    from cdred_fast.world_model import WorldModel

    cfg = CDREDConfig(episode_length=100, **TINY)
    cdred, head = WorldModel(cfg, OBS, ACT), WorldModel(cfg, OBS, ACT, reward_part="head")
    assert cdred.reward_model is not None and cdred.reward_head is None
    assert head.reward_model is None and head.reward_head is not None
    bare = WorldModel(cfg, OBS, ACT, reward_part=None)
    assert bare.reward_model is None and bare.reward_head is None
    with pytest.raises(ValueError, match="reward_part must be one of"):
        WorldModel(cfg, OBS, ACT, reward_part="rnd")
    for name in METHOD_CHOICES:
        agent = CDREDAgent(CDREDConfig(method=name, episode_length=100, **TINY), OBS, ACT)
        assert (agent.model.reward_model is not None) == (methods.get(name).reward_part == "cdred")
        assert (agent.model.reward_head is not None) == (methods.get(name).reward_part == "head")
