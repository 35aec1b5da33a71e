"""IQ-MPC (SPEC section 6) as a :class:`Method` of the agent: the update and the planning return
over the shared world model, built from the pure functions of :mod:`.iqmpc`.

The world model has no reward part and the scalar critic (``critic = "scalar"``:
:class:`cdred_fast.world_model.ScalarQEnsemble`, 5 heads and a Polyak target, tau =
``cfg.tau``). One update:

* latent roll-out and consistency as SPEC section 3 (steps 1-2);
* the inverse soft-Q critic loss :func:`.iqmpc.iqmpc_critic_loss` (``cfg.grad_pen`` adds the
  gradient penalty with ``cfg.grad_pen_coef``);
* ``total = consistency_coef * consistency + value_coef * L_critic`` (20 and 0.1), no reward loss;
* the agent clips the gradient norm over ALL model parameters (``clip_all_parameters``: the
  policy's stale gradient and the gradient ``v0`` gives it included) and runs no StepLR
  (``use_step_lr = False``);
* the policy loss :func:`.iqmpc.iqmpc_policy_loss`, without the running scale ``S``.

Planning (:meth:`IQMPC.rollout_functions`) ranks sequences with the soft return of
:func:`.iqmpc.soft_planning_return`, drawn afresh on every call, so the policy-prior sequences'
returns are redrawn in every MPPI iteration (``deterministic=False``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..planner import RolloutFunctions
from ..world_model import choose_two_heads, randn
from .common import Method, latent_rollout, with_total
from .iqmpc import IQMPCCriticNoise, _head_pairs, draw_critic_noise, iqmpc_critic_loss, iqmpc_policy_loss

# the 0-dim statistics of the critic loss that an update reports (beside the agent's own)
_CRITIC_STATS = (
    "softq_loss",
    "v0",
    "chi2_loss",
    "grad_pen",
    "q_value",
    "q_expert",
    "q_behavioral",
    "q_diff",
    "target_value",
    "decoded_reward",
    "decoded_reward_expert",
    "decoded_reward_behavioral",
)


@dataclass
class IQMPCUpdateNoise:
    """The random draws of one IQ-MPC update over ``N`` concatenated samples.

    ``critic`` is drawn for all ``N`` samples: its ``v0_eps [N, A]`` and ``gp_u [H, num_q, N]``
    are cut to the expert rows (``[n_behavioral:]``) and to ``n_behavioral`` columns by
    :meth:`for_batch` once the split is known.
    """

    critic: IQMPCCriticNoise
    pi_eps: Tensor  # [H+1, N, A] policy noise of the policy loss
    pi_heads: Tensor  # [2]        the Q heads whose min the policy maximises

    def for_batch(self, n_behavioral: int) -> IQMPCCriticNoise:
        """The critic noise for ``n_behavioral`` behavioural samples first and the rest expert."""
        c, nb = self.critic, int(n_behavioral)
        return dataclasses.replace(c, v0_eps=c.v0_eps[nb:], gp_u=None if c.gp_u is None else c.gp_u[..., :nb])


class IQMPC(Method):
    name = "iqmpc"
    uses_expert = True
    uses_env_reward = False
    reward_part = None
    critic = "scalar"
    clip_all_parameters = True
    use_step_lr = False

    def draw_noise(self, agent, n: int, generator: Optional[torch.Generator] = None) -> IQMPCUpdateNoise:
        """The critic's draws (:func:`.iqmpc.draw_critic_noise`, expert-side draws for all ``n``
        rows), the gradient penalty's when ``cfg.grad_pen``, then the policy loss's."""
        cfg, H, A, dev = agent.cfg, agent.cfg.horizon, agent.action_dim, agent.device
        critic = draw_critic_noise(H, n, 0, A, cfg.num_q, False, generator, dev)
        if cfg.grad_pen:
            gen_dev = generator.device if generator is not None else dev
            critic.gp_u = torch.rand(H, cfg.num_q, n, generator=generator, device=gen_dev).to(dev)
            critic.gp_heads = _head_pairs(H * cfg.num_q, cfg.num_q, generator, dev).view(H, cfg.num_q, 2)
        return IQMPCUpdateNoise(
            critic=critic,
            pi_eps=randn((H + 1, n, A), generator, dev),
            pi_heads=choose_two_heads(cfg.num_q, generator, dev),
        )

    def compute_losses(
        self, agent, obs: Tensor, action: Tensor, n_behavioral: int, noise, reward: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        """Roll-out and consistency (SPEC section 3, steps 1-2), the critic loss of SPEC section 6
        as ``value``, ``reward`` 0, ``total = consistency_coef * consistency + value_coef * value``.
        ``rewards`` are the decoded rewards, ``td_targets`` the targets ``y = gamma V_bar(z')``,
        ``q_logits`` every head's scalar ``[num_q, H, N]``; the critic's statistics are added."""
        cfg, m = agent.cfg, agent.model
        next_z, zs, consistency = latent_rollout(m, obs, action, cfg.rho)
        critic, stats = iqmpc_critic_loss(
            m.scalar_q,
            m.pi,
            zs,
            action,
            next_z,
            n_behavioral,
            agent.discount,
            rho=cfg.rho,
            entropy_coef=cfg.entropy_coef,
            grad_pen=cfg.grad_pen,
            grad_pen_coef=cfg.grad_pen_coef,
            noise=noise.for_batch(n_behavioral),
            return_samples=True,
        )
        samples = stats["samples"]
        return with_total(
            cfg,
            consistency,
            critic,
            torch.zeros((), device=zs.device),
            zs,
            samples["rewards"],
            samples["td_targets"],
            samples["q_all"],
            **{k: stats[k] for k in _CRITIC_STATS},
        )

    def policy_loss(self, agent, zs: Tensor, noise, update_scale: bool = True) -> Tensor:
        """SPEC section 6: ``mean_t rho^t mean(entropy_coef log pi - Q_min)``, no running scale."""
        cfg = agent.cfg
        return iqmpc_policy_loss(
            agent.model.scalar_q,
            agent.model.pi,
            zs,
            rho=cfg.rho,
            entropy_coef=cfg.entropy_coef,
            eps=noise.pi_eps,
            heads=noise.pi_heads,
        )

    def rollout_functions(self, model, generator: Optional[torch.Generator] = None) -> RolloutFunctions:
        """The soft return of SPEC section 6 (:func:`.iqmpc.soft_planning_return`) on the MPPI loop,
        online heads, every draw from ``generator``. Step ``t`` (``transition``), draws in this order:
        the heads of ``Q_min(z_t, a_t)``, ``a^_t ~ pi(z_t)``, ``a~ ~ pi(z_{t+1})``, the heads of
        ``Q_min(z_{t+1}, a~)``:

            ``r_t = Q_min(z_t, a_t) - gamma (Q_min(z_{t+1}, a~) - c log pi(a~|z_{t+1})) - c log pi(a^_t|z_t)``;

        the bootstrap: ``a~ ~ pi(z_H)`` (the loop's ``policy``), then (``value``) ``a~' ~ pi(z_H)`` and
        the heads of ``Q_avg``: ``Q_avg(z_H, a~) - c log pi(a~'|z_H)``. ``c = cfg.entropy_coef``."""
        q, c, gamma = model.scalar_q, model.cfg.entropy_coef, model.cfg.discount_for()

        def transition(z: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
            q_t = q(z, a, "min", generator=generator)
            log_pi_hat = model.pi(z, generator=generator)[2]
            z_next = model.next(z, a)
            _, a_next, log_pi_next, _ = model.pi(z_next, generator=generator)
            v_next = q(z_next, a_next, "min", generator=generator) - c * log_pi_next
            return q_t - gamma * v_next - c * log_pi_hat, z_next

        def value(z: Tensor, a: Tensor) -> Tensor:
            log_pi = model.pi(z, generator=generator)[2]
            return q(z, a, "avg", generator=generator) - c * log_pi

        return RolloutFunctions(
            policy=lambda z: model.pi(z, generator=generator)[1],
            dynamics=model.next,
            reward=lambda z, a: transition(z, a)[0],
            value=value,
            deterministic=False,
            transition=transition,
        )

    def stats(self, losses, n_behavioral, q):
        """The critic's parts and values (``q_diff`` = mean Q on expert minus behavioural samples),
        the decoded reward (``reward_expert`` = ``decoded_reward_expert``, as CDRED's name)."""
        out = {k: float(losses[k]) for k in _CRITIC_STATS}
        out["reward_expert"] = out["decoded_reward_expert"]
        return out


__all__ = ["IQMPC", "IQMPCUpdateNoise"]
