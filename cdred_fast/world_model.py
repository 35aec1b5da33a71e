"""The decoder-free world model of SPEC.md section 1 (TD-MPC2 style).

Parts: encoder ``h`` (an MLP for state observations, :class:`PixelEncoder` for
stacked RGB frames), dynamics ``d``, Q ensemble (distributional, 5 heads; for IQ-MPC
:class:`ScalarQEnsemble`, 5 scalar heads) with a Polyak target copy, policy prior ``pi``,
and the reward part the method needs (``reward_part``): the CDRED reward model (:class:`cdred_fast.reward.CDREDReward`)
on ``x = [z ; a]`` (CDRED), TD-MPC2's reward head ``MLP(L + A -> [mlp_dim, mlp_dim]
-> num_bins)`` regressed with the two-hot soft cross-entropy (TD-MPC2, training RL
experts on the environment reward), or none.

The planning reward built from these parts is the method's
(:meth:`cdred_fast.methods.Method.rollout_functions`).

Shapes: leading dimensions are free; ``Q(..., "min"|"avg")`` and
the policy log-probability return ``[...]`` with no trailing singleton.
Randomness (policy noise, the two Q heads) can be given explicitly (``eps``,
``heads``) or drawn from an optional ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CDREDConfig, conv_output_size
from .layers import Ensemble, SimNorm, mlp, trunc_normal_init_, two_hot_inv, use_kernels
from .precision import bf16_products
from .reward import CDREDReward

Q_RETURN_TYPES = ("all", "min", "avg")
REWARD_PARTS = ("cdred", "head", None)  # the CDRED reward model, TD-MPC2's reward head, no reward part
CRITICS = ("distributional", "scalar")  # two-hot Q heads (SPEC section 1), scalar Q heads (IQ-MPC, SPEC section 6)
BF16_PARTS = ("q", "rnd")  # parts WorldModel.bf16_parts can round: the Q ensemble, the CDRED reward networks
_FROM_CONFIG = "from-config"


# --------------------------------------------------------------------------- random helpers
def randn(shape, generator: Optional[torch.Generator], device, dtype=torch.float32) -> Tensor:
    """Standard normal draws from ``generator`` (on its own device), returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(*shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def choose_two_heads(num_q: int, generator: Optional[torch.Generator], device) -> Tensor:
    """Two distinct Q-head indices drawn uniformly out of ``num_q`` (SPEC section 1)."""
    gen_device = generator.device if generator is not None else device
    return torch.randperm(num_q, generator=generator, device=gen_device)[:2].to(device)


# --------------------------------------------------------------------------- pixels
class ShiftAug(nn.Module):
    """Random-shift augmentation (DrQ, TD-MPC2's ``ShiftAug``): shift each image by an integer
    number of pixels in ``[-pad, pad]`` along each axis, filling the border by replicating the edge.

    TD-MPC2 replicate-pads by ``pad`` and resamples with ``grid_sample`` on a grid of pixel
    centres shifted by a random integer ``(dx, dy) in {0..2 pad}^2`` per image, which is exactly
    a crop of the padded image at that offset. This implementation takes the crop directly, as
    one gather with clamped indices (replicate padding = clamping the source index): the same
    images (``python_tests/test_pixels.py`` checks it against the ``grid_sample`` formulation),
    bit-exact instead of up to interpolation rounding, on uint8 as well as float images, and
    ~3x cheaper than pad + ``grid_sample`` on a CPU. Active only in training mode
    (``self.training``); in eval mode, and with ``pad = 0``, it is the identity.

    Input ``[N, C, H, W]``; output the same shape and dtype.
    """

    def __init__(self, pad: int = 3):
        super().__init__()
        if int(pad) != pad or pad < 0:
            raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
        self.pad = int(pad)

    def forward(
        self, x: Tensor, generator: Optional[torch.Generator] = None, shifts: Optional[Tensor] = None
    ) -> Tensor:
        """``shifts [N, 2]``: integer crop offsets ``(dx, dy)`` in ``[0, 2 pad]`` of the padded image
        (the pixel at ``(y, x)`` comes from ``(y + dy - pad, x + dx - pad)``), instead of a random draw."""
        if not self.training or self.pad == 0:
            return x
        n, c, h, w = x.shape
        p = self.pad
        if shifts is None:
            gen_device = generator.device if generator is not None else x.device
            shifts = torch.randint(0, 2 * p + 1, (n, 2), generator=generator, device=gen_device)
        shifts = shifts.to(device=x.device, dtype=torch.int64)
        rows = (torch.arange(h, device=x.device).view(1, h) + (shifts[:, 1:2] - p)).clamp_(0, h - 1)  # [N, H]
        cols = (torch.arange(w, device=x.device).view(1, w) + (shifts[:, 0:1] - p)).clamp_(0, w - 1)  # [N, W]
        index = (rows.unsqueeze(2) * w + cols.unsqueeze(1)).view(n, 1, h * w).expand(n, c, h * w)
        return torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class PixelEncoder(nn.Module):
    """The pixel encoder ``h`` of SPEC section 1 (TD-MPC2's ``conv``).

    ``[..., C, H, W]`` pixels (uint8, or float in [0, 255]; ``C = 3 * frame_stack``) ->
    random shift (training only, :class:`ShiftAug`) -> ``x / 255 - 0.5`` -> conv 7/2, ReLU,
    conv 5/2, ReLU, conv 3/2, ReLU, conv 3/1 (``num_channels`` each, no padding) -> flatten ->
    SimNorm: ``[..., L]`` with ``L = num_channels * 4 * 4`` at 64x64. Conv layers keep
    PyTorch's default initialisation (as TD-MPC2, whose init touches only Linear layers).
    """

    def __init__(self, cfg: CDREDConfig, obs_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = (int(d) for d in obs_shape)
        if h != w:
            raise ValueError(f"the pixel encoder expects square images, got {h}x{w}")
        nc = cfg.num_channels
        self.obs_shape = (c, h, w)
        self.shift = ShiftAug(cfg.shift_pad)
        self.convs = nn.Sequential(
            nn.Conv2d(c, nc, 7, stride=2),
            nn.ReLU(),
            nn.Conv2d(nc, nc, 5, stride=2),
            nn.ReLU(),
            nn.Conv2d(nc, nc, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(nc, nc, 3, stride=1),
            nn.Flatten(),
        )
        self.out_dim = nc * conv_output_size(h) ** 2
        self.simnorm = SimNorm(cfg.simnorm_dim)

    def forward(self, obs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if tuple(obs.shape[-3:]) != self.obs_shape:
            raise ValueError(
                f"pixel observations must be [..., {', '.join(map(str, self.obs_shape))}], got {tuple(obs.shape)}"
            )
        lead = obs.shape[:-3]
        x = self.shift(obs.reshape(-1, *self.obs_shape), generator=generator)  # on uint8: 4x less to move
        x = x.to(torch.float32).mul_(1.0 / 255.0).sub_(0.5)  # to float32 first: a copy, so in place is safe
        z = self.simnorm(self.convs(x))
        return z.reshape(*lead, z.shape[-1])


def _obs_shape(cfg: CDREDConfig, obs_dim) -> tuple[int, ...]:
    """Normalise ``obs_dim`` (int or shape) and check it fits ``cfg.obs``."""
    shape = (int(obs_dim),) if isinstance(obs_dim, (int, np.integer)) else tuple(int(d) for d in obs_dim)
    if cfg.obs == "state":
        if len(shape) != 1 or shape[0] < 1:
            raise ValueError(f"obs='state' needs a flat observation size, got shape {shape}")
    else:
        expected = (3 * cfg.frame_stack, cfg.image_size, cfg.image_size)
        if shape != expected:
            raise ValueError(
                f"obs='rgb' needs observations of shape {expected} (3 x frame_stack, image_size, image_size), got {shape}"
            )
    return shape


# --------------------------------------------------------------------------- the scalar Q ensemble (IQ-MPC)
def _check_pair(z: Tensor, a: Tensor, latent_dim: int, action_dim: int, what: str) -> None:
    if z.dim() < 1 or z.shape[-1] != latent_dim:
        raise ValueError(f"{what}: z must be [..., L={latent_dim}], got {tuple(z.shape)}")
    if a.dim() < 1 or a.shape[-1] != action_dim:
        raise ValueError(f"{what}: a must be [..., A={action_dim}], got {tuple(a.shape)}")
    if z.shape[:-1] != a.shape[:-1]:
        raise ValueError(
            f"{what}: z and a must share their leading dimensions, got z {tuple(z.shape)} and a {tuple(a.shape)}"
        )


def scalar_q_heads(in_dim: int, mlp_dim: int = 512, num_q: int = 5, dropout: float = 0.01) -> Ensemble:
    """``num_q`` scalar heads ``MLP(in_dim -> [mlp_dim, mlp_dim] -> 1)`` as one :class:`Ensemble`.

    Mirrors the world model's distributional heads (SPEC section 1) with one raw output: dropout
    after the first Linear, Linear weights truncated normal (std 0.02) with zero bias, the last
    Linear's weight zero (the released ``init.zero_([_Qs_original.params[-2]])``), so every head
    outputs exactly 0 at initialisation.
    """
    heads = [trunc_normal_init_(mlp(in_dim, [mlp_dim, mlp_dim], 1, dropout=dropout)) for _ in range(int(num_q))]
    for head in heads:
        nn.init.zeros_(head[-1].weight)
    return Ensemble(heads)


def target_copy(net: nn.Module) -> nn.Module:
    """A frozen deep copy (no gradients, eval mode) to serve as the Polyak target ``Q_bar``."""
    return copy.deepcopy(net).requires_grad_(False).train(False)


@torch.no_grad()
def polyak_update_(target: nn.Module, online: nn.Module, tau: float = 0.01) -> None:
    """``target <- (1 - tau) target + tau online``, parameter by parameter."""
    for p, p_target in zip(online.parameters(), target.parameters()):
        p_target.lerp_(p, float(tau))


def _members_forward(ens: Ensemble, x: Tensor, index: Tensor) -> Tensor:
    """Member ``index[e]`` of ``ens`` on its own input ``x[e]``: ``x [E', N, in] -> [E', N, out]``.

    (``Ensemble.forward`` feeds one input to all selected members; here each selected member, a
    member may repeat, gets its own rows, as the stacked layers allow.)
    """
    h = x
    for layer in ens.layers:
        h = layer(h, index)
    return h


class ScalarQEnsemble(nn.Module):
    """The IQ-MPC critic of SPEC section 6: ``num_q`` scalar Q heads on ``[z ; a]`` plus a target copy.

    Args:
        latent_dim: ``L``. action_dim: ``A``. mlp_dim: hidden width (512).
        num_q: number of heads (5). dropout: after the first Linear of each head (0.01).
        kernels: ``"fused"`` or ``"reference"`` Blocks (:func:`cdred_fast.layers.use_kernels`).

    ``forward(z [..., L], a [..., A], return_type, target, heads, generator)``:
    ``"all"`` -> ``[num_q, ...]``, every head's raw scalar; ``"min"`` / ``"avg"`` -> ``[...]``, the
    min / mean of two distinct heads (``heads`` ``[2]``, or drawn uniformly, SPEC section 1).
    ``target=True`` evaluates the Polyak copy (always in eval mode, no gradients).
    """

    RETURN_TYPES = ("all", "min", "avg")

    def __init__(
        self,
        latent_dim: int,
        action_dim: int,
        mlp_dim: int = 512,
        num_q: int = 5,
        dropout: float = 0.01,
        kernels: str = "reference",
    ):
        super().__init__()
        if int(num_q) < 2:
            raise ValueError(f"num_q must be >= 2 (Q_min / Q_avg take two distinct heads), got {num_q}")
        self.latent_dim, self.action_dim, self.num_q = int(latent_dim), int(action_dim), int(num_q)
        self.Qs = use_kernels(scalar_q_heads(self.latent_dim + self.action_dim, mlp_dim, num_q, dropout), kernels)
        self.target_Qs = target_copy(self.Qs)
        # bfloat16 products in forward and avg_per_pair (set by WorldModel.bf16_parts, "q")
        self.bf16 = False

    @classmethod
    def from_config(cls, cfg, action_dim: int) -> "ScalarQEnsemble":
        """From a :class:`cdred_fast.config.CDREDConfig` (``latent_dim, mlp_dim, num_q, dropout, kernels``)."""
        return cls(cfg.latent_dim, action_dim, cfg.mlp_dim, cfg.num_q, cfg.dropout, cfg.kernels)

    def train(self, mode: bool = True) -> "ScalarQEnsemble":
        """As ``nn.Module.train``, but the target heads stay in eval mode (no dropout)."""
        super().train(mode)
        self.target_Qs.train(False)
        return self

    def track_grad(self, mode: bool = True) -> None:
        """Enable/disable gradients of the online heads (off during the policy update)."""
        for p in self.Qs.parameters():
            p.requires_grad_(mode)

    def soft_update_target(self, tau: float = 0.01) -> None:
        """Polyak averaging ``Q_bar <- (1 - tau) Q_bar + tau Q`` (SPEC section 6, tau = 0.01)."""
        polyak_update_(self.target_Qs, self.Qs, tau)

    def forward(
        self,
        z: Tensor,
        a: Tensor,
        return_type: str = "min",
        target: bool = False,
        heads: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        with self._products():
            return self._forward(z, a, return_type, target, heads, generator)

    def _products(self):
        return bf16_products() if self.bf16 else contextlib.nullcontext()

    def _forward(self, z, a, return_type, target, heads, generator) -> Tensor:
        if return_type not in self.RETURN_TYPES:
            raise ValueError(f"return_type must be one of {self.RETURN_TYPES}, got {return_type!r}")
        _check_pair(z, a, self.latent_dim, self.action_dim, "ScalarQEnsemble")
        net = self.target_Qs if target else self.Qs
        x = torch.cat([z, a], dim=-1)
        if return_type == "all":
            return net(x).squeeze(-1)  # [num_q, ...]
        if heads is None:
            heads = choose_two_heads(self.num_q, generator, x.device)
        elif tuple(heads.shape) != (2,) or heads.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"heads must be an integer tensor [2] of Q-head ids, got {heads.dtype} {tuple(heads.shape)}"
            )
        q = net(x, index=heads.to(x.device)).squeeze(-1)  # [2, ...]
        return q.min(dim=0).values if return_type == "min" else q.mean(dim=0)

    def avg_per_pair(self, x: Tensor, heads: Tensor) -> Tensor:
        """``Q_avg`` of the online heads with its own input and head pair per block.

        ``x [P, n, L + A]``, ``heads [P, 2]`` -> ``[P, n]`` (block ``p``: the mean of heads
        ``heads[p]`` on ``x[p]``). Used by the gradient penalty, one block per ``(t, q)``.
        """
        P, n, D = x.shape
        if D != self.latent_dim + self.action_dim:
            raise ValueError(f"x must be [P, n, L + A = {self.latent_dim + self.action_dim}], got {tuple(x.shape)}")
        if tuple(heads.shape) != (P, 2):
            raise ValueError(f"heads must be [{P}, 2], got {tuple(heads.shape)}")
        with self._products():
            out = _members_forward(self.Qs, x.repeat_interleave(2, dim=0), heads.reshape(-1).to(x.device))  # [2P, n, 1]
        return out.view(P, 2, n).mean(dim=1)


# --------------------------------------------------------------------------- the model
class WorldModel(nn.Module):
    """Encoder, dynamics, Q ensemble (+ target), policy prior and reward (SPEC section 1).

    Args:
        cfg: the config (``cfg.obs`` picks the encoder).
        obs_dim: size of a state observation, or the observation shape
            (``(3 * frame_stack, image_size, image_size)`` for ``obs="rgb"``).
        action_dim: ``A``.
        reward_part: one of :data:`REWARD_PARTS` (the method's ``reward_part``): ``"cdred"`` the CDRED
            reward model (``self.reward_model``), ``"head"`` TD-MPC2's reward head (``self.reward_head``),
            None neither. Default: ``"cdred"`` when ``cfg.method == "cdred"``, None for ``"iqmpc"``, else ``"head"``.
        critic: one of :data:`CRITICS` (the method's ``critic``): ``"distributional"`` the two-hot Q
            heads ``self.Qs`` and their target ``self.target_Qs`` (SPEC section 1), ``"scalar"`` the
            scalar heads of IQ-MPC in ``self.scalar_q`` (:class:`ScalarQEnsemble`, SPEC section 6;
            ``self.Qs`` and ``self.target_Qs`` are then None). Default: ``"scalar"`` when
            ``cfg.method == "iqmpc"``.
    """

    def __init__(
        self,
        cfg: CDREDConfig,
        obs_dim,
        action_dim: int,
        reward_part: Optional[str] = _FROM_CONFIG,
        critic: Optional[str] = _FROM_CONFIG,
    ):
        super().__init__()
        self.cfg = cfg
        self.obs_shape = _obs_shape(cfg, obs_dim)
        self.obs_dim = self.obs_shape[0] if cfg.obs == "state" else None
        self.action_dim = int(action_dim)
        L, A, M = cfg.latent_dim, self.action_dim, cfg.mlp_dim

        if cfg.obs == "state":
            # h: MLP(obs -> [enc_dim] -> L), last layer Linear -> LayerNorm -> SimNorm
            self.encoder = mlp(self.obs_dim, [cfg.enc_dim], L, last_act=SimNorm(cfg.simnorm_dim))
        else:
            # h: conv stack -> flatten -> SimNorm (config validation made its output size L)
            self.encoder = PixelEncoder(cfg, self.obs_shape)
            assert self.encoder.out_dim == L, (self.encoder.out_dim, L)
        # d: MLP(L + A -> [M, M] -> L), last layer Linear -> LayerNorm -> SimNorm
        self.dynamics = mlp(L + A, [M, M], L, last_act=SimNorm(cfg.simnorm_dim))
        # pi: MLP(L -> [M, M] -> 2A) giving (mu, rho)
        self.pi_net = mlp(L, [M, M], 2 * A)
        for net in (self.encoder, self.dynamics, self.pi_net):
            trunc_normal_init_(net)  # Linear layers only: the pixel encoder's convs keep PyTorch's init

        if critic == _FROM_CONFIG:
            critic = "scalar" if cfg.method == "iqmpc" else "distributional"
        if critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, got {critic!r}")
        self.critic = critic
        self.scalar_q: Optional[ScalarQEnsemble] = None
        if critic == "distributional":
            # Q ensemble: num_q x MLP(L + A -> [M, M] -> num_bins), dropout after the first Linear,
            # last Linear zero-initialised (weight; the bias is already 0).
            heads = [
                trunc_normal_init_(mlp(L + A, [M, M], cfg.num_bins, dropout=cfg.dropout)) for _ in range(cfg.num_q)
            ]
            for head in heads:
                nn.init.zeros_(head[-1].weight)
            self.Qs = Ensemble(heads)
            self.target_Qs = copy.deepcopy(self.Qs).requires_grad_(False)
        else:
            # IQ-MPC (SPEC section 6): num_q scalar heads and their target copy, in self.scalar_q
            self.scalar_q = ScalarQEnsemble(L, A, M, cfg.num_q, cfg.dropout, cfg.kernels)
            self.Qs = self.target_Qs = None

        if reward_part == _FROM_CONFIG:
            reward_part = {"cdred": "cdred", "iqmpc": None}.get(cfg.method, "head")
        if reward_part not in REWARD_PARTS:
            raise ValueError(f"reward_part must be one of {REWARD_PARTS}, got {reward_part!r}")
        self.reward_model, self.reward_head = None, None
        if reward_part == "cdred":
            # CDRED reward on x = [z ; a] (SPEC section 2), or on x = [s ; a] (cfg.reward_input="obs")
            self.reward_model = CDREDReward(cfg, (self.obs_dim if cfg.reward_input == "obs" else L) + A)
        elif reward_part == "head":
            # TD-MPC2 reward head MLP(L + A -> [M, M] -> num_bins), last Linear zero-initialised
            self.reward_head = trunc_normal_init_(mlp(L + A, [M, M], cfg.num_bins))
            nn.init.zeros_(self.reward_head[-1].weight)
        # Blocks with Mish run LayerNorm -> Mish as one fused op unless kernels="reference"
        use_kernels(self, cfg.kernels)
        self.train(False)  # acting is the default mode; the agent switches to train() for updates
        # the parts whose products are rounded to bfloat16 at present (bf16_parts; products)
        self._bf16_parts: frozenset = frozenset()

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "WorldModel":
        """As ``nn.Module.train`` but the target Qs always stay in eval mode (no dropout)."""
        super().train(mode)
        if self.target_Qs is not None:
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

    @contextlib.contextmanager
    def bf16_parts(self, parts):
        """Context in which the products of the named parts (``"q"``: the Q ensemble and its
        target, ``"rnd"``: the CDRED reward networks) are bfloat16 products
        (:class:`~cdred_fast.precision.bf16_products`) and every other product float32: an
        update with ``update_precision="bfloat16-q-rnd"``. Restores the parts after."""
        unknown = set(parts) - set(BF16_PARTS)
        if unknown:
            raise ValueError(f"bf16_parts: unknown parts {sorted(unknown)}; the parts are {BF16_PARTS}")
        saved, self._bf16_parts = self._bf16_parts, frozenset(parts)
        if self.scalar_q is not None:  # IQ-MPC's losses call the scalar heads themselves
            self.scalar_q.bf16 = "q" in self._bf16_parts
        try:
            yield self
        finally:
            self._bf16_parts = saved
            if self.scalar_q is not None:
                self.scalar_q.bf16 = "q" in saved

    def products(self, part: str):
        """The context around the products of ``part`` (one of :data:`BF16_PARTS`): bfloat16
        products inside :meth:`bf16_parts` naming it, nothing otherwise. The roundings are
        recorded by autograd, so the backward's products of the part are bfloat16 too."""
        return bf16_products() if part in self._bf16_parts else contextlib.nullcontext()

    def q_parameters(self) -> list[nn.Parameter]:
        """The online Q heads' parameters (distributional or scalar), trained with the world model."""
        return list((self.Qs if self.scalar_q is None else self.scalar_q.Qs).parameters())

    def track_q_grad(self, mode: bool = True) -> None:
        """Enable/disable gradients of the online Q parameters (off during the policy update)."""
        for p in self.q_parameters():
            p.requires_grad_(mode)

    @torch.no_grad()
    def soft_update_target_Q(self) -> None:
        """Polyak averaging ``Q_bar <- (1 - tau) Q_bar + tau Q`` (SPEC section 3, step 9; section 6)."""
        if self.scalar_q is not None:
            self.scalar_q.soft_update_target(self.cfg.tau)
            return
        for p, p_target in zip(self.Qs.parameters(), self.target_Qs.parameters()):
            p_target.lerp_(p, self.cfg.tau)

    # ------------------------------------------------------------------ parts
    def encode(self, obs: Tensor) -> Tensor:
        """``z = h(s)``: ``[..., obs_dim] -> [..., L]`` (pixels: ``[..., C, H, W] -> [..., L]``,
        randomly shifted in training mode)."""
        return self.encoder(obs)

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        """``z' = d(z, a)``: ``[..., L], [..., A] -> [..., L]``."""
        return self.dynamics(torch.cat([z, a], dim=-1))

    def reward_logits(self, z: Tensor, a: Tensor) -> Tensor:
        """``method="tdmpc2"`` only: reward-head logits ``[..., num_bins]`` (with gradient)."""
        if self.reward_head is None:
            raise RuntimeError("reward_logits exists only with method='tdmpc2' (the CDRED model has no reward head)")
        return self.reward_head(torch.cat([z, a], dim=-1))

    def pi(
        self, z: Tensor, eps: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Policy prior of SPEC section 1: returns ``(tanh(mu), a, log_prob, log_std)``.

        ``(mu, rho) = pi_net(z)``; ``log_std = lo + 0.5 (hi - lo)(tanh(rho) + 1)``;
        ``u = mu + exp(log_std) * eps``; ``a = tanh(u)``;
        ``log_prob = A (sum_i [-eps_i^2 / 2 - log_std_i] - log(2 pi) / 2) - sum_i log(relu(1 - a_i^2) + 1e-6)``:
        the released code's log-probability, whose Gaussian part is scaled by the action
        dimension ``A`` (SPEC section 1; it sets the strength of the entropy bonus).
        ``eps`` defaults to standard normal draws (from ``generator`` if given).
        Shapes: ``mu, a, log_std: [..., A]``, ``log_prob: [...]``.
        """
        mu, rho = self.pi_net(z).chunk(2, dim=-1)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(rho) + 1.0)
        if eps is None:
            eps = randn(mu.shape, generator, mu.device, mu.dtype)
        u = mu + eps * log_std.exp()
        A = mu.shape[-1]
        # "A * (sum_i(-eps_i^2 / 2 - log sigma_i) - log(2 pi) / 2)"
        gaussian = A * ((-0.5 * eps.pow(2) - log_std).sum(dim=-1) - 0.5 * math.log(2 * math.pi))
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
        """Q values (SPEC section 1; with the scalar critic, :class:`ScalarQEnsemble`'s raw outputs,
        ``"all"`` giving ``[num_q, ...]``).

        ``"all"``: logits of every head ``[num_q, ..., num_bins]``. ``"min"`` / ``"avg"``: min / mean
        of the scalar values ``symexp(sum softmax * bins)`` of two heads chosen at random out of
        ``num_q`` (or the two ids in ``heads``), ``[...]``. ``target`` uses the Polyak copy.
        """
        if self.scalar_q is not None:  # (its own products context)
            return self.scalar_q(z, a, return_type, target=target, heads=heads, generator=generator)
        with self.products("q"):
            return self._q(z, a, return_type, target, heads, generator)

    def _q(self, z, a, return_type, target, heads, generator) -> Tensor:
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
        """Scalar value of distributional logits ``[..., num_bins] -> [...]``; with the scalar critic
        its outputs (``Q(..., "all")``) are already the values and are returned unchanged."""
        if self.scalar_q is not None:
            return logits
        return two_hot_inv(logits, self.cfg.vmin, self.cfg.vmax)


__all__ = [
    "WorldModel",
    "PixelEncoder",
    "ScalarQEnsemble",
    "ShiftAug",
    "randn",
    "choose_two_heads",
    "scalar_q_heads",
    "target_copy",
    "polyak_update_",
    "BF16_PARTS",
    "CRITICS",
    "Q_RETURN_TYPES",
    "REWARD_PARTS",
]
