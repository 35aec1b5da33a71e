"""TD-MPC2 (reinforcement learning on the environment reward, used to train experts): the world
model's reward head is regressed on the reward of the behavioural batch; no demonstrations."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..layers import soft_ce
from .common import Method, latent_rollout, rho_weights, td_targets, value_loss, with_total, world_model_rollout


class TDMPC2(Method):
    name = "tdmpc2"
    uses_expert = False
    uses_env_reward = True
    reward_part = "head"

    def reward_parameters(self, model):
        return model.reward_head.parameters()

    def compute_losses(
        self, agent, obs: Tensor, action: Tensor, n_behavioral: int, noise, reward: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        """Steps 1-7 of SPEC section 3 with the environment reward ``reward [H, N]`` in the TD
        target and, as reward loss, the reward head's two-hot soft cross-entropy
        ``(1/H) sum_t rho^t mean_i CE(R(z_t, a_t), twohot(r_t))``."""
        if reward is None:
            raise ValueError("method='tdmpc2' needs the environment reward [H, N]")
        cfg, m = agent.cfg, agent.model
        H = cfg.horizon
        rho_t = rho_weights(cfg.rho, H, agent.device)

        # 1-2. z'_t = h(s_{t+1}) (no gradient); roll-out z_{t+1} = d(z_t, a_t) and consistency
        next_z, zs, consistency = latent_rollout(m, obs, action, cfg.rho)

        # 3-4. TD target y_t = r_t + gamma * Q_bar_min(z'_t, pi(z'_t)) with the environment reward
        rewards = reward.detach()  # [H, N]
        targets = td_targets(agent, next_z, rewards, noise)

        # 5. value = (1/(H num_q)) sum_t rho^t sum_q mean_i CE(Q_q(z_t, a_t), twohot(y_t))
        value, q_logits = value_loss(agent, zs, action, targets, rho_t)

        # 6. reward loss: (1/H) sum_t rho^t mean_i CE(R(z_t, a_t), twohot(r_t))
        reward_ce = soft_ce(m.reward_logits(zs[:-1], action), rewards, cfg.vmin, cfg.vmax)  # [H, N]
        reward_loss = (reward_ce.mean(dim=1) * rho_t).sum() / H

        # 7. total = consistency_coef consistency + value_coef value + reward_coef reward
        return with_total(cfg, consistency, value, reward_loss, zs, rewards, targets, q_logits)

    def rollout_functions(self, model, generator: Optional[torch.Generator] = None):
        """The return with the decoded reward head."""
        return world_model_rollout(model, generator, reward=lambda z, a: model.q_value(model.reward_logits(z, a)))

    def stats(self, losses, n_behavioral, q):
        return {"q_value": float(q.mean())}
