"""IQ-MPC, the adversarial baseline of the CDRED paper (SPEC.md section 6), as pure functions.

The released IQ-MPC code (``TobyLeelsz/iqmpc``: ``tdmpc2/tdmpc2.py`` ``update_iq``, ``getV``,
``get_target_V``, ``update_pi``, ``_estimate_value_iq``; ``tdmpc2/iq.py`` ``iq_loss``;
``tdmpc2/common/world_model.py`` ``Q_original``, ``grad_pen``) shares the encoder, dynamics and
policy prior of SPEC section 1 and replaces the reward model and the distributional critic by

* :class:`ScalarQEnsemble` (defined in :mod:`cdred_fast.world_model`) - 5 scalar Q heads
  ``MLP(L + A -> [512, 512] -> 1)`` (dropout 0.01 after the first Linear, last Linear
  zero-initialised, raw outputs) and a Polyak target copy;
* :func:`iqmpc_value` - the soft value ``V(z) = Q_min(z, a~) - 1e-4 log pi(a~|z)``;
* :func:`iqmpc_critic_loss` - the inverse soft-Q loss with the chi^2 regulariser, per horizon
  step and head, ``rho^t``-weighted and divided by ``H * 5``; optionally the gradient penalty
  :func:`gradient_penalty`;
* :func:`iqmpc_policy_loss` - ``mean_t rho^t mean(1e-4 log pi - Q_min)``, no running scale;
* :func:`soft_planning_return` - the random "soft" return MPPI ranks sequences with.

The method over the agent (update, planning, statistics) is :class:`cdred_fast.methods.iqmpc_method.IQMPC`.

Conventions (as :mod:`cdred_fast.world_model`): latents ``z [..., L]``, actions ``a [..., A]``,
the behavioural samples first and the expert samples after them along the batch axis
(``n_behavioral`` of them first), horizon ``H``. ``pi`` is a callable
``pi(z, eps=eps) -> (tanh(mu), a, log_prob, log_std)`` with ``log_prob [...]`` scaled by ``A``
(SPEC section 1) - :meth:`cdred_fast.world_model.WorldModel.pi` - and ``dynamics(z, a) -> z'``
is :meth:`WorldModel.next`. Every random draw (policy noise, the Q-head pairs, the gradient
penalty's interpolation weights) can be passed explicitly through a noise object, so each loss
is a deterministic function of its inputs that tests check by hand; without one it is drawn
from an optional ``torch.Generator``. Q dropout (train mode) uses torch's global RNG.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

# the critic is a part of the world model (cdred_fast.world_model); re-exported here
from ..world_model import ScalarQEnsemble, choose_two_heads, polyak_update_, randn, scalar_q_heads, target_copy

# --------------------------------------------------------------------------- released coefficients
#: Soft-value / policy entropy coefficient (released ``entropy_coef``; SPEC section 6 "1e-4").
ENTROPY_COEF = 1e-4
#: The chi^2 coefficient ``alpha`` of ``iq_loss`` (NOT ``cfg.alpha``); the regulariser is
#: ``1 / (4 alpha) * mean((Q - y)^2)`` (SPEC section 6).
CHI2_ALPHA = 0.5
CHI2_COEF = 1.0 / (4.0 * CHI2_ALPHA)
#: Total loss ``CONSISTENCY_COEF * consistency + CRITIC_COEF * L_critic`` (SPEC section 6).
CONSISTENCY_COEF = 20.0
CRITIC_COEF = 0.1
#: Gradient penalty ``lambda_`` of the released ``grad_pen`` (off by default: ``use_grad_pen: false``).
GRAD_PEN_COEF = 1.0
GRAD_PEN_DEFAULT = False
#: Temporal weight, number of Q heads, Polyak rate, gradient clip (over ALL model parameters).
RHO = 0.5
NUM_Q = 5
TAU = 0.01
GRAD_CLIP_NORM = 20.0
#: IQ-MPC's optimiser has no StepLR (SPEC section 6).
USE_STEP_LR = False
#: Replay capacity of the released IQ-MPC config (``buffer_size: 1_000_000``), so 500-1000 demos fit.
BUFFER_SIZE = 1_000_000
#: Planning is on by default in the release (``mpc: true``).
MPC_DEFAULT = True


# --------------------------------------------------------------------------- checks
def _check_shape(name: str, t: Optional[Tensor], shape: tuple) -> None:
    if t is None or tuple(t.shape) != tuple(shape):
        got = None if t is None else tuple(t.shape)
        raise ValueError(f"{name} must be {list(shape)}, got {got}")


def _discount(discount: Union[float, Tensor]) -> float:
    g = float(discount)
    if not 0.0 < g < 1.0:
        raise ValueError(f"discount must be in (0, 1), got {g}")
    return g


def _head_pairs(n: int, num_q: int, generator: Optional[torch.Generator], device) -> Tensor:
    """``n`` independent pairs of distinct Q-head ids: ``[n, 2]``."""
    return torch.stack([choose_two_heads(num_q, generator, device) for _ in range(n)])


# --------------------------------------------------------------------------- the gradient penalty's Blocks
@contextlib.contextmanager
def _reference_blocks(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s Blocks through PyTorch's LayerNorm and Mish inside the context.

    The fused ``layernorm_mish`` op has a backward but no double backward (its backward kernel
    has no autograd formula: autograd warns and the second-order terms are silently wrong), and
    the gradient penalty differentiates a gradient. The reference path is the same function.
    """
    saved = [(m, m.kernels) for m in module.modules() if hasattr(m, "kernels") and isinstance(m.kernels, str)]
    try:
        for m, _ in saved:
            m.kernels = "reference"
        yield
    finally:
        for m, k in saved:
            m.kernels = k


