"""Block family (csrc/block): the Block tail LayerNorm -> Mish (SPEC section 0).

The world model's Blocks (Linear -> [Dropout] -> LayerNorm -> Mish) and the predictors' hidden
layers during training run their Linear through ATen and this op for the rest: one kernel
forward, one kernel backward (``layernorm_mish_backward``, reusing the forward's row statistics)
instead of the autograd graph of PyTorch's LayerNorm + Mish.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_float, check_is_tensor, check_match, check_nonneg
from ._dispatch import FUSED_AVAILABLE, check_impl, run


def check_layernorm_mish_inputs(x, gamma, beta, eps) -> tuple[int, int]:
    """Validates and returns ``(E, D)``."""
    check_is_tensor("x", x)
    check_float("x", x)
    for name, t in (("gamma", gamma), ("beta", beta)):
        check_is_tensor(name, t)
        if t.dim() not in (1, 2):
            raise ValueError(f"{name} must have shape [D] or [E, D] (per member), got shape {tuple(t.shape)}")
        check_match(name, t, "x", x)
    if gamma.shape != beta.shape:
        raise ValueError(f"gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)} must have the same shape")
    check_nonneg("eps", eps)
    D = gamma.shape[-1]
    if x.dim() < 1 or x.shape[-1] != D or D < 1:
        raise ValueError(f"x has shape {tuple(x.shape)} but gamma has D = {D} features; x must be [..., {D}]")
    if gamma.dim() == 2:
        E = gamma.shape[0]
        if x.dim() < 2 or x.shape[0] != E:
            raise ValueError(
                f"gamma [E, D] = {tuple(gamma.shape)} has one affine per member, so x must be [E, ..., D] with "
                f"E = {E}, got shape {tuple(x.shape)}"
            )
        return E, D
    return 1, D


def layernorm_mish(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5, *, impl: str = "fused") -> Tensor:
    """``Mish(LayerNorm(x) * gamma + beta)`` over the last dimension (the SPEC Block's tail).

    Args:
        x: ``[..., D]`` with ``gamma, beta [D]``, or ``[E, ..., D]`` with ``gamma, beta [E, D]``
            (E members with their own affine, as the stacked Q heads).
        eps: LayerNorm epsilon (``nn.LayerNorm``'s default 1e-5); biased variance, as ``nn.LayerNorm``.
        impl: ``"fused"`` or ``"reference"``.

    Returns ``y`` with the shape of ``x``. Differentiable w.r.t. ``x``, ``gamma`` and ``beta``: the
    fused backward is one kernel (``layernorm_mish_backward``) that reuses the forward's row
    statistics; ``grad_gamma`` / ``grad_beta`` are summed over rows in a fixed order.
    """
    check_impl(impl)
    E, D = check_layernorm_mish_inputs(x, gamma, beta, eps)
    y = run(impl, "layernorm_mish", x.reshape(E, -1, D), gamma.reshape(E, D), beta.reshape(E, D), float(eps))[0]
    return y.reshape(x.shape)


def _register() -> None:
    @torch.library.register_fake("cdred_fast::layernorm_mish")
    def _(x, gamma, beta, eps):
        torch._check(x.dim() == 3)
        stats = x.new_empty(x.shape[:2])
        return torch.empty_like(x), stats, torch.empty_like(stats)

    @torch.library.register_fake("cdred_fast::layernorm_mish_backward")
    def _(grad_y, x, mean, rstd, gamma, beta):
        torch._check(x.dim() == 3)
        return torch.empty_like(x), torch.empty_like(gamma), torch.empty_like(beta)

    def _setup(ctx, inputs, output):
        x, gamma, beta, _eps = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, gamma, beta, mean, rstd)

    def _backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, gamma, beta, mean, rstd = ctx.saved_tensors
        if grad_y is None:
            return None, None, None, None
        gx, gg, gb = torch.ops.cdred_fast.layernorm_mish_backward.default(grad_y, x, mean, rstd, gamma, beta)
        nig = ctx.needs_input_grad
        return (gx if nig[0] else None), (gg if nig[1] else None), (gb if nig[2] else None), None

    torch.library.register_autograd("cdred_fast::layernorm_mish", _backward, setup_context=_setup)


if FUSED_AVAILABLE:
    _register()
