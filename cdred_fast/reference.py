"""Pure-PyTorch twins of every fused op, written to mirror SPEC.md line by line.

Every function here has the same signature and the same semantics as the op of
the same name in :mod:`cdred_fast.ops`. The fused kernels are tested against
these functions, so clarity wins over speed in this file.

Equations (SPEC.md section 2):

    mu_d  = (1/K) * sum_k t_{k,d}                 mean over the K random targets
    B2_d  = (1/K) * sum_k t_{k,d}^2               second moment over the targets
    var_d = B2_d - mu_d^2                         variance across the targets
                                                  (computed as mean_k (t_kd - mu_d)^2)

    b_f = alpha * sum_d (f_d - mu_d)^2
        + (1 - alpha) * (1/D) * sum_d sqrt(|f_d^2 - mu_d^2| / var_d)        (Eq. 8)

    R   = zeta * g(-sigma * b_phi) - (1 - zeta) * g(-sigma * b_psi)         (Eq. 7)

The variance guard
------------------
``var_d`` is 0 when K = 1 or when all targets agree on coordinate ``d``; the
released CDRED code divides by it unguarded and produces NaN/inf. Here a
coordinate is *degenerate* when ``var_d <= eps * B2_d`` (relative spread of the
targets below ``sqrt(eps)``; with ``eps = 1e-6`` that is 0.1 %, far below what
float32 rounding of ``B2 - mu^2`` can resolve). A degenerate coordinate
contributes 0 to the square-root term; every other coordinate contributes
exactly the unguarded value. Consequences, both tested:

* K = 1: every coordinate is degenerate, so ``b_f = alpha * ||f - t||^2``
  (plain RND scaled by alpha), finite.
* identical targets: same as K = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_EPS = 1e-6
G_FUNCTIONS = ("linear", "exp")


def target_moments(targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(mu, B2, var)`` over the target axis (dim 0) of ``targets [K, N, D]``."""
    mu = targets.mean(dim=0)  # mu_d  = (1/K) sum_k t_kd
    b2 = targets.pow(2).mean(dim=0)  # B2_d  = (1/K) sum_k t_kd^2
    # var_d = B2_d - mu_d^2, evaluated as the (equal) mean squared deviation: the
    # literal difference loses most of its digits in float32 when the targets
    # nearly agree, and the inverse-count term divides by it.
    var = (targets - mu).pow(2).mean(dim=0)
    return mu, b2, var


def bonus_from_moments(pred: Tensor, mu: Tensor, b2: Tensor, var: Tensor, alpha: float, eps: float) -> Tensor:
    """Eq. 8 for one predictor given the target moments; returns ``[N]``."""
    D = pred.shape[-1]
    distill = (pred - mu).pow(2).sum(dim=-1)  # sum_d (f_d - mu_d)^2
    degenerate = var <= eps * b2  # the documented guard
    safe_var = torch.where(degenerate, torch.ones_like(var), var)
    ratio = (pred.pow(2) - mu.pow(2)).abs() / safe_var  # |f^2 - mu^2| / var
    root = torch.where(degenerate, torch.zeros_like(ratio), ratio.sqrt())
    count = root.sum(dim=-1) / D  # (1/D) sum_d sqrt(ratio)
    return alpha * distill + (1.0 - alpha) * count


def moment_bonus(pred: Tensor, targets: Tensor, alpha: float = 0.9, eps: float = DEFAULT_EPS) -> Tensor:
    """Bias-corrected bonus ``b_f(x)`` of SPEC Eq. 8. ``pred [N, D]``, ``targets [K, N, D]`` -> ``[N]``."""
    mu, b2, var = target_moments(targets)
    return bonus_from_moments(pred, mu, b2, var, alpha, eps)


def apply_g(x: Tensor, g: str) -> Tensor:
    """The reward shaping function: ``g(x) = x`` ("linear") or ``exp(x)`` ("exp")."""
    if g == "linear":
        return x
    if g == "exp":
        return torch.exp(x)
    raise ValueError(f"g must be one of {G_FUNCTIONS}, got {g!r}")


