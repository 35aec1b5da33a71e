"""What every method shares: the :class:`Method` interface and the steps of SPEC section 3 that
CDRED and TD-MPC2 compute alike (latent roll-out and consistency, TD target, value loss, the
scaled policy loss), plus the planning functions of the world model (SPEC section 4).

A method is a stateless object; its functions take the :class:`cdred_fast.CDREDAgent` (config,
world model, discount, running scale) and the update's tensors. The agent calls them in this
order in one update: :meth:`Method.draw_noise`, :meth:`Method.compute_losses` (steps 1-7),
:meth:`Method.policy_loss` (step 8), :meth:`Method.stats`; in acting, :meth:`Method.rollout_functions` gives the MPPI loop
its model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import soft_ce
from ..planner import RolloutFunctions
from ..world_model import choose_two_heads, randn

if TYPE_CHECKING:  # only for annotations: the agent imports the methods
    from ..agent import CDREDAgent
    from ..world_model import WorldModel


@dataclass
class UpdateNoise:
    """The random draws of one CDRED / TD-MPC2 update (``N = B_behavioural + B_expert``)."""

    td_eps: Tensor  # [H, N, A]    policy noise for the action in the TD target
    td_heads: Tensor  # [2]        target-Q heads whose min forms the TD target
    target_idx: Tensor  # [H, N]   target index k_i of each predictor-loss sample (behavioural first)
    pi_eps: Tensor  # [H+1, N, A]  policy noise in the policy loss
    pi_heads: Tensor  # [2]        Q heads whose min the policy maximises


class Method:
    """One learning method over the shared world model. Subclasses set the class attributes and
    implement :meth:`compute_losses`; the other functions have the CDRED / TD-MPC2 defaults.

    Class attributes:
        name: the value of ``CDREDConfig.method`` that selects it.
        uses_expert: ``update`` takes an expert batch (demonstrations) besides the behavioural one.
        uses_env_reward: the behavioural batch must carry the environment reward ``"reward" [H, B]``.
        reward_part: the reward part the world model is built with (``WorldModel(reward_part=)``):
            ``"cdred"`` (CDRED reward model), ``"head"`` (TD-MPC2 reward head) or None.
        interacts: trained while acting in the environment (Algorithm 1); False (BC): from the
            demonstrations alone, the environment used only for evaluation.
        critic: the Q ensemble the world model is built with (``WorldModel(critic=)``):
            ``"distributional"`` (SPEC section 1) or ``"scalar"`` (IQ-MPC, SPEC section 6).
        clip_all_parameters: the world-model update clips the gradient norm over ALL model
            parameters, the policy's (stale, and any from the world-model loss) included, as
            IQ-MPC's release does; otherwise over the world-model optimiser's parameters.
        use_step_lr: both optimisers decay with StepLR (``cfg.lr_step``, ``cfg.lr_gamma``).
    """

    name: ClassVar[str]
    uses_expert: ClassVar[bool]
    uses_env_reward: ClassVar[bool]
    reward_part: ClassVar[Optional[str]]
    interacts: ClassVar[bool] = True
    critic: ClassVar[str] = "distributional"
    clip_all_parameters: ClassVar[bool] = False
    use_step_lr: ClassVar[bool] = True

    def draw_noise(self, agent: "CDREDAgent", n: int, generator: Optional[torch.Generator] = None) -> Any:
        """Every random number one update needs, for ``n`` concatenated samples, drawn up front so
        that the losses are a deterministic function of ``(batches, noise)`` (Q dropout and the
        pixel shift excepted: they use torch's global RNG). Default: an :class:`UpdateNoise` (the
        predictor-loss target indices are drawn also for methods without a CDRED reward)."""
        H, A, dev, cfg = agent.cfg.horizon, agent.action_dim, agent.device, agent.cfg
        gen_dev = generator.device if generator is not None else dev
        return UpdateNoise(
            td_eps=randn((H, n, A), generator, dev),
            td_heads=choose_two_heads(cfg.num_q, generator, dev),
            target_idx=torch.randint(cfg.num_targets, (H, n), generator=generator, device=gen_dev).to(dev),
            pi_eps=randn((H + 1, n, A), generator, dev),
            pi_heads=choose_two_heads(cfg.num_q, generator, dev),
        )

    def reward_parameters(self, model: "WorldModel") -> Iterable[nn.Parameter]:
        """The reward part's parameters, trained by the world-model optimiser with encoder,
        dynamics and Q ensemble (SPEC section 3, step 7); none by default."""
        return []

    def compute_losses(
        self,
        agent: "CDREDAgent",
        obs: Tensor,
        action: Tensor,
        n_behavioral: int,
        noise: "UpdateNoise",
        reward: Optional[Tensor] = None,
    ) -> dict[str, Tensor]:
        """The world-model losses of one update on ``obs [H+1, N, *obs_shape]``, ``action [H, N, A]``
        (the first ``n_behavioral`` samples behavioural, the rest expert; ``reward [H, N]`` the
        environment reward when :attr:`uses_env_reward`). Returns at least ``total`` (minimised by
        the world-model optimiser), ``consistency``, ``value``, ``reward`` and, detached,
        ``zs [H+1, N, L]`` (the policy's latents), ``rewards [H, N]``, ``td_targets [H, N]``,
        ``q_logits [num_q, H, N, bins]``."""
        raise NotImplementedError

    def policy_loss(self, agent: "CDREDAgent", zs: Tensor, noise: "UpdateNoise", update_scale: bool = True) -> Tensor:
        """Step 8 on the detached latents ``zs [H+1, N, L]`` (default: :func:`scaled_policy_loss`)."""
        return scaled_policy_loss(agent, zs, noise, update_scale)

    def rollout_functions(self, model: "WorldModel", generator: Optional[torch.Generator] = None) -> RolloutFunctions:
        """The model as the MPPI loop sees it (its planning return), draws from ``generator``."""
        raise NotImplementedError

    def stats(self, losses: dict[str, Tensor], n_behavioral: int, q: Tensor) -> dict[str, float]:
        """Method-specific statistics of an update; ``q [H, N]`` the mean scalar Q over heads."""
        return {}

    def act(
        self, agent: "CDREDAgent", z: Tensor, t0: bool, eval_mode: bool, generator: Optional[torch.Generator] = None
    ) -> Optional[Tensor]:
        """The method's own action ``[A]`` for the latent ``z [1, L]``, or None (default) for the
        agent's: MPPI when ``cfg.mpc``, the policy prior otherwise."""
        return None

    def update(
        self,
        agent: "CDREDAgent",
        behavioral_batch: Optional[dict],
        expert_batch: Optional[dict],
        generator: Optional[torch.Generator] = None,
    ) -> Optional[dict[str, float]]:
        """An update of the method's own (its statistics), or None (default) for the agent's update
        of SPEC section 3 with this method's losses."""
        return None


# =============================================================================== shared steps (SPEC section 3)
def rho_weights(rho: float, n: int, device) -> Tensor:
    """``[rho^0, ..., rho^(n-1)]``, the weights of the horizon steps."""
    return rho ** torch.arange(n, device=device, dtype=torch.float32)


def latent_rollout(model: "WorldModel", obs: Tensor, action: Tensor, rho: float) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-2: ``z'_t = h(s_{t+1})`` (no gradient); ``z_0 = h(s_0)``, ``z_{t+1} = d(z_t, a_t)``;
    consistency ``= (1/H) sum_t rho^t MSE(z_{t+1}, z'_t)``. Returns ``(next_z [H, N, L], zs [H+1, N, L],
    consistency)``."""
    H = action.shape[0]
    # 1. z'_t = h(s_{t+1}), no gradient
    with torch.no_grad():
        next_z = model.encode(obs[1:])

    # 2. latent roll-out and consistency = (1/H) sum_t rho^t MSE(z_{t+1}, z'_t)
    z = model.encode(obs[0])
    zs = [z]
    consistency = 0.0
    for t in range(H):
        z = model.next(z, action[t])
        consistency = consistency + rho**t * F.mse_loss(z, next_z[t])
        zs.append(z)
    return next_z, torch.stack(zs), consistency / H


@torch.no_grad()
def td_targets(agent: "CDREDAgent", next_z: Tensor, rewards: Tensor, noise: "UpdateNoise") -> Tensor:
    """Step 4: ``y_t = r_t + gamma * Q_bar_min(z'_t, pi(z'_t))`` with the sampled policy action."""
    m = agent.model
    next_a = m.pi(next_z, eps=noise.td_eps)[1]
    return rewards + agent.discount * m.Q(next_z, next_a, "min", target=True, heads=noise.td_heads)


def value_loss(
    agent: "CDREDAgent", zs: Tensor, action: Tensor, targets: Tensor, rho_t: Tensor
) -> tuple[Tensor, Tensor]:
    """Step 5: ``(1/(H num_q)) sum_t rho^t sum_q mean_i CE(Q_q(z_t, a_t), twohot(y_t))``.
    Returns ``(value, q_logits [num_q, H, N, bins])``."""
    cfg = agent.cfg
    q_logits = agent.model.Q(zs[:-1], action, "all")  # [num_q, H, N, bins]
    ce = soft_ce(q_logits, targets.unsqueeze(0), cfg.vmin, cfg.vmax)  # [num_q, H, N]
    return (ce.mean(dim=2) * rho_t).sum() / (action.shape[0] * cfg.num_q), q_logits


def with_total(
    cfg,
    consistency: Tensor,
    value: Tensor,
    reward: Tensor,
    zs: Tensor,
    rewards: Tensor,
    targets: Tensor,
    q_logits: Tensor,
    **extra: Tensor,
) -> dict[str, Tensor]:
    """Step 7, ``total = consistency_coef * consistency + value_coef * value + reward_coef * reward``,
    and the dict :meth:`Method.compute_losses` returns (``zs`` and ``q_logits`` detached here)."""
    total = cfg.consistency_coef * consistency + cfg.value_coef * value + cfg.reward_coef * reward
    return {
        "consistency": consistency,
        "value": value,
        "reward": reward,
        "total": total,
        "zs": zs.detach(),
        "rewards": rewards,
        "td_targets": targets,
        "q_logits": q_logits.detach(),
        **extra,
    }


def scaled_policy_loss(agent: "CDREDAgent", zs: Tensor, noise: "UpdateNoise", update_scale: bool = True) -> Tensor:
    """Step 8: ``mean_t rho^t mean_i(entropy_coef log pi(a|z) - Q_min(z, a) / S)``, ``a ~ pi(z)``.

    ``zs [H+1, N, L]`` are detached latents. ``S`` (``agent.scale``) is updated first from the Q
    values of step 0 (when ``update_scale``).
    """
    cfg = agent.cfg
    _, a, log_prob, _ = agent.model.pi(zs, eps=noise.pi_eps)
    q = agent.model.Q(zs, a, "min", heads=noise.pi_heads)  # [H+1, N]
    if update_scale:
        agent.scale.update(q[0])
    q = agent.scale(q)
    rho_t = rho_weights(cfg.rho, zs.shape[0], zs.device)
    return ((cfg.entropy_coef * log_prob - q).mean(dim=1) * rho_t).mean()


def world_model_rollout(
    model: "WorldModel",
    generator: Optional[torch.Generator],
    reward: Callable[[Tensor, Tensor], Tensor],
    shared_reward: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
) -> RolloutFunctions:
    """SPEC section 4's return ``G = sum_t gamma^t R(z_t, a_t) + gamma^H Q_avg(z_H, pi(z_H))`` on the
    world model, for the reward ``R`` given: actions sampled from the policy prior, ``Q_avg`` of
    two random heads; the policy's noise and the Q heads come from ``generator``."""
    return RolloutFunctions(
        policy=lambda z: model.pi(z, generator=generator)[1],  # a sampled action
        dynamics=model.next,
        reward=reward,
        value=lambda z, a: model.Q(z, a, "avg", generator=generator),
        shared_reward=shared_reward,
    )


__all__ = [
    "Method",
    "UpdateNoise",
    "latent_rollout",
    "rho_weights",
    "scaled_policy_loss",
    "td_targets",
    "value_loss",
    "with_total",
    "world_model_rollout",
]
