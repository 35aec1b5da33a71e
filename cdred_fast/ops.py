"""Thin Python wrappers over the ``torch.ops.cdred_fast`` kernels.

Every wrapper takes ``impl="fused"`` (the C++/CUDA kernel) or ``impl="reference"``
(the pure-PyTorch twin in :mod:`cdred_fast.reference`). Arguments are validated
here for both paths, with errors that name the argument; the C++ kernels check
the same things again with ``TORCH_CHECK`` so direct ``torch.ops`` calls are safe.

Each op also gets a fake (meta) implementation, so it traces under
``torch.compile(fullgraph=True)``, and an autograd formula obtained by
differentiating the reference, so gradients flow through the fused forward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _lib, reference
from .reference import DEFAULT_EPS, G_FUNCTIONS

IMPLS = ("fused", "reference")
# Resolved once at import so that the wrappers stay traceable by torch.compile.
FUSED_AVAILABLE: bool = _lib.load()
_FLOAT_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- validation
def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _check_tensor(name: str, t, ndim: int, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim}-D), got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def _check_unit(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_moment_inputs(preds: dict[str, Tensor], targets: Tensor, alpha: float, eps: float) -> None:
    _check_tensor("targets", targets, 3, "[K, N, D]")
    K, N, D = targets.shape
    if K < 1:
        raise ValueError(f"targets must hold at least one target network (K >= 1), got K = {K}")
    if D < 1:
        raise ValueError(f"targets must have D >= 1 output coordinates, got shape {tuple(targets.shape)}")
    for name, pred in preds.items():
        _check_tensor(name, pred, 2, "[N, D]")
        if tuple(pred.shape) != (N, D):
            raise ValueError(
                f"{name} has shape {tuple(pred.shape)} but targets [K, N, D] = {tuple(targets.shape)} needs [N, D] = {(N, D)}"
            )
        if pred.dtype != targets.dtype:
            raise TypeError(f"{name} has dtype {pred.dtype} but targets has {targets.dtype}; they must match")
        if pred.device != targets.device:
            raise ValueError(f"{name} is on {pred.device} but targets is on {targets.device}; they must match")
    _check_unit("alpha", alpha)
    _check_nonneg("eps", eps)


def _check_reward_args(zeta: float, sigma: float, g: str) -> None:
    _check_unit("zeta", zeta)
    _check_nonneg("sigma", sigma)
    if g not in G_FUNCTIONS:
        raise ValueError(f"g must be one of {G_FUNCTIONS}, got {g!r}")


# --------------------------------------------------------------------------- public wrappers
def moment_bonus(
    pred: Tensor, targets: Tensor, alpha: float = 0.9, eps: float = DEFAULT_EPS, *, impl: str = "fused"
) -> Tensor:
    """Bias-corrected moment bonus ``b_f`` (SPEC Eq. 8).

    Args:
        pred: predictor output ``[N, D]``.
        targets: outputs of the K random target networks ``[K, N, D]``.
        alpha: weight of the distillation error against the inverse-count term.
        eps: variance guard, see :mod:`cdred_fast.reference`.
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``[N]`` bonus per row.
    """
    _check_impl(impl)
    _check_moment_inputs({"pred": pred}, targets, alpha, eps)
    if impl == "reference":
        return reference.moment_bonus(pred, targets, float(alpha), float(eps))
    if not FUSED_AVAILABLE:
        _lib.require()  # raises with the reason
    return torch.ops.cdred_fast.moment_bonus.default(pred, targets, float(alpha), float(eps))


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
    _check_impl(impl)
    _check_moment_inputs({"pred_expert": pred_expert, "pred_behavioral": pred_behavioral}, targets, alpha, eps)
    _check_reward_args(zeta, sigma, g)
    args = (float(alpha), float(zeta), float(sigma), g, float(eps))
    if impl == "reference":
        return reference.cdred_reward(pred_expert, pred_behavioral, targets, *args)
    if not FUSED_AVAILABLE:
        _lib.require()  # raises with the reason
    return torch.ops.cdred_fast.cdred_reward.default(pred_expert, pred_behavioral, targets, *args)


# --------------------------------------------------------------------------- fake + autograd
def _register_reward_family() -> None:
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

    # Gradients: differentiate the reference on the saved inputs. The forward
    # stays fused; the backward is exact for the same formula (the guard is a
    # piecewise selection, so it differentiates like torch.where).
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

    torch.library.register_autograd(
        "cdred_fast::moment_bonus", _backward_via(reference.moment_bonus), setup_context=_setup
    )
    torch.library.register_autograd(
        "cdred_fast::cdred_reward", _backward_via(reference.cdred_reward), setup_context=_setup
    )


if FUSED_AVAILABLE:
    _register_reward_family()
