"""CDRED (SPEC sections 2-4): the coupled distributional reward of the two predictors against the
random targets, learnt from an expert and a behavioural batch; no environment reward. The reward's
input is the latent state-action pair, or the observed one with ``reward_input="obs"`` (SPEC section 7)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..precision import planning_dtype
from .common import Method, latent_rollout, rho_weights, td_targets, value_loss, with_total, world_model_rollout


class CDRED(Method):
    name = "cdred"
    uses_expert = True
    uses_env_reward = False
    reward_part = "cdred"

    def reward_parameters(self, model):
        """Both predictors (the targets are never trained)."""
        return model.reward_model.predictor_parameters()

    def compute_losses(
        self, agent, obs: Tensor, action: Tensor, n_behavioral: int, noise, reward: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        """Steps 1-7 of SPEC section 3; also returns the predictor losses of each batch, detached
        (``reward_loss_expert``, ``reward_loss_behavioral``)."""
        cfg, m = agent.cfg, agent.model
        H, nb = cfg.horizon, n_behavioral
        rho_t = rho_weights(cfg.rho, H, agent.device)

        # 1-2. z'_t = h(s_{t+1}) (no gradient); roll-out z_{t+1} = d(z_t, a_t) and consistency
        next_z, zs, consistency = latent_rollout(m, obs, action, cfg.rho)

        # 3 and 6 share one evaluation of the K targets: the rewards r_t = R(z_t, a_t) (no gradient)
        # and the per-sample predictor losses on x = [z_t ; a_t] of the roll-out latents, or with
        # cfg.reward_input="obs" on x = [s_t ; a_t] of the real observations (no gradient into the encoder)
        states = obs[:-1] if cfg.reward_input == "obs" else zs[:-1]
        x = torch.cat([states, action], dim=-1)  # [H, N, L+A] (or [H, N, obs_dim+A])
        with m.products("rnd"):  # bfloat16 products with update_precision="bfloat16-q-rnd"
            rewards, loss_exp, loss_beh = m.reward_model.reward_and_predictor_loss(
                x, nb, idx_expert=noise.target_idx[:, nb:], idx_behavioral=noise.target_idx[:, :nb]
            )

        # 4. TD target y_t = r_t + gamma * Q_bar_min(z'_t, pi(z'_t)), sampled policy action
        targets = td_targets(agent, next_z, rewards, noise)

        # 5. value = (1/(H num_q)) sum_t rho^t sum_q mean_i CE(Q_q(z_t, a_t), twohot(y_t))
        value, q_logits = value_loss(agent, zs, action, targets, rho_t)

        # 6. predictor loss (SPEC section 2): sum_t rho^t (l_phi + l_psi) / H
        loss_exp_t = (loss_exp.view(H, -1).mean(dim=1) * rho_t).sum() / H
        loss_beh_t = (loss_beh.view(H, -1).mean(dim=1) * rho_t).sum() / H
        reward_loss = loss_exp_t + loss_beh_t

        # 7. total = 20 consistency + 0.1 value + 0.1 reward (the config's coefficients)
        return with_total(
            cfg,
            consistency,
            value,
            reward_loss,
            zs,
            rewards,
            targets,
            q_logits,
            reward_loss_expert=loss_exp_t.detach(),
            reward_loss_behavioral=loss_beh_t.detach(),
        )

    def rollout_functions(self, model, generator: Optional[torch.Generator] = None):
        """The return with the CDRED reward ``R(z, a)`` (SPEC Eq. 7); at a plan's first step, where
        every row has the same ``z``, its part of each first layer is computed once. Undefined with
        ``reward_input="obs"`` (a reward of observations has no value at imagined latents)."""
        if model.cfg.reward_input == "obs":
            raise ValueError("reward_input='obs' has no reward at imagined latents: it cannot plan (use mpc=False)")
        reward_model = model.reward_model
        # bfloat16 reward networks in planning (CDREDConfig.planning_precision; the reward stays
        # float32), or None: the parameters' own dtype
        bf16 = planning_dtype(model.cfg.planning_precision, next(reward_model.parameters()).device) == torch.bfloat16
        dtype = torch.bfloat16 if bf16 else None
        return world_model_rollout(
            model,
            generator,
            reward=lambda z, a: reward_model(torch.cat([z, a], dim=-1), dtype=dtype),
            shared_reward=lambda z, a: reward_model(a, x_shared=z, dtype=dtype),
        )

    def stats(self, losses, n_behavioral, q):
        nb, rewards = n_behavioral, losses["rewards"]
        return {
            "reward_loss_expert": float(losses["reward_loss_expert"]),
            "reward_loss_behavioral": float(losses["reward_loss_behavioral"]),
            "reward_expert": float(rewards[:, nb:].mean()),
            "q_gap": float(q[:, nb:].mean() - q[:, :nb].mean()),
        }