# --------------------------------------------------------------------------- soft value
def iqmpc_value(
    q: ScalarQEnsemble,
    pi: Callable,
    z: Tensor,
    *,
    target: bool = False,
    entropy_coef: float = ENTROPY_COEF,
    eps: Optional[Tensor] = None,
    heads: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Soft value of SPEC section 6: ``V(z) = Q_min(z, a~) - entropy_coef * log pi(a~|z)``, ``a~ ~ pi(z)``.

    The released ``getV`` (``target=False``) and ``get_target_V`` (``target=True``: target heads,
    computed without gradient: ``V_bar``). ``log pi`` is the policy's log-probability scaled by
    ``A`` (SPEC section 1). ``z [..., L]`` -> ``[...]``; ``eps [..., A]`` the policy noise and
    ``heads [2]`` the Q-head pair (drawn from ``generator`` when not given).
    """
    ctx = torch.no_grad() if target else contextlib.nullcontext()
    with ctx:
        _, a, log_prob, _ = pi(z, eps=eps) if eps is not None else pi(z, generator=generator)
        return q(z, a, "min", target=target, heads=heads, generator=generator) - entropy_coef * log_prob


# --------------------------------------------------------------------------- gradient penalty
def gradient_penalty(
    q: ScalarQEnsemble,
    z_expert: Tensor,
    a_expert: Tensor,
    z_behavioral: Tensor,
    a_behavioral: Tensor,
    u: Tensor,
    heads: Tensor,
    coef: float = GRAD_PEN_COEF,
) -> Tensor:
    """The released ``grad_pen`` for ``P`` independent draws at once (one per ``(t, q)``), SPEC section 6.

    For block ``p``: ``x~ = u_p * [z_E ; a_E] + (1 - u_p) * [z_B ; a_B]`` (``u`` one weight per
    sample, the inputs **detached**: only the Q heads learn from the penalty), and
    ``GP_p = coef * mean_i (||grad_x~ Q_avg(x~_i)||_2 - 1)^2`` with ``Q_avg`` the mean of the two
    online heads ``heads[p]``. The gradient is taken with ``create_graph=True`` so that ``GP``
    is differentiable with respect to the heads' parameters.

    Shapes: ``z_expert, z_behavioral [P, n, L]``, ``a_expert, a_behavioral [P, n, A]`` (expert sample
    ``i`` is paired with behavioural sample ``i``), ``u [P, n]`` in [0, 1], ``heads [P, 2]``.
    Returns ``[P]``. The Blocks run on the reference path here (see :func:`_reference_blocks`).
    """
    if z_expert.dim() != 3:
        raise ValueError(f"z_expert must be [P, n, L], got {tuple(z_expert.shape)}")
    P, n, _ = z_expert.shape
    _check_shape("z_expert", z_expert, (P, n, q.latent_dim))
    _check_shape("z_behavioral", z_behavioral, (P, n, q.latent_dim))
    _check_shape("a_expert", a_expert, (P, n, q.action_dim))
    _check_shape("a_behavioral", a_behavioral, (P, n, q.action_dim))
    _check_shape("u", u, (P, n))
    x_e = torch.cat([z_expert, a_expert], dim=-1).detach()
    x_b = torch.cat([z_behavioral, a_behavioral], dim=-1).detach()
    w = u.detach().to(x_e.dtype).unsqueeze(-1)
    x = (w * x_e + (1.0 - w) * x_b).requires_grad_(True)  # a fresh leaf: the interpolates are constants
    with torch.enable_grad(), _reference_blocks(q.Qs):
        q_avg = q.avg_per_pair(x, heads)  # [P, n]
        (grad,) = torch.autograd.grad(q_avg.sum(), x, create_graph=True)  # block p only reaches x[p]
    return coef * (grad.norm(2, dim=-1) - 1.0).pow(2).mean(dim=-1)


# --------------------------------------------------------------------------- critic loss
@dataclass
class IQMPCCriticNoise:
    """The random draws of one IQ-MPC critic loss (``N = B_behavioural + B_expert``, ``N_E`` expert).

    Per call of the release: one head pair for all steps of ``V_bar(z')``; one pair for ``v0``;
    for the decoded reward one pair per step for each of its two ``Q_min``; for the gradient
    penalty one pair and one interpolation weight per sample for every ``(t, q)``.
    """

    v0_eps: Tensor  # [N_E, A]     policy noise of v0 = mean_expert V(z_0)
    v0_heads: Tensor  # [2]
    next_eps: Tensor  # [H, N, A]  policy noise of V_bar(z'_t)
    next_heads: Tensor  # [2]      target heads of V_bar (one pair for all t)
    dec_eps: Tensor  # [H, N, A]   decoded reward: policy noise at z'_t
    dec_heads: Tensor  # [H, 2]    decoded reward: Q_min(z_t, a_t)
    dec_next_heads: Tensor  # [H, 2]  decoded reward: Q_min(z'_t, a~)
    gp_u: Optional[Tensor] = None  # [H, num_q, B] interpolation weights (grad_pen only)
    gp_heads: Optional[Tensor] = None  # [H, num_q, 2] Q_avg head pairs (grad_pen only)


def draw_critic_noise(
    horizon: int,
    n: int,
    n_behavioral: int,
    action_dim: int,
    num_q: int = NUM_Q,
    grad_pen: bool = GRAD_PEN_DEFAULT,
    generator: Optional[torch.Generator] = None,
    device="cpu",
    dtype=torch.float32,
) -> IQMPCCriticNoise:
    """Draw an :class:`IQMPCCriticNoise` (from ``generator`` when given; normal and uniform draws in ``dtype``)."""
    H, A, n_e = int(horizon), int(action_dim), int(n) - int(n_behavioral)
    gp_u = gp_heads = None
    if grad_pen:
        gen_dev = generator.device if generator is not None else device
        gp_u = torch.rand(H, num_q, int(n_behavioral), generator=generator, device=gen_dev, dtype=dtype).to(device)
        gp_heads = _head_pairs(H * num_q, num_q, generator, device).view(H, num_q, 2)
    return IQMPCCriticNoise(
        v0_eps=randn((n_e, A), generator, device, dtype),
        v0_heads=choose_two_heads(num_q, generator, device),
        next_eps=randn((H, n, A), generator, device, dtype),
        next_heads=choose_two_heads(num_q, generator, device),
        dec_eps=randn((H, n, A), generator, device, dtype),
        dec_heads=_head_pairs(H, num_q, generator, device),
        dec_next_heads=_head_pairs(H, num_q, generator, device),
        gp_u=gp_u,
        gp_heads=gp_heads,
    )


@torch.no_grad()
def decoded_reward(
    q: ScalarQEnsemble,
    pi: Callable,
    z: Tensor,
    action: Tensor,
    next_z: Tensor,
    discount: Union[float, Tensor],
    *,
    entropy_coef: float = ENTROPY_COEF,
    eps: Tensor,
    heads: Tensor,
    next_heads: Tensor,
) -> Tensor:
    """The reward the critic implies (SPEC section 6, logged only):
    ``r_t = Q_min(z_t, a_t) - gamma * (Q_min(z'_t, a~) - entropy_coef * log pi(a~|z'_t))``, ``a~ ~ pi(z'_t)``,
    with the online heads and no gradient (the release's ``reward_pred`` in ``update_iq``).

    ``z [H, N, L]`` (the release uses the encoded observations ``h(s_t)``), ``action [H, N, A]``,
    ``next_z [H, N, L]`` (``h(s_{t+1})``), ``eps [H, N, A]``, ``heads, next_heads [H, 2]`` (a pair per
    step for each ``Q_min``). Returns ``[H, N]``.
    """
    H = z.shape[0]
    g = _discount(discount)
    _, a_next, log_prob, _ = pi(next_z, eps=eps)
    out = []
    for t in range(H):
        q_t = q(z[t], action[t], "min", heads=heads[t])
        v_next = q(next_z[t], a_next[t], "min", heads=next_heads[t]) - entropy_coef * log_prob[t]
        out.append(q_t - g * v_next)
    return torch.stack(out)


def iqmpc_critic_loss(
    q: ScalarQEnsemble,
    pi: Callable,
    zs: Tensor,
    action: Tensor,
    next_z: Tensor,
    n_behavioral: int,
    discount: Union[float, Tensor],
    *,
    rho: float = RHO,
    entropy_coef: float = ENTROPY_COEF,
    chi2_alpha: float = CHI2_ALPHA,
    grad_pen: bool = GRAD_PEN_DEFAULT,
    grad_pen_coef: float = GRAD_PEN_COEF,
    noise: Optional[IQMPCCriticNoise] = None,
    generator: Optional[torch.Generator] = None,
    z_obs: Optional[Tensor] = None,
    return_samples: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The IQ-MPC critic loss ``L_critic`` of SPEC section 6 (released ``update_iq`` + ``iq_loss``).

    With ``y_t = gamma * V_bar(z'_t)`` (target heads, no gradient), ``Q_q = Q_q(z_t, a_t)`` (every
    head, in the module's current mode: train mode = dropout on, as released) and
    ``v0 = mean_expert V(z_0)`` (computed once; its gradient reaches Q, the encoder through
    ``zs[0]``, and ``pi``), per step ``t`` and head ``q``:

        ``l_{t,q} = -mean_expert(Q_q - y_t) + (1 - gamma) v0 + 1/(4 chi2_alpha) mean_all((Q_q - y_t)^2) [+ GP_{t,q}]``

    and ``L_critic = (1/(H num_q)) sum_t rho^t sum_q l_{t,q}``. ``GP_{t,q}`` (``grad_pen=True``):
    :func:`gradient_penalty` between the expert and behavioural ``(z_t, a_t)``, a fresh draw for
    every ``(t, q)`` (it needs as many expert as behavioural samples).

    Args:
        q: the :class:`ScalarQEnsemble`. pi: ``pi(z, eps=) -> (tanh mu, a, log_prob, log_std)``.
        zs: roll-out latents ``[H+1, N, L]`` (``z_0 = h(s_0)``, ``z_{t+1} = d(z_t, a_t)``), with gradient.
        action: ``[H, N, A]``. next_z: ``z'_t = h(s_{t+1})`` ``[H, N, L]`` (used without gradient).
        n_behavioral: the first ``n_behavioral`` samples are behavioural, the others expert (>= 1 each).
        discount: ``gamma``. rho: temporal weight. entropy_coef: of the soft values.
        chi2_alpha: the chi^2 coefficient ``alpha`` (0.5). grad_pen, grad_pen_coef: the penalty.
        noise: the draws (:func:`draw_critic_noise`), else drawn from ``generator``.
        z_obs: ``h(s_t)`` ``[H, N, L]`` for the logged decoded reward; default
            ``[zs[0], next_z[0..H-2]]`` (the same latents for state observations).

    Returns ``(L_critic, stats)``; ``stats`` holds detached 0-dim tensors: ``critic_loss``,
    ``softq_loss`` (mean over ``(t, q)`` of ``-mean_expert(Q - y)``), ``v0``, ``chi2_loss`` (mean over
    ``(t, q)``), ``grad_pen`` (mean over ``(t, q)``, 0 when off), ``q_value`` (mean of ``Q_q(z_t, a_t)``
    over heads, steps, samples), ``q_expert``, ``q_behavioral``, ``q_diff`` (= expert - behavioural,
    the release's ``Q_diff``), ``target_value`` (mean ``y``), ``decoded_reward`` and its
    ``decoded_reward_expert`` / ``decoded_reward_behavioral`` means; with ``return_samples``, also
    ``samples``, a dict of the detached per-sample tensors: ``rewards [H, N]`` (decoded rewards), ``td_targets [H, N]`` (``y``),
    ``q_all [num_q, H, N]`` (every head's ``Q_q(z_t, a_t)``).
    """
    if zs.dim() != 3 or zs.shape[-1] != q.latent_dim or zs.shape[0] < 2:
        raise ValueError(f"zs must be [H+1, N, L={q.latent_dim}] with H >= 1, got {tuple(zs.shape)}")
    H, N = zs.shape[0] - 1, zs.shape[1]
    A, Qn = q.action_dim, q.num_q
    _check_shape("action", action, (H, N, A))
    _check_shape("next_z", next_z, (H, N, q.latent_dim))
    nb = int(n_behavioral)
    if not 1 <= nb < N:
        raise ValueError(f"n_behavioral must be in [1, N-1] = [1, {N - 1}] (both halves non-empty), got {n_behavioral}")
    ne = N - nb
    if grad_pen and ne != nb:
        raise ValueError(
            f"grad_pen pairs expert and behavioural samples one to one: needs as many of each, got {nb} and {ne}"
        )
    g = _discount(discount)
    dev = zs.device
    if noise is None:
        noise = draw_critic_noise(H, N, nb, A, Qn, grad_pen, generator, dev, zs.dtype)
    _check_shape("noise.v0_eps", noise.v0_eps, (ne, A))
    _check_shape("noise.next_eps", noise.next_eps, (H, N, A))
    _check_shape("noise.dec_eps", noise.dec_eps, (H, N, A))
    _check_shape("noise.dec_heads", noise.dec_heads, (H, 2))
    _check_shape("noise.dec_next_heads", noise.dec_next_heads, (H, 2))
    if grad_pen:
        _check_shape("noise.gp_u", noise.gp_u, (H, Qn, nb))
        _check_shape("noise.gp_heads", noise.gp_heads, (H, Qn, 2))

    # y_t = gamma * V_bar(z'_t): target heads, one pair for all steps, no gradient
    next_z = next_z.detach()
    with torch.no_grad():
        y = g * iqmpc_value(
            q, pi, next_z, target=True, entropy_coef=entropy_coef, eps=noise.next_eps, heads=noise.next_heads
        )  # [H, N]
    # v0 = mean_expert V(z_0), with gradient (Q, encoder, pi)
    v0 = iqmpc_value(q, pi, zs[0, nb:], entropy_coef=entropy_coef, eps=noise.v0_eps, heads=noise.v0_heads).mean()
    # every head on the roll-out latents
    qs = q(zs[:-1], action, "all")  # [num_q, H, N]
    diff = qs - y.unsqueeze(0)
    softq = -diff[..., nb:].mean(dim=-1)  # [num_q, H]
    chi2 = (1.0 / (4.0 * chi2_alpha)) * diff.pow(2).mean(dim=-1)  # [num_q, H]
    per_tq = softq + (1.0 - g) * v0 + chi2  # [num_q, H]
    if grad_pen:
        zt = zs[:-1]
        gp = (
            gradient_penalty(
                q,
                zt[:, nb:].unsqueeze(1).expand(H, Qn, nb, q.latent_dim).reshape(H * Qn, nb, -1),
                action[:, nb:].unsqueeze(1).expand(H, Qn, nb, A).reshape(H * Qn, nb, A),
                zt[:, :nb].unsqueeze(1).expand(H, Qn, nb, q.latent_dim).reshape(H * Qn, nb, -1),
                action[:, :nb].unsqueeze(1).expand(H, Qn, nb, A).reshape(H * Qn, nb, A),
                noise.gp_u.reshape(H * Qn, nb),
                noise.gp_heads.reshape(H * Qn, 2),
                coef=grad_pen_coef,
            )
            .view(H, Qn)
            .t()
        )  # [num_q, H]
        per_tq = per_tq + gp
    rho_t = rho ** torch.arange(H, device=dev, dtype=qs.dtype)
    loss = (per_tq.sum(dim=0) * rho_t).sum() / (H * Qn)

    with torch.no_grad():
        if z_obs is None:
            z_obs = torch.cat([zs[:1], next_z[:-1]], dim=0)
        _check_shape("z_obs", z_obs, (H, N, q.latent_dim))
        r_dec = decoded_reward(
            q,
            pi,
            z_obs.detach(),
            action,
            next_z,
            g,
            entropy_coef=entropy_coef,
            eps=noise.dec_eps,
            heads=noise.dec_heads,
            next_heads=noise.dec_next_heads,
        )
        qd = qs.detach()
        q_e, q_b = qd[..., nb:].mean(), qd[..., :nb].mean()
        stats = {
            "critic_loss": loss.detach(),
            "softq_loss": softq.detach().mean(),
            "v0": v0.detach(),
            "chi2_loss": chi2.detach().mean(),
            "grad_pen": gp.detach().mean() if grad_pen else torch.zeros((), device=dev),
            "q_value": qd.mean(),
            "q_expert": q_e,
            "q_behavioral": q_b,
            "q_diff": q_e - q_b,
            "target_value": y.mean(),
            "decoded_reward": r_dec.mean(),
            "decoded_reward_expert": r_dec[:, nb:].mean(),
            "decoded_reward_behavioral": r_dec[:, :nb].mean(),
        }
        if return_samples:
            stats["samples"] = {"rewards": r_dec, "td_targets": y, "q_all": qd}
    return loss, stats


def iqmpc_total_loss(consistency: Tensor, critic: Tensor) -> Tensor:
    """World-model loss of SPEC section 6: ``20 * consistency + 0.1 * L_critic`` (no reward loss)."""
    return CONSISTENCY_COEF * consistency + CRITIC_COEF * critic


# --------------------------------------------------------------------------- policy loss
def iqmpc_policy_loss(
    q: ScalarQEnsemble,
    pi: Callable,
    zs: Tensor,
    *,
    rho: float = RHO,
    entropy_coef: float = ENTROPY_COEF,
    eps: Optional[Tensor] = None,
    heads: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """IQ-MPC policy loss of SPEC section 6 (released ``update_pi`` with ``reg_coef = 0``):

        ``mean_t rho^t mean_i(entropy_coef * log pi(a~|z_t) - Q_min(z_t, a~))``, ``a~ ~ pi(z_t)``,

    over the ``H+1`` latents ``zs [T, N, L]`` (detached here), one Q-head pair for all steps, and
    **no** running scale ``S`` (unlike CDRED's SPEC section 3 step 8). The mean over ``t`` divides by
    ``T``. Freeze the heads' parameters (:meth:`ScalarQEnsemble.track_grad`) so only ``pi`` learns.
    ``eps [T, N, A]``, ``heads [2]``: the draws (from ``generator`` otherwise).
    """
    if zs.dim() != 3 or zs.shape[-1] != q.latent_dim:
        raise ValueError(f"zs must be [H+1, N, L={q.latent_dim}], got {tuple(zs.shape)}")
    zs = zs.detach()
    if eps is not None:
        _check_shape("eps", eps, (*zs.shape[:2], q.action_dim))
        _, a, log_prob, _ = pi(zs, eps=eps)
    else:
        _, a, log_prob, _ = pi(zs, generator=generator)
    qv = q(zs, a, "min", heads=heads, generator=generator)  # [T, N]
    rho_t = rho ** torch.arange(zs.shape[0], device=zs.device, dtype=qv.dtype)
    return ((entropy_coef * log_prob - qv).mean(dim=1) * rho_t).mean()


# --------------------------------------------------------------------------- planning return
@dataclass
class SoftReturnNoise:
    """The random draws of one :func:`soft_planning_return` over ``R`` rows and ``H`` steps."""

    q_heads: Tensor  # [H, 2]     Q_min(z_t, a_t)
    hat_eps: Tensor  # [H, R, A]  a^_t ~ pi(z_t): the entropy term of step t
    next_eps: Tensor  # [H, R, A] a~ ~ pi(z_{t+1}): the next soft value of step t
    next_heads: Tensor  # [H, 2]  Q_min(z_{t+1}, a~)
    term_eps: Tensor  # [R, A]    a~ ~ pi(z_H): the bootstrap Q_avg's action
    term_log_eps: Tensor  # [R, A]  a~' ~ pi(z_H): the bootstrap's entropy term
    term_heads: Tensor  # [2]     Q_avg(z_H, a~)


def draw_soft_return_noise(
    horizon: int,
    rows: int,
    action_dim: int,
    num_q: int = NUM_Q,
    generator: Optional[torch.Generator] = None,
    device="cpu",
    dtype=torch.float32,
) -> SoftReturnNoise:
    """Draw a :class:`SoftReturnNoise` (from ``generator`` when given; normal draws in ``dtype``)."""
    H, R, A = int(horizon), int(rows), int(action_dim)
    return SoftReturnNoise(
        q_heads=_head_pairs(H, num_q, generator, device),
        hat_eps=randn((H, R, A), generator, device, dtype),
        next_eps=randn((H, R, A), generator, device, dtype),
        next_heads=_head_pairs(H, num_q, generator, device),
        term_eps=randn((R, A), generator, device, dtype),
        term_log_eps=randn((R, A), generator, device, dtype),
        term_heads=choose_two_heads(num_q, generator, device),
    )


@torch.no_grad()
def soft_planning_return(
    q: ScalarQEnsemble,
    pi: Callable,
    dynamics: Callable[[Tensor, Tensor], Tensor],
    z: Tensor,
    actions: Tensor,
    discount: Union[float, Tensor],
    *,
    entropy_coef: float = ENTROPY_COEF,
    noise: Optional[SoftReturnNoise] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """IQ-MPC's planning return (SPEC section 6; released ``_estimate_value_iq``), online heads only:

        ``r_t = Q_min(z_t, a_t) - gamma (Q_min(z_{t+1}, a~) - c log pi(a~|z_{t+1}))``, ``a~ ~ pi(z_{t+1})``,
        ``G = sum_t gamma^t (r_t - c log pi(a^_t|z_t)) + gamma^H (Q_avg(z_H, a~) - c log pi(a~'|z_H))``,

    with ``z_{t+1} = dynamics(z_t, a_t)``, ``c = entropy_coef``, and ``a^_t``, ``a~``, ``a~'`` fresh,
    independent policy samples (``a^_t`` is not ``a_t``); every ``Q_min`` / ``Q_avg`` call takes its own
    head pair. ``z [R, L]``, ``actions [H, R, A]`` -> ``G [R]``; NaN is left to the elite update.

    The return is random, so in the MPPI loop call it on ALL ``N`` rows in every iteration - the
    ``N_pi`` policy-prior rows included, whose return must be redrawn (unlike the deterministic CDRED
    return of SPEC section 4, which :func:`cdred_fast.planner.mppi_plan` computes once per plan for
    those rows). Each call draws new noise (unless ``noise`` is given). Put the modules in eval mode
    (planning runs without dropout, as the released agent's ``model.eval()``).
    """
    if z.dim() != 2 or z.shape[-1] != q.latent_dim:
        raise ValueError(f"z must be [R, L={q.latent_dim}], got {tuple(z.shape)}")
    R = z.shape[0]
    if actions.dim() != 3 or actions.shape[0] < 1 or tuple(actions.shape[1:]) != (R, q.action_dim):
        raise ValueError(f"actions must be [H, R={R}, A={q.action_dim}] with H >= 1, got {tuple(actions.shape)}")
    H = actions.shape[0]
    g = _discount(discount)
    if noise is None:
        noise = draw_soft_return_noise(H, R, q.action_dim, q.num_q, generator, z.device, z.dtype)
    _check_shape("noise.q_heads", noise.q_heads, (H, 2))
    _check_shape("noise.hat_eps", noise.hat_eps, (H, R, q.action_dim))
    _check_shape("noise.next_eps", noise.next_eps, (H, R, q.action_dim))
    _check_shape("noise.next_heads", noise.next_heads, (H, 2))
    _check_shape("noise.term_eps", noise.term_eps, (R, q.action_dim))
    _check_shape("noise.term_log_eps", noise.term_log_eps, (R, q.action_dim))

    G = torch.zeros(R, device=z.device, dtype=z.dtype)
    gamma_t = 1.0
    for t in range(H):
        a_t = actions[t]
        q_t = q(z, a_t, "min", heads=noise.q_heads[t])
        log_pi_hat = pi(z, eps=noise.hat_eps[t])[2]
        z = dynamics(z, a_t)
        _, a_next, log_pi_next, _ = pi(z, eps=noise.next_eps[t])
        v_next = q(z, a_next, "min", heads=noise.next_heads[t]) - entropy_coef * log_pi_next
        G = G + gamma_t * ((q_t - g * v_next) - entropy_coef * log_pi_hat)
        gamma_t *= g
    log_pi_term = pi(z, eps=noise.term_log_eps)[2]
    a_term = pi(z, eps=noise.term_eps)[1]
    return G + gamma_t * (q(z, a_term, "avg", heads=noise.term_heads) - entropy_coef * log_pi_term)


def make_soft_return(
    q: ScalarQEnsemble,
    pi: Callable,
    dynamics: Callable[[Tensor, Tensor], Tensor],
    discount: Union[float, Tensor],
    *,
    entropy_coef: float = ENTROPY_COEF,
    generator: Optional[torch.Generator] = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """``value(z [R, L], actions [H, R, A]) -> [R]``: :func:`soft_planning_return` with fresh draws
    from ``generator`` on every call - the trajectory-value hook of the MPPI loop for IQ-MPC."""

    def value(z: Tensor, actions: Tensor) -> Tensor:
        return soft_planning_return(
            q, pi, dynamics, z, actions, discount, entropy_coef=entropy_coef, generator=generator
        )

    return value


__all__ = [
    "ENTROPY_COEF",
    "CHI2_ALPHA",
    "CHI2_COEF",
    "CONSISTENCY_COEF",
    "CRITIC_COEF",
    "GRAD_PEN_COEF",
    "GRAD_PEN_DEFAULT",
    "RHO",
    "NUM_Q",
    "TAU",
    "GRAD_CLIP_NORM",
    "USE_STEP_LR",
    "BUFFER_SIZE",
    "MPC_DEFAULT",
    "scalar_q_heads",
    "target_copy",
    "polyak_update_",
    "ScalarQEnsemble",
    "iqmpc_value",
    "gradient_penalty",
    "IQMPCCriticNoise",
    "draw_critic_noise",
    "decoded_reward",
    "iqmpc_critic_loss",
    "iqmpc_total_loss",
    "iqmpc_policy_loss",
    "SoftReturnNoise",
    "draw_soft_return_noise",
    "soft_planning_return",
    "make_soft_return",
]