def cdred_reward(
    pred_expert: Tensor,
    pred_behavioral: Tensor,
    targets: Tensor,
    alpha: float = 0.9,
    zeta: float = 0.8,
    sigma: float = 1.0,
    g: str = "linear",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """CDRED reward of SPEC Eq. 7: ``zeta*g(-sigma*b_phi) - (1-zeta)*g(-sigma*b_psi)``; returns ``[N]``."""
    mu, b2, var = target_moments(targets)  # the moments are shared by both predictors
    b_expert = bonus_from_moments(pred_expert, mu, b2, var, alpha, eps)  # b_phi
    b_behavioral = bonus_from_moments(pred_behavioral, mu, b2, var, alpha, eps)  # b_psi
    return zeta * apply_g(-sigma * b_expert, g) - (1.0 - zeta) * apply_g(-sigma * b_behavioral, g)


# =============================================================================== MPPI planning
# SPEC.md section 4 (paper Algorithm 2). Every op is batched over a leading B of
# independent planning problems: mean/std [B, H, A], values [B, N],
# actions [B, H, N, A], elites [B, H, k, A], weights [B, k].
#
# Two choices the SPEC leaves open, fixed here and matched by the kernels:
#
# * Ties. "keep the k best" is a stable descending sort: equal values keep the
#   lower candidate index first (-0.0 and +0.0 are equal). The elites are
#   returned best first; mppi_select indexes that order.
# * Infinite values. softmax(tau * (G - max G)) is literal for finite values. An
#   elite equal to the maximum gets the exponent 0 exactly (instead of
#   inf - inf = NaN when the maximum is infinite, or tau * 0 with an overflowing
#   tau), so the weights are always a valid distribution: several +inf elites
#   share the weight equally, and all -inf elites are weighted uniformly.
#
# Random draws use only ``generator`` (the default generator of the device when
# None), in this order: mppi_sample draws randn([B, H, M, A]); mppi_select draws
# multinomial(w, 1) and then, unless eval_mode, randn([B, A]). For one sample
# torch.multinomial draws q = empty_like(w).exponential_() and returns
# argmax(w / q); the fused kernels make those two calls themselves (the same
# numbers, without multinomial's host-side check of w, so nothing synchronises).


def mppi_sample(mean: Tensor, std: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Sampled action sequences ``clamp(mean + std * eps, -1, 1)``, ``[B, H, M, A]`` (M = num_samples)."""
    B, H, A = mean.shape
    # eps ~ N(0, 1), one draw per sequence, step and action coordinate.
    eps = torch.randn((B, H, num_samples, A), generator=generator, dtype=mean.dtype, device=mean.device)
    # "sample the other N - N_pi sequences a = clamp(mean + std * eps, -1, 1)"
    return (mean.unsqueeze(2) + std.unsqueeze(2) * eps).clamp(-1.0, 1.0)


def mppi_elite_update(
    values: Tensor, actions: Tensor, num_elites: int, temperature: float, min_std: float, max_std: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One MPPI refit: ``(mean [B,H,A], std [B,H,A], elite_actions [B,H,k,A], elite_weights [B,k], elite_values [B,k])``.

    ``values [B, N]`` are the returns G of the N sequences ``actions [B, H, N, A]``.
    The elites come best first (see the section comment for ties and infinities).
    """
    B, H, N, A = actions.shape
    k = num_elites
    # "NaN values count as 0" (only NaN; +-inf are kept).
    G = torch.where(torch.isnan(values), torch.zeros_like(values), values)
    # "keep the k best": stable descending sort, ties keep the lower index first.
    order = torch.sort(G, dim=1, descending=True, stable=True).indices[:, :k]  # [B, k]
    elite_values = G.gather(1, order)  # G_elite
    elite_actions = actions.gather(2, order[:, None, :, None].expand(B, H, k, A))
    # "w = softmax(tau * (G_elite - max G_elite))", with exponent 0 for the maxima.
    g_max = elite_values.amax(dim=1, keepdim=True)
    logits = torch.where(elite_values == g_max, torch.zeros_like(elite_values), temperature * (elite_values - g_max))
    w = torch.softmax(logits, dim=1)  # [B, k]
    w4 = w[:, None, :, None]  # broadcast over H and A
    sum_w = w.sum(dim=1)[:, None, None]
    # "mean = sum w * a / sum w"
    mean = (w4 * elite_actions).sum(dim=2) / sum_w
    # "std = sqrt(sum w * (a - mean)^2 / sum w) clamped to [min_std, max_std]"
    var = (w4 * (elite_actions - mean.unsqueeze(2)).pow(2)).sum(dim=2) / sum_w
    std = var.sqrt().clamp(min_std, max_std)
    return mean, std, elite_actions, w, elite_values


def mppi_select(
    elite_actions: Tensor,
    elite_weights: Tensor,
    std: Tensor,
    eval_mode: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The action to execute, ``[B, A]``: the first action of one elite drawn with probability w.

    Draw order: first ``multinomial(elite_weights, 1)`` (one elite per problem),
    then, only when ``eval_mode`` is False, ``eps ~ randn([B, A])``.
    """
    B, H, k, A = elite_actions.shape
    # "Draw one elite sequence with probability w"
    choice = torch.multinomial(elite_weights, 1, generator=generator)  # [B, 1]
    # "its first action"
    first = elite_actions[:, 0].gather(1, choice[:, :, None].expand(B, 1, A)).squeeze(1)  # [B, A]
    # "plus std_0 * eps unless evaluating"
    if not eval_mode:
        eps = torch.randn((B, A), generator=generator, dtype=first.dtype, device=first.device)
        first = first + std[:, 0] * eps
    # "clamped to [-1, 1]"
    return first.clamp(-1.0, 1.0)


# =============================================================================== RND ensemble forward
# SPEC.md section 0, the tail of every "Block": LayerNorm (affine) -> Mish, for
# E members with their own affine (E = 1: a single network):
#   x [E, M, D], gamma, beta [E, D]
#   mean = mean_D(x), var = mean_D((x - mean)^2) (biased), rstd = 1 / sqrt(var + eps)
#   y = Mish((x - mean) * rstd * gamma + beta)
# The fused op also returns mean and rstd [E, M] (its backward reuses them); the
# gradient of this reference is PyTorch's autograd of these lines.
#
# Huge rows: (x - mean)^2 overflows float32 for |x - mean| > 1.8e19, var becomes inf
# and rstd 0 (PyTorch's F.layer_norm does the same), and the sum of the row can
# overflow. Rows with max |x - mean| above 2^(max exponent / 2 - 14) (1.1e15 in
# float32) therefore square (x - mean) * c with the power of two
# c = 2^-(max exponent / 2 + 8) and take rstd = c / sqrt(var_c + eps c^2), the true
# value; rows with max |x| above that bound sum x * c for the mean. The fused kernels
# do the same when their sums overflow. Every other row has c = 1 (exact: the
# literal formula above).


def _ln_row_scale(v: Tensor) -> Tensor:
    """``c [E, M]`` for the rows of ``v`` (see the comment above)."""
    half = 64 if v.dtype == torch.float32 else 512  # half the largest binary exponent
    amax = v.abs().amax(dim=-1)
    return torch.where(amax > 2.0 ** (half - 14), torch.full_like(amax, 2.0 ** -(half + 8)), torch.ones_like(amax))


def layernorm_mish(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """``(y [E, M, D], mean [E, M], rstd [E, M])`` for ``x [E, M, D]`` and ``gamma, beta [E, D]``."""
    cx = _ln_row_scale(x.detach())  # 1 except for huge rows, whose sum could overflow
    mean = (x * cx.unsqueeze(-1)).mean(dim=-1) / cx
    d = x - mean.unsqueeze(-1)
    c = _ln_row_scale(d.detach())  # 1 except for huge rows
    var = ((d * c.unsqueeze(-1)) ** 2).mean(dim=-1)
    rstd = c / torch.sqrt(var + eps * c * c)
    xhat = (x - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)
    y = F.mish(xhat * gamma.unsqueeze(1) + beta.unsqueeze(1))
    return y, mean, rstd


# SPEC.md section 2 (the K random targets f_k and the predictors f_phi, f_psi)
# with the "Block" of section 0: every hidden layer is Linear -> LayerNorm -> Mish
# (LayerNorm with its affine weight and bias), the last layer a plain Linear.
# E members of identical architecture are evaluated together from stacked
# parameters, exactly like cdred_fast.layers.Ensemble:
#   weights[l] [E, out_l, in_l], biases[l] [E, out_l],
#   ln_weights[l], ln_biases[l] [E, out_l] for the hidden layers l < L - 1.


def ensemble_mlp(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    ln_weights: list[Tensor],
    ln_biases: list[Tensor],
    ln_eps: float = 1e-5,
    x_shared: Tensor | None = None,
) -> Tensor:
    """``E`` MLPs on ``x [N, I]`` (the same rows for every member) or ``x [E, N, I]``; returns ``[E, N, out]``.

    ``x_shared [I_s]``, when given, is the first ``I_s`` input features of every
    row (``x`` then holds the other ``I - I_s``): the MLPs see ``[x_shared ; x_n]``.
    """
    if x_shared is not None:
        # "x = [z ; a]": the same z in front of every row.
        x = torch.cat([x_shared.expand(*x.shape[:-1], x_shared.shape[0]), x], dim=-1)
    # bfloat16 networks (the planning precision): products in bfloat16, each hidden layer's
    # bias + LayerNorm + Mish in float32, rounded back to bfloat16 once
    wide = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    h = x
    for l in range(len(weights)):
        if l == len(weights) - 1:
            # the last layer is a plain Linear (batched over the members): [E, N, out]
            return torch.matmul(h, weights[l].transpose(1, 2)) + biases[l].unsqueeze(1)
        # Linear: h [N, in] or [E, N, in] -> [E, N, out]
        h = torch.matmul(h, weights[l].transpose(1, 2)).to(wide) + biases[l].unsqueeze(1).to(wide)
        # LayerNorm (biased variance, eps) with the member's affine weight and bias
        h = F.layer_norm(h, h.shape[-1:], eps=ln_eps) * ln_weights[l].unsqueeze(1) + ln_biases[l].unsqueeze(1)
        # Mish
        h = F.mish(h).to(x.dtype)
    return h
