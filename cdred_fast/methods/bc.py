"""Behaviour cloning, the BC baseline of the CDRED paper (SPEC.md section 7): pure functions and
the :class:`BC` method (``CDREDConfig.method = "bc"``).

BC trains the state encoder ``h`` and the policy prior ``pi`` of SPEC section 1 (no dynamics, no
critic, no interaction) by maximum likelihood of the expert actions under the policy's
tanh-Gaussian, and acts with the mean action ``tanh(mu)``.

The released ``update_pi_bc`` (``TobyLeelsz/iqmpc`` and ``TobyLeelsz/CDRED-WM``,
``tdmpc2.py``, with ``WorldModel.log_prob_expert`` in ``common/world_model.py``) is broken, as SPEC
section 7 says: it puts ``eps = a_expert - mu`` (the post-tanh action against the pre-tanh mean,
not divided by ``sigma``) into the Gaussian log-probability, and only ``pi``'s parameters are in
its optimiser, so the encoder never learns. Here instead, with ``(mu, log_sigma)`` the policy
head's outputs (``log_sigma`` squashed into ``[log_std_min, log_std_max]`` as in SPEC section 1):

    ``a_c = clamp(a, -b, b)``, ``b = 1 - 1e-6`` (:data:`ACTION_BOUND`),
    ``u = atanh(a_c)``, ``eps = (u - mu) / sigma``,
    ``log p(a) = sum_i (-eps_i^2 / 2 - log sigma_i - log(2 pi) / 2) - sum_i log(1 - a_c,i^2)``,

the exact log-density of ``a = tanh(mu + sigma * eps)``, ``eps ~ N(0, I)``. (The policy's
``log_prob`` of SPEC section 1 scales its Gaussian part by ``A`` to set the entropy bonus; a
likelihood has no such factor. The Jacobian term does not depend on the parameters, so neither
choice changes the direction of the gradient, only the logged value and its scale.) The release
has no clamp (it never inverts the tanh); the bound keeps ``atanh`` finite for expert actions at
exactly +-1, which planners and clipped controllers produce.

:class:`BC` runs these in the agent: each update takes a batch of expert sub-trajectories alone (no
behavioural batch), applies :func:`bc_loss` with the plain mean to every ``(s_t, a_t)`` pair in it, and
steps the encoder (in the world-model optimiser, learning rate ``lr * enc_lr_scale``) and the policy
prior (its own optimiser); both gradients are clipped to ``grad_clip_norm``. It acts with
:func:`bc_act`, never planning.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..precision import matmul_precision
from .common import Method

#: Expert actions are clamped to ``[-ACTION_BOUND, ACTION_BOUND]`` before ``atanh`` (SPEC section 7:
#: "atanh of the clamped action"); ``atanh(1 - 1e-6) = 7.25``.
ACTION_BOUND = 1.0 - 1e-6
#: Expert actions further than this outside ``[-1, 1]`` are refused (SPEC section 0: ``a in [-1, 1]^A``);
#: anything within it is clamped.
ACTION_TOLERANCE = 1e-3

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def policy_mean_log_std(model, z: Tensor) -> tuple[Tensor, Tensor]:
    """The policy head's pre-tanh mean and log-std (SPEC section 1): ``(mu, log_std)``, each ``[..., A]``.

    ``(mu, rho) = model.pi_net(z)``, ``log_std = lo + 0.5 (hi - lo)(tanh(rho) + 1)`` with
    ``lo, hi = model.cfg.log_std_min, model.cfg.log_std_max`` (as :meth:`WorldModel.pi`).
    """
    mu, rho = model.pi_net(z).chunk(2, dim=-1)
    lo, hi = float(model.cfg.log_std_min), float(model.cfg.log_std_max)
    return mu, lo + 0.5 * (hi - lo) * (torch.tanh(rho) + 1.0)


def tanh_gaussian_log_likelihood(mu: Tensor, log_std: Tensor, action: Tensor, bound: float = ACTION_BOUND) -> Tensor:
    """Log-density of ``action`` under ``tanh(N(mu, exp(log_std)^2))``, with ``atanh`` of the clamped action.

    ``mu, log_std, action [..., A]`` -> ``[...]``; see the module docstring for the formula. ``bound``
    in ``(0, 1)``: actions are clamped to ``[-bound, bound]`` first. ``1 - a_c^2`` is computed as
    ``(1 - a_c)(1 + a_c)``, exact near the bound.
    """
    if not 0.0 < float(bound) < 1.0:
        raise ValueError(f"bound must be in (0, 1), got {bound}")
    if mu.shape != log_std.shape or mu.shape != action.shape:
        raise ValueError(
            f"mu, log_std and action must have the same shape [..., A], got {tuple(mu.shape)}, "
            f"{tuple(log_std.shape)} and {tuple(action.shape)}"
        )
    a = action.to(mu.dtype).clamp(-float(bound), float(bound))
    u = torch.atanh(a)
    eps = (u - mu) * torch.exp(-log_std)
    gaussian = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(dim=-1)
    jacobian = torch.log((1.0 - a) * (1.0 + a)).sum(dim=-1)  # log |d tanh(u) / du| = log(1 - a^2)
    return gaussian - jacobian


def _check_bc_inputs(model, z: Tensor, action: Tensor, check_actions: bool) -> None:
    A = int(model.action_dim)
    if action.dim() < 1 or action.shape[-1] != A:
        raise ValueError(f"action must be [..., A={A}], got {tuple(action.shape)}")
    if z.dim() < 1 or z.shape[:-1] != action.shape[:-1]:
        raise ValueError(
            f"z [..., L] and action [..., A] must share their leading dimensions, got z {tuple(z.shape)} "
            f"and action {tuple(action.shape)}"
        )
    if check_actions:
        if not bool(torch.isfinite(action).all()):
            raise ValueError("expert actions contain NaN or inf")
        worst = float(action.abs().max()) if action.numel() else 0.0
        if worst > 1.0 + ACTION_TOLERANCE:
            raise ValueError(
                f"expert actions must lie in [-1, 1] (SPEC section 0); found |a| = {worst:.6g} "
                "(normalise the demonstrations' actions)"
            )


def bc_loss(
    model,
    z: Tensor,
    action: Tensor,
    *,
    rho: Optional[float] = None,
    bound: float = ACTION_BOUND,
    check_actions: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """BC loss of SPEC section 7: the negative log-likelihood of the expert actions under ``pi``.

    Args:
        model: a :class:`cdred_fast.world_model.WorldModel` (``pi_net``, ``cfg.log_std_min/max``,
            ``action_dim``).
        z: latents ``[..., L]``; pass ``z = model.encode(obs)`` with its gradient, so the encoder
            is trained together with the policy prior (SPEC section 7).
        action: expert actions ``[..., A]`` in ``[-1, 1]``, same leading dimensions as ``z``.
        rho: ``None`` (default): the plain mean over every leading dimension. A number: ``z`` and
            ``action`` are ``[T, B, ...]`` sub-trajectories and the loss is
            ``mean_t rho^t mean_b(-log p)`` (the temporal weighting of the released
            ``update_pi_bc``).
        bound: the clamp of :func:`tanh_gaussian_log_likelihood`.
        check_actions: refuse non-finite actions and actions outside ``[-1, 1]`` by more than
            :data:`ACTION_TOLERANCE` (reads a value on the host).

    Returns ``(loss, stats)`` with detached 0-dim ``stats``: ``bc_loss``, ``bc_log_likelihood``
    (mean), ``bc_mse`` (mean squared error of ``tanh(mu)`` against the clamped actions) and
    ``bc_log_std`` (mean).
    """
    _check_bc_inputs(model, z, action, check_actions)
    mu, log_std = policy_mean_log_std(model, z)
    ll = tanh_gaussian_log_likelihood(mu, log_std, action, bound)  # [...]
    if rho is None:
        loss = -ll.mean()
    else:
        if ll.dim() != 2:
            raise ValueError(
                f"with rho, z and action must be [T, B, ...] sub-trajectories, got action {tuple(action.shape)}"
            )
        rho_t = float(rho) ** torch.arange(ll.shape[0], device=ll.device, dtype=ll.dtype)
        loss = -(ll.mean(dim=1) * rho_t).mean()
    with torch.no_grad():
        a_c = action.to(mu.dtype).clamp(-float(bound), float(bound))
        stats = {
            "bc_loss": loss.detach(),
            "bc_log_likelihood": ll.detach().mean(),
            "bc_mse": (torch.tanh(mu) - a_c).pow(2).mean(),
            "bc_log_std": log_std.detach().mean(),
        }
    return loss, stats


@torch.no_grad()
def bc_act(model, z: Tensor) -> Tensor:
    """BC's action (SPEC section 7): the policy's mean action ``tanh(mu)``, ``[..., L] -> [..., A]``
    (the first output of :meth:`WorldModel.pi`, without drawing policy noise)."""
    mu, _ = policy_mean_log_std(model, z)
    return torch.tanh(mu)


class BC(Method):
    """Behaviour cloning (SPEC section 7): encoder and policy prior trained by maximum likelihood of
    the expert actions; no dynamics, critic or reward model is trained, and there is no
    environment interaction. Acts with ``tanh(mu)`` whether or not ``cfg.mpc`` is set."""

    name = "bc"
    uses_expert = True
    uses_env_reward = False
    reward_part = None
    interacts = False

    def draw_noise(self, agent, n: int, generator: Optional[torch.Generator] = None):
        """BC's loss draws nothing (the pixel encoder's random shift uses torch's global RNG)."""
        return None

    def rollout_functions(self, model, generator: Optional[torch.Generator] = None):
        raise ValueError("method='bc' does not plan: it acts with the policy's mean action tanh(mu)")

    def act(self, agent, z: Tensor, t0: bool, eval_mode: bool, generator: Optional[torch.Generator] = None) -> Tensor:
        """``tanh(mu)`` for the latent ``z [1, L]``, in training and evaluation alike (no draws)."""
        return bc_act(agent.model, z)[0]

    def update(self, agent, behavioral_batch, expert_batch, generator: Optional[torch.Generator] = None):
        """One gradient step on ``expert_batch`` (``obs [T+1, B, *obs_shape]``, ``action [T, B, A]``,
        any ``T >= 1``): :func:`bc_loss` (plain mean) on the ``T * B`` pairs ``(obs[t], action[t])``.
        Returns the statistics as floats: :func:`bc_loss`'s, ``total_loss`` (= ``bc_loss``),
        ``grad_norm`` (encoder), ``pi_grad_norm``, ``lr`` (encoder) and ``pi_lr``."""
        if behavioral_batch is not None:
            raise ValueError("method='bc' learns from the demonstrations alone: pass behavioral_batch=None")
        cfg, m = agent.cfg, agent.model
        obs, action = expert_batch["obs"], expert_batch["action"]
        shape = ", ".join(str(d) for d in agent.obs_shape)
        if obs.dim() != 2 + len(agent.obs_shape) or obs.shape[0] < 2 or tuple(obs.shape[2:]) != agent.obs_shape:
            raise ValueError(f"expert_batch['obs'] must be [T+1, B, {shape}] with T >= 1, got {tuple(obs.shape)}")
        if tuple(action.shape) != (obs.shape[0] - 1, obs.shape[1], agent.action_dim):
            raise ValueError(
                f"expert_batch['action'] must be [T={obs.shape[0] - 1}, B={obs.shape[1]}, {agent.action_dim}], "
                f"got {tuple(action.shape)}"
            )
        obs = agent._obs_tensor(obs[:-1])  # the states the actions were taken in
        action = action.to(device=agent.device, dtype=torch.float32)
        encoder, pi = list(m.encoder.parameters()), list(m.pi_net.parameters())
        m.train(True)  # the pixel encoder's random shift, as in the other methods' updates
        try:
            # update_precision as in the other methods' updates (precision.bf16_products)
            with matmul_precision(agent._update_matmul_precision), agent.update_products():
                loss, stats = bc_loss(m, m.encode(obs), action)
                agent.optim.zero_grad(set_to_none=True)
                agent.pi_optim.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(encoder, cfg.grad_clip_norm)
                pi_grad_norm = torch.nn.utils.clip_grad_norm_(pi, cfg.grad_clip_norm)
                agent.optim.step()  # only the encoder has gradients in it
                agent.pi_optim.step()
                agent.scheduler.step()
                agent.pi_scheduler.step()
        finally:
            m.train(False)
        return {
            **{k: float(v) for k, v in stats.items()},
            "total_loss": float(loss.detach()),
            "grad_norm": float(grad_norm),
            "pi_grad_norm": float(pi_grad_norm),
            "lr": float(agent.optim.param_groups[0]["lr"]),
            "pi_lr": float(agent.pi_optim.param_groups[0]["lr"]),
        }


__all__ = [
    "BC",
    "ACTION_BOUND",
    "ACTION_TOLERANCE",
    "policy_mean_log_std",
    "tanh_gaussian_log_likelihood",
    "bc_loss",
    "bc_act",
]
