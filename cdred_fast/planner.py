"""MPPI planning in the latent space of the world model (SPEC.md section 4, paper Algorithm 2).

The two steps that fused kernels will replace are separate functions with plain
tensor interfaces:

* :func:`sample_candidates` - ``a = clamp(mean + std * eps, -1, 1)``;
* :func:`elite_update` - top-k elites, softmax weights, new mean and std.

:class:`MPPIPlanner` drives them with a model that provides ``pi(z, generator=)``,
``next(z, a)``, ``reward(z, a)``, ``Q(z, a, "avg", generator=)`` and a ``planning()``
context manager (eval mode: Q dropout off). Every random draw takes an optional
``torch.Generator`` so plans are reproducible.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .config import CDREDConfig
from .world_model import randn


def sample_candidates(mean: Tensor, std: Tensor, eps: Tensor) -> Tensor:
    """Candidate action sequences ``clamp(mean + std * eps, -1, 1)`` (SPEC section 4, step 3).

    Args: ``mean [H, A]``, ``std [H, A]``, ``eps [H, M, A]`` standard normal.
    Returns: ``[H, M, A]``.
    """
    return (mean.unsqueeze(1) + std.unsqueeze(1) * eps).clamp(-1.0, 1.0)


def elite_update(
    values: Tensor, actions: Tensor, num_elites: int, temperature: float, min_std: float, max_std: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Elite selection and the MPPI mean/std update (SPEC section 4, step 3).

    Keep the ``k = num_elites`` highest values, weight them by
    ``w = softmax(temperature * (G_elite - max G_elite))`` and set
    ``mean = sum w a / sum w``, ``std = sqrt(sum w (a - mean)^2 / sum w)`` clamped
    to ``[min_std, max_std]``. (The released code adds 1e-9 to ``sum w``, which is 1
    after the softmax; so does this function.)

    Args: ``values [N]`` (NaN already replaced), ``actions [H, N, A]``.
    Returns: ``(mean [H, A], std [H, A], elite_actions [H, k, A], weights [k])``.
    """
    elite_idx = torch.topk(values, num_elites, dim=0).indices
    elite_values = values[elite_idx]
    elite_actions = actions[:, elite_idx]
    weights = torch.softmax(temperature * (elite_values - elite_values.max()), dim=0)
    w = weights.view(1, -1, 1)
    denom = weights.sum() + 1e-9
    mean = (w * elite_actions).sum(dim=1) / denom
    std = ((w * (elite_actions - mean.unsqueeze(1)).pow(2)).sum(dim=1) / denom).sqrt().clamp(min_std, max_std)
    return mean, std, elite_actions, weights


class MPPIPlanner:
    """MPPI of SPEC section 4 with warm start, policy-prior trajectories and a NaN guard.

    Args:
        cfg: the config (horizon, num_samples, num_elites, num_pi_trajs, iterations,
            temperature, min_std, max_std and the discount).
        model: a :class:`cdred_fast.world_model.WorldModel` (or anything with the same methods).
        action_dim: ``A``; sets the number of iterations (+2 when ``A >= 20``).
        device: where the plan's tensors live.
        discount: overrides ``cfg.discount_for()``.
    """

    def __init__(self, cfg: CDREDConfig, model, action_dim: int, device="cpu", discount: Optional[float] = None):
        self.cfg = cfg
        self.model = model
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.discount = float(cfg.discount_for() if discount is None else discount)
        self.iterations = cfg.iterations_for(self.action_dim)
        self._prev_mean: Optional[Tensor] = None  # the last plan's mean [H, A], for the warm start

    def reset(self) -> None:
        """Forget the warm start (the next plan starts from mean 0)."""
        self._prev_mean = None

    def initial_mean(self, t0: bool) -> Tensor:
        """Step 2: zeros, or (when not at the episode start) the previous mean shifted one step."""
        mean = torch.zeros(self.cfg.horizon, self.action_dim, device=self.device)
        if not t0 and self._prev_mean is not None:
            mean[:-1] = self._prev_mean[1:]
        return mean

    @torch.no_grad()
    def policy_trajectories(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Step 1: roll ``pi`` (sampled actions) and ``d`` from ``z [1, L]``: ``[H, N_pi, A]``."""
        H, n = self.cfg.horizon, self.cfg.num_pi_trajs
        actions = torch.empty(H, n, self.action_dim, device=self.device)
        _z = z.expand(n, -1)
        for t in range(H - 1):
            actions[t] = self.model.pi(_z, generator=generator)[1]
            _z = self.model.next(_z, actions[t])
        actions[-1] = self.model.pi(_z, generator=generator)[1]
        return actions

    @torch.no_grad()
    def estimate_value(self, z: Tensor, actions: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """``G = sum_t gamma^t R(z_t, a_t) + gamma^H Q_avg(z_H, pi(z_H))``; ``z [N, L]``, ``actions [H, N, A]`` -> ``[N]``."""
        G, discount = 0.0, 1.0
        for t in range(self.cfg.horizon):
            G = G + discount * self.model.reward(z, actions[t])
            z = self.model.next(z, actions[t])
            discount *= self.discount
        a_H = self.model.pi(z, generator=generator)[1]
        return G + discount * self.model.Q(z, a_H, "avg", generator=generator)

    @torch.no_grad()
    def plan(
        self, z: Tensor, t0: bool = False, eval_mode: bool = False, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Plan from latent ``z`` (``[L]`` or ``[1, L]``) and return the action ``[A]`` (SPEC section 4)."""
        cfg = self.cfg
        H, N, n_pi, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, self.action_dim
        with self.model.planning():  # eval mode: Q dropout off
            z = z.reshape(1, -1).to(self.device)
            actions = torch.empty(H, N, A, device=self.device)
            if n_pi > 0:
                actions[:, :n_pi] = self.policy_trajectories(z, generator)
            mean = self.initial_mean(t0)
            std = torch.full((H, A), cfg.max_std, device=self.device)
            z_rep = z.expand(N, -1)
            for _ in range(self.iterations):
                eps = randn((H, N - n_pi, A), generator, self.device)
                actions[:, n_pi:] = sample_candidates(mean, std, eps)
                values = torch.nan_to_num(self.estimate_value(z_rep, actions, generator), nan=0.0)
                mean, std, elite_actions, weights = elite_update(
                    values, actions, cfg.num_elites, cfg.temperature, cfg.min_std, cfg.max_std
                )
            # Step 4: one elite drawn with probability w; its first action (+ std_0 * eps unless evaluating).
            choice = torch.multinomial(weights.to(generator.device) if generator is not None else weights, 1, generator=generator)
            a = elite_actions[0, choice.to(self.device)].reshape(A)
            self._prev_mean = mean
            if not eval_mode:
                a = a + std[0] * randn((A,), generator, self.device)
            return a.clamp(-1.0, 1.0)


__all__ = ["MPPIPlanner", "sample_candidates", "elite_update"]
