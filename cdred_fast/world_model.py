"""The decoder-free world model of SPEC.md section 1 (TD-MPC2 style, state observations).

Parts: encoder ``h``, dynamics ``d``, Q ensemble (distributional, 5 heads) with a
Polyak target copy, policy prior ``pi``, and the CDRED reward model
(:class:`cdred_fast.reward.CDREDReward`) on ``x = [z ; a]``.

Shapes: leading dimensions are free; ``Q(..., "min"|"avg")``, ``reward`` and
the policy log-probability return ``[...]`` with no trailing singleton.
Randomness (policy noise, the two Q heads) can be given explicitly (``eps``,
``heads``) or drawn from an optional ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from .config import CDREDConfig
from .layers import Ensemble, SimNorm, mlp, trunc_normal_init_, two_hot_inv
from .reward import CDREDReward

Q_RETURN_TYPES = ("all", "min", "avg")


# --------------------------------------------------------------------------- random helpers
def randn(shape, generator: Optional[torch.Generator], device, dtype=torch.float32) -> Tensor:
    """Standard normal draws from ``generator`` (on its own device), returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(*shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def choose_two_heads(num_q: int, generator: Optional[torch.Generator], device) -> Tensor:
    """Two distinct Q-head indices drawn uniformly out of ``num_q`` (SPEC section 1)."""
    gen_device = generator.device if generator is not None else device
    return torch.randperm(num_q, generator=generator, device=gen_device)[:2].to(device)


# --------------------------------------------------------------------------- the model
class WorldModel(nn.Module):
    """Encoder, dynamics, Q ensemble (+ target), policy prior and CDRED reward (SPEC section 1).

    Args:
        cfg: the config. obs_dim: size of a state observation. action_dim: ``A``.
    """

    def __init__(self, cfg: CDREDConfig, obs_dim: int, action_dim: int):
        super().__init__()
        if cfg.obs != "state":
            raise NotImplementedError(f"WorldModel supports obs='state' only for now, got obs={cfg.obs!r}")
        self.cfg = cfg
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        L, A, M = cfg.latent_dim, self.action_dim, cfg.mlp_dim

        # h: MLP(obs -> [enc_dim] -> L), last layer Linear -> LayerNorm -> SimNorm
        self.encoder = mlp(obs_dim, [cfg.enc_dim], L, last_act=SimNorm(cfg.simnorm_dim))
        # d: MLP(L + A -> [M, M] -> L), last layer Linear -> LayerNorm -> SimNorm
        self.dynamics = mlp(L + A, [M, M], L, last_act=SimNorm(cfg.simnorm_dim))
        # pi: MLP(L -> [M, M] -> 2A) giving (mu, rho)
        self.pi_net = mlp(L, [M, M], 2 * A)
        for net in (self.encoder, self.dynamics, self.pi_net):
            trunc_normal_init_(net)

        # Q ensemble: num_q x MLP(L + A -> [M, M] -> num_bins), dropout after the first Linear,
        # last Linear zero-initialised (weight; the bias is already 0).
        heads = [trunc_normal_init_(mlp(L + A, [M, M], cfg.num_bins, dropout=cfg.dropout)) for _ in range(cfg.num_q)]
        for head in heads:
            nn.init.zeros_(head[-1].weight)
        self.Qs = Ensemble(heads)
        self.target_Qs = copy.deepcopy(self.Qs).requires_grad_(False)

        # CDRED reward on x = [z ; a] (SPEC section 2)
        self.reward_model = CDREDReward(cfg, L + A)
        self.train(False)  # acting is the default mode; the agent switches to train() for updates

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "WorldModel":
        """As ``nn.Module.train`` but the target Qs always stay in eval mode (no dropout)."""
        super().train(mode)
        self.target_Qs.train(False)
        return self

    @contextlib.contextmanager
    def planning(self):
        """Context in which the model is in eval mode (Q dropout off); restores the mode after."""
        was_training = self.training
        self.train(False)
        try:
            yield self
        finally:
            self.train(was_training)

    def track_q_grad(self, mode: bool = True) -> None:
        """Enable/disable gradients of the online Q parameters (off during the policy update)."""
        for p in self.Qs.parameters():
            p.requires_grad_(mode)

    @torch.no_grad()
    def soft_update_target_Q(self) -> None:
        """Polyak averaging ``Q_bar <- (1 - tau) Q_bar + tau Q`` (SPEC section 3, step 9)."""
        for p, p_target in zip(self.Qs.parameters(), self.target_Qs.parameters()):
            p_target.lerp_(p, self.cfg.tau)

    # ------------------------------------------------------------------ parts
    def encode(self, obs: Tensor) -> Tensor:
        """``z = h(s)``: ``[..., obs_dim] -> [..., L]``."""
        return self.encoder(obs)

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        """``z' = d(z, a)``: ``[..., L], [..., A] -> [..., L]``."""
        return self.dynamics(torch.cat([z, a], dim=-1))

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        """CDRED reward ``R(z, a)`` (no gradient): ``[...]``."""
        return self.reward_model(torch.cat([z, a], dim=-1))

    def pi(
        self, z: Tensor, eps: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Policy prior of SPEC section 1: returns ``(tanh(mu), a, log_prob, log_std)``.

        ``(mu, rho) = pi_net(z)``; ``log_std = lo + 0.5 (hi - lo)(tanh(rho) + 1)``;
        ``u = mu + exp(log_std) * eps``; ``a = tanh(u)``;
        ``log_prob = sum_i [-eps_i^2 / 2 - log_std_i - log(2 pi) / 2] - sum_i log(relu(1 - a_i^2) + 1e-6)``.
        ``eps`` defaults to standard normal draws (from ``generator`` if given).
        Shapes: ``mu, a, log_std: [..., A]``, ``log_prob: [...]``.
        """
        mu, rho = self.pi_net(z).chunk(2, dim=-1)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(rho) + 1.0)
        if eps is None:
            eps = randn(mu.shape, generator, mu.device, mu.dtype)
        u = mu + eps * log_std.exp()
        gaussian = (-0.5 * eps.pow(2) - log_std).sum(dim=-1) - 0.5 * math.log(2 * math.pi) * mu.shape[-1]
        a = torch.tanh(u)
        log_prob = gaussian - torch.log(F.relu(1.0 - a.pow(2)) + 1e-6).sum(dim=-1)  # tanh correction
        return torch.tanh(mu), a, log_prob, log_std

    def Q(
        self,
        z: Tensor,
        a: Tensor,
        return_type: str = "min",
        target: bool = False,
        heads: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Q values (SPEC section 1).

        ``"all"``: logits of every head ``[num_q, ..., num_bins]``. ``"min"`` / ``"avg"``: min / mean
        of the scalar values ``symexp(sum softmax * bins)`` of two heads chosen at random out of
        ``num_q`` (or the two ids in ``heads``), ``[...]``. ``target`` uses the Polyak copy.
        """
        if return_type not in Q_RETURN_TYPES:
            raise ValueError(f"return_type must be one of {Q_RETURN_TYPES}, got {return_type!r}")
        net = self.target_Qs if target else self.Qs
        x = torch.cat([z, a], dim=-1)
        if return_type == "all":
            return net(x)
        if heads is None:
            heads = choose_two_heads(self.cfg.num_q, generator, x.device)
        q = two_hot_inv(net(x, index=heads.to(x.device)), self.cfg.vmin, self.cfg.vmax)  # [2, ...]
        return q.min(dim=0).values if return_type == "min" else q.mean(dim=0)

    def q_value(self, logits: Tensor) -> Tensor:
        """Scalar value of distributional logits ``[..., num_bins] -> [...]``."""
        return two_hot_inv(logits, self.cfg.vmin, self.cfg.vmax)


__all__ = ["WorldModel", "randn", "choose_two_heads", "Q_RETURN_TYPES"]
