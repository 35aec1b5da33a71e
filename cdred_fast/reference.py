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
