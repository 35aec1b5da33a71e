"""Reward family (csrc/reward): the moment bonus (SPEC Eq. 8) and the CDRED reward (Eq. 7).

Gradients: the forward stays fused; the backward differentiates the reference on the saved
inputs (exact for the same formula: the variance guard is a piecewise selection, so it
differentiates like ``torch.where``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..reference import DEFAULT_EPS, G_FUNCTIONS
from ._checks import check_match, check_nonneg, check_positive_eps, check_tensor, check_unit
from ._dispatch import FUSED_AVAILABLE, check_impl, run


def check_moment_inputs(preds: dict[str, Tensor], targets: Tensor, alpha: float, eps: float) -> None:
    """``targets [K, N, D]`` and every named prediction ``[N, D]`` of its dtype and device; alpha, eps."""
    check_tensor("targets", targets, 3, "[K, N, D]")
    K, N, D = targets.shape
    if K < 1:
        raise ValueError(f"targets must hold at least one target network (K >= 1), got K = {K}")
    if D < 1:
        raise ValueError(f"targets must have D >= 1 output coordinates, got shape {tuple(targets.shape)}")
    for name, pred in preds.items():
        check_tensor(name, pred, 2, "[N, D]")
        if tuple(pred.shape) != (N, D):
            raise ValueError(
                f"{name} has shape {tuple(pred.shape)} but targets [K, N, D] = {tuple(targets.shape)} needs [N, D] = {(N, D)}"
            )
        check_match(name, pred, "targets", targets)
    check_unit("alpha", alpha)
    check_positive_eps(eps)


def check_reward_args(zeta: float, sigma: float, g: str) -> None:
    check_unit("zeta", zeta)
    check_nonneg("sigma", sigma)
    if g not in G_FUNCTIONS:
        raise ValueError(f"g must be one of {G_FUNCTIONS}, got {g!r}")


def moment_bonus(
    pred: Tensor, targets: Tensor, alpha: float = 0.9, eps: float = DEFAULT_EPS, *, impl: str = "fused"
) -> Tensor:
    """Bias-corrected moment bonus ``b_f`` (SPEC Eq. 8).

    Args:
        pred: predictor output ``[N, D]``.
        targets: outputs of the K random target networks ``[K, N, D]``.
        alpha: weight of the distillation error against the inverse-count term.
        eps: variance guard (> 0), see :mod:`cdred_fast.reference`.
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``[N]`` bonus per row.
    """
    check_impl(impl)
    check_moment_inputs({"pred": pred}, targets, alpha, eps)
    return run(impl, "moment_bonus", pred, targets, float(alpha), float(eps))


def cdred_reward(
    pred_expert: Tensor,
    pred_behavioral: Tensor,
    targets: Tensor,
    alpha: float = 0.9,
    zeta: float = 0.8,
    sigma: float = 1.0,
    g: str = "linear",
    eps: float = DEFAULT_EPS,
    *,
    impl: str = "fused",
) -> Tensor:
    """CDRED reward ``zeta*g(-sigma*b_phi) - (1-zeta)*g(-sigma*b_psi)`` (SPEC Eq. 7).

    Args:
        pred_expert: expert predictor output ``f_phi(x)`` ``[N, D]``.
        pred_behavioral: behavioural predictor output ``f_psi(x)`` ``[N, D]``.
        targets: random target outputs ``[K, N, D]``; read once for both bonuses.
        alpha, eps: as in :func:`moment_bonus`.
        zeta: expert coefficient in [0, 1]. sigma: bonus scale >= 0.
        g: ``"linear"`` (``g(x) = x``) or ``"exp"``.
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``[N]`` reward per row.
    """
    check_impl(impl)
    check_moment_inputs({"pred_expert": pred_expert, "pred_behavioral": pred_behavioral}, targets, alpha, eps)
    check_reward_args(zeta, sigma, g)
    args = (float(alpha), float(zeta), float(sigma), g, float(eps))
    return run(impl, "cdred_reward", pred_expert, pred_behavioral, targets, *args)


def _register() -> None:
    @torch.library.register_fake("cdred_fast::moment_bonus")
    def _(pred, targets, alpha, eps):
        torch._check(targets.dim() == 3)
        torch._check(pred.dim() == 2)
        return pred.new_empty((pred.shape[0],))

    @torch.library.register_fake("cdred_fast::cdred_reward")
    def _(pred_expert, pred_behavioral, targets, alpha, zeta, sigma, g, eps):
        torch._check(targets.dim() == 3)
        torch._check(pred_expert.dim() == 2)
        return pred_expert.new_empty((pred_expert.shape[0],))

    def _setup(ctx, inputs, output):
        ctx.tensors_in = [t for t in inputs if isinstance(t, Tensor)]
        ctx.scalars_in = [a for a in inputs if not isinstance(a, Tensor)]
        ctx.save_for_backward(*ctx.tensors_in)

    def _backward_via(ref_fn):
        def backward(ctx, grad):
            tensors = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
            with torch.enable_grad():
                out = ref_fn(*tensors, *ctx.scalars_in)
                grads = torch.autograd.grad(out, tensors, grad, allow_unused=True)
            return tuple(grads) + (None,) * len(ctx.scalars_in)

        return backward

    for name in ("moment_bonus", "cdred_reward"):
        torch.library.register_autograd(
            f"cdred_fast::{name}", _backward_via(getattr(reference, name)), setup_context=_setup
        )


if FUSED_AVAILABLE:
    _register()
