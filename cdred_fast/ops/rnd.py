"""RND family (csrc/rnd): the ensemble forward and the planning reward (SPEC section 2).

E MLPs of one architecture (TD-MPC2 Blocks Linear -> LayerNorm -> Mish for the hidden layers,
a plain Linear last) from stacked parameters (:class:`EnsembleParams`): the K random targets
(E = K) and the two predictors stacked as an E = 2 ensemble. The CPU/CUDA kernels run the GEMMs
through ATen and one fused epilogue (bias + LayerNorm + affine + Mish, in place) per hidden
layer; see csrc/rnd/front.cpp for the schedule and csrc/common/ln_mish_math.h for the accuracy of the Mish.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..reference import DEFAULT_EPS
from . import block  # noqa: F401  (the trainable form differentiates through block's layernorm_mish autograd)
from ._checks import check_float, check_is_tensor, check_match, check_positive_eps, check_unit, is_number
from ._dispatch import FUSED_AVAILABLE, check_impl, run
from .reward import cdred_reward, check_reward_args


class EnsembleParams(NamedTuple):
    """Stacked parameters of E MLPs of one architecture, the arguments of :func:`ensemble_mlp`.

    A tuple: ``ensemble_mlp(x, *params)`` unpacks it. ``weights``: ``L`` tensors
    ``[E, out_l, in_l]``; ``biases``: ``L`` tensors ``[E, out_l]``; ``ln_weights``,
    ``ln_biases``: ``L - 1`` tensors ``[E, out_l]`` (the hidden layers' LayerNorm affine);
    ``ln_eps``: the LayerNorm epsilon.
    """

    weights: Sequence[Tensor]
    biases: Sequence[Tensor]
    ln_weights: Sequence[Tensor]
    ln_biases: Sequence[Tensor]
    ln_eps: float = 1e-5

    @classmethod
    def of(cls, params, name: str = "params") -> "EnsembleParams":
        """``params`` as an EnsembleParams: one already, or a tuple / list
        ``(weights, biases, ln_weights, ln_biases[, ln_eps])`` (``ln_eps`` defaults to 1e-5).
        Anything else raises a TypeError naming the argument ``name``."""
        if not isinstance(params, (list, tuple)) or len(params) not in (4, 5):
            length = f" of length {len(params)}" if isinstance(params, (list, tuple)) else ""
            raise TypeError(
                f"{name} must be a tuple (weights, biases, ln_weights, ln_biases[, ln_eps]) of stacked parameters, "
                f"got {type(params).__name__}{length}"
            )
        ln_eps = params[4] if len(params) == 5 else 1e-5
        return cls(list(params[0]), list(params[1]), list(params[2]), list(params[3]), ln_eps)

    @staticmethod
    def looks_like(params) -> bool:
        """Whether ``params`` has the shape of a parameter tuple (for telling one from a pair of them)."""
        return isinstance(params, (list, tuple)) and len(params) in (4, 5) and isinstance(params[0], (list, tuple))

    def members(self) -> int | None:
        """E, the number of stacked members, read from ``weights[0]`` (None when it is not a 3-D tensor)."""
        w0 = self.weights[0] if self.weights else None
        return w0.shape[0] if isinstance(w0, Tensor) and w0.dim() == 3 else None

    def tensors(self) -> list[Tensor]:
        """Every parameter tensor, layer group by layer group."""
        return [t for group in self[:4] for t in group]


def _is_tensor_seq(seq) -> bool:
    return isinstance(seq, (list, tuple)) and all(isinstance(t, Tensor) for t in seq)


def _check_rnd_tensor(name: str, t, ref: Tensor, shape: tuple, layout: str) -> None:
    check_is_tensor(name, t)
    if ref.dtype != torch.bfloat16:  # bfloat16 x: every tensor must be bfloat16 too (check_match)
        check_float(name, t)
    check_match(name, t, "x", ref)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {list(shape)}, got shape {tuple(t.shape)}")


def _check_ensemble_mlp_inputs(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared) -> None:
    check_is_tensor("x", x)
    if x.dim() not in (2, 3):
        raise ValueError(
            "x must have shape [N, I] (2-D, rows shared by every member) or [E, N, I] (3-D, rows per member), "
            f"got shape {tuple(x.shape)}"
        )
    if x.dtype != torch.bfloat16:
        check_float("x", x)
    for name, seq in (("weights", weights), ("biases", biases), ("ln_weights", ln_weights), ("ln_biases", ln_biases)):
        if not _is_tensor_seq(seq):
            raise TypeError(f"{name} must be a list or tuple of torch.Tensor, got {type(seq).__name__}")
    L = len(weights)
    if L < 1:
        raise ValueError("weights must hold at least one layer, got an empty list")
    if len(biases) != L:
        raise ValueError(f"biases must hold one tensor per layer ({L}), got {len(biases)}")
    for name, seq in (("ln_weights", ln_weights), ("ln_biases", ln_biases)):
        if len(seq) != L - 1:
            raise ValueError(
                f"{name} must hold one tensor per hidden layer ({L - 1} = len(weights) - 1), got {len(seq)}"
            )
    if not is_number(ln_eps) or not math.isfinite(ln_eps) or ln_eps < 0:
        raise ValueError(f"ln_eps must be finite and >= 0, got {ln_eps!r}")
    E = None
    prev_out = None
    for l, w in enumerate(weights):
        name = f"weights[{l}]"
        if w.dim() != 3:
            raise ValueError(f"{name} must have shape [E, out, in] (3-D), got shape {tuple(w.shape)}")
        if E is None:
            E = w.shape[0]
            if E < 1:
                raise ValueError(f"weights[0] must hold at least one member (E >= 1), got shape {tuple(w.shape)}")
        elif w.shape[0] != E:
            raise ValueError(
                f"{name} has E = {w.shape[0]} members but weights[0] has {E}; every layer must have the same E"
            )
        elif w.shape[2] != prev_out:
            raise ValueError(
                f"{name} has shape {tuple(w.shape)} but layer {l - 1} outputs {prev_out} features; "
                f"expected [{E}, out, {prev_out}]"
            )
        if w.shape[1] < 1 or w.shape[2] < 1:
            raise ValueError(f"{name} must have at least one output and one input feature, got shape {tuple(w.shape)}")
        _check_rnd_tensor(name, w, x, tuple(w.shape), "[E, out, in]")
        out = w.shape[1]
        _check_rnd_tensor(f"biases[{l}]", biases[l], x, (E, out), "[E, out]")
        if l < L - 1:
            _check_rnd_tensor(f"ln_weights[{l}]", ln_weights[l], x, (E, out), "[E, out]")
            _check_rnd_tensor(f"ln_biases[{l}]", ln_biases[l], x, (E, out), "[E, out]")
        prev_out = out
    in0 = weights[0].shape[2]
    shared = 0
    if x_shared is not None:
        if not isinstance(x_shared, Tensor):
            raise TypeError(f"x_shared must be a torch.Tensor or None, got {type(x_shared).__name__}")
        if x_shared.dim() != 1:
            raise ValueError(f"x_shared must have shape [I_s] (1-D), got shape {tuple(x_shared.shape)}")
        _check_rnd_tensor("x_shared", x_shared, x, tuple(x_shared.shape), "[I_s]")
        shared = x_shared.shape[0]
        if shared >= in0:
            raise ValueError(
                f"x_shared has {shared} features but the first layer takes I = {in0} in all; x_shared must be "
                "shorter than I (x holds the other I - I_s >= 1 features)"
            )
    if x.shape[-1] != in0 - shared:
        of = f" of which x_shared gives {shared}" if shared else ""
        raise ValueError(
            f"x has {x.shape[-1]} features per row but weights[0] takes I = {in0}{of}; expected {in0 - shared}"
        )
    if x.dim() == 3 and x.shape[0] != E:
        raise ValueError(
            f"x has shape {tuple(x.shape)} (per-member rows [E, N, I]) but the weights have E = {E} members"
        )


def ensemble_mlp(
    x: Tensor,
    weights,
    biases,
    ln_weights,
    ln_biases,
    ln_eps: float = 1e-5,
    x_shared: Tensor | None = None,
    *,
    impl: str = "fused",
) -> Tensor:
    """Forward of ``E`` MLPs of one architecture (SPEC section 2 targets / predictors).

    Every hidden layer is the SPEC Block ``Linear -> LayerNorm(affine, ln_eps) -> Mish``,
    the last layer a plain ``Linear`` (``len(weights) = L`` Linears, ``L - 1`` LayerNorms).

    Args:
        x: ``[N, I_x]`` rows shared by every member, or ``[E, N, I_x]`` rows per member.
        weights: ``L`` tensors ``[E, out_l, in_l]`` (``nn.Linear`` layout per member).
        biases: ``L`` tensors ``[E, out_l]``.
        ln_weights, ln_biases: ``L - 1`` tensors ``[E, out_l]`` (LayerNorm affine of the hidden layers).
        ln_eps: LayerNorm epsilon (``nn.LayerNorm``'s default 1e-5).
        x_shared: optional ``[I_s]``, the first ``I_s`` input features of EVERY row
            (the planning case ``x = [z ; a]`` with one latent ``z``); then
            ``I_x = I - I_s >= 1``. The result equals the MLPs applied to
            ``cat([x_shared.expand(N, -1), x], -1)``; the fused kernel computes
            the ``z``-part of the first layer once per call, not once per row.
        impl: ``"fused"`` or ``"reference"``.

    dtype: float32 or float64; or bfloat16 for ``x`` and every parameter, the no-gradient
    planning form (``CDREDConfig.planning_precision``; CPU and CUDA): GEMMs in bfloat16 with
    float32 accumulation (oneDNN, cuBLAS), each hidden layer's bias + LayerNorm + Mish in
    float32, rounded to bfloat16 once.

    Returns: ``[E, N, out]``. Differentiable w.r.t. ``x``, ``x_shared`` and every
    parameter tensor. When grad mode is on and an input requires grad (training
    the predictors), the fused path runs in its trainable form: ATen GEMMs with
    the bias and the fused ``layernorm_mish`` op per hidden layer, so the
    backward reuses the forward's activations and row statistics and runs one
    fused LayerNorm + Mish backward kernel per hidden layer. Otherwise (planning,
    the targets) one fused forward that keeps no activations. No dropout: the
    CDRED targets and predictors have none.
    """
    check_impl(impl)
    _check_ensemble_mlp_inputs(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared)
    params = EnsembleParams(list(weights), list(biases), list(ln_weights), list(ln_biases), float(ln_eps))
    _check_bfloat16(x, x_shared, params)
    # training: the trainable form keeps what the backward needs
    trainable = impl == "fused" and _needs_grad(x, x_shared, *params.tensors())
    return run(impl, "ensemble_mlp", x, *params, x_shared, fused=_ensemble_mlp_trainable if trainable else None)


def _check_bfloat16(x: Tensor, x_shared, params: EnsembleParams) -> None:
    """bfloat16 networks are the forward-only planning form (``CDREDConfig.planning_precision``):
    no gradient."""
    if x.dtype != torch.bfloat16:
        return
    if _needs_grad(x, x_shared, *params.tensors()):
        raise TypeError(
            "bfloat16 ensemble inputs are the no-gradient planning form; train in float32 "
            "(an input or parameter requires grad while grad mode is on)"
        )


def _needs_grad(*tensors) -> bool:
    """Whether autograd will record this call: grad mode is on and an input (None allowed) requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _ensemble_mlp_trainable(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared=None) -> Tensor:
    """The training form of the fused ensemble forward (same result as :func:`ensemble_mlp`).

    Per layer a batched GEMM with the bias (``baddbmm``, ATen) and, for the hidden layers, the
    fused ``layernorm_mish`` op, whose outputs and row statistics autograd keeps: the backward
    is the GEMMs' transposed products plus one ``layernorm_mish_backward`` kernel per hidden
    layer, and the forward is never recomputed.
    """
    if x_shared is not None:
        x = torch.cat([x_shared.expand(*x.shape[:-1], x_shared.shape[0]), x], dim=-1)
    E = weights[0].shape[0]
    h = x if x.dim() == 3 else x.unsqueeze(0).expand(E, *x.shape)
    for l in range(len(weights)):
        h = torch.baddbmm(biases[l].unsqueeze(1), h, weights[l].transpose(1, 2))  # [E, N, out_l]
        if l < len(weights) - 1:
            h = torch.ops.cdred_fast.layernorm_mish.default(h, ln_weights[l], ln_biases[l], ln_eps)[0]
    return h


def rnd_reward(
    x: Tensor,
    targets_params,
    predictors_params,
    alpha: float = 0.9,
    zeta: float = 0.8,
    sigma: float = 1.0,
    g: str = "linear",
    eps: float = DEFAULT_EPS,
    x_shared: Tensor | None = None,
    *,
    impl: str = "fused",
) -> Tensor:
    """CDRED reward (SPEC Eq. 7) straight from the network parameters: the planning path.

    ``targets = ensemble_mlp(x, *targets_params)`` ``[K, N, D]``, the two
    predictor outputs ``f_phi(x)``, ``f_psi(x)`` ``[N, D]`` likewise, then
    ``cdred_reward(f_phi(x), f_psi(x), targets, ...)``.

    Args:
        x: ``[N, I_x]`` rows (``[z ; a]``, or only ``a`` with ``x_shared = z``).
        targets_params: ``(weights, biases, ln_weights, ln_biases[, ln_eps])`` stacked
            over the K targets as for :func:`ensemble_mlp` (``ln_eps`` defaults to 1e-5).
        predictors_params: either one such tuple stacked over E = 2 members
            (member 0 the expert predictor f_phi, member 1 the behavioural f_psi),
            or a pair ``(expert_params, behavioral_params)`` of E = 1 tuples. The
            pair form takes ``w.unsqueeze(0)`` views of two separate modules'
            parameters: no copy of the weights per call (``torch.stack`` would copy them).
        alpha, zeta, sigma, g, eps: as in :func:`cdred_reward`.
        x_shared: optional ``[I_s]`` shared first input features (see :func:`ensemble_mlp`).
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``[N]`` reward per row, in ``x``'s dtype; bfloat16 networks (``x`` and every
    parameter bfloat16: the planning precision of ``CDREDConfig.planning_precision``, no
    gradient) return it in float32: their outputs are widened to float32 before the
    reward (SPEC Eq. 7-8), which is computed in float32.

    Fused path without gradients (planning): the predictors run through
    ``ensemble_mlp``; the targets through ``ensemble_reward``, which runs their
    hidden layers, then their last Linear and the reward on tiles of rows whose
    ``[K, rows, D]`` outputs stay in the CPU's L2 cache (512 KB; one tile on a
    GPU): the ``[K, N, D]`` target tensor is never materialised (timings in
    ``bench/RESULTS.md``).
    With gradients (or ``impl="reference"``): ``ensemble_mlp`` + ``cdred_reward``.
    """
    check_impl(impl)
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a torch.Tensor of shape [N, I] (2-D), got {shape}")
    targets = EnsembleParams.of(targets_params, "targets_params")
    pair = (
        isinstance(predictors_params, (list, tuple))
        and len(predictors_params) == 2
        and all(EnsembleParams.looks_like(p) for p in predictors_params)
    )
    if pair:
        names = ("predictors_params[0]", "predictors_params[1]")
        expert, behavioral = (EnsembleParams.of(p, name) for p, name in zip(predictors_params, names))
        for name, p in zip(names, (expert, behavioral)):
            if p.members() not in (None, 1):
                raise ValueError(f"{name} must hold ONE predictor (E = 1), got E = {p.members()}")
        pred_expert = ensemble_mlp(x, *expert, x_shared, impl=impl)[0]  # f_phi(x) [N, D]
        pred_behavioral = ensemble_mlp(x, *behavioral, x_shared, impl=impl)[0]  # f_psi(x) [N, D]
    else:
        predictors = EnsembleParams.of(predictors_params, "predictors_params")
        if predictors.members() not in (None, 2):
            raise ValueError(
                f"predictors_params must stack exactly 2 predictors (expert, behavioural), got E = {predictors.members()}"
            )
        preds = ensemble_mlp(x, *predictors, x_shared, impl=impl)  # [2, N, D]
        pred_expert, pred_behavioral = preds[0], preds[1]
    if impl == "fused" and not _needs_grad(x, x_shared, pred_expert, pred_behavioral, *targets.tensors()):
        # planning: the targets' last layer and the reward per tile of rows, no [K, N, D] tensor
        _check_ensemble_mlp_inputs(x, *targets, x_shared)
        check_unit("alpha", alpha)
        check_reward_args(zeta, sigma, g)
        check_positive_eps(eps)
        rest = (float(alpha), float(zeta), float(sigma), g, float(eps), x_shared)
        return run(impl, "ensemble_reward", x, *targets, pred_expert, pred_behavioral, *rest)
    targets = ensemble_mlp(x, *targets, x_shared, impl=impl)  # [K, N, D]
    if x.dtype == torch.bfloat16:  # the reward of bfloat16 networks is computed in float32
        pred_expert, pred_behavioral, targets = pred_expert.float(), pred_behavioral.float(), targets.float()
    return cdred_reward(pred_expert, pred_behavioral, targets, alpha, zeta, sigma, g, eps, impl=impl)


def _register() -> None:
    @torch.library.register_fake("cdred_fast::ensemble_mlp")
    def _(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared=None):
        torch._check(x.dim() == 2 or x.dim() == 3)
        torch._check(len(weights) >= 1)
        return x.new_empty((weights[0].shape[0], x.shape[-2], weights[-1].shape[1]))

    @torch.library.register_fake("cdred_fast::ensemble_reward")
    def _(
        x,
        weights,
        biases,
        ln_weights,
        ln_biases,
        ln_eps,
        pred_expert,
        pred_behavioral,
        alpha,
        zeta,
        sigma,
        g,
        eps,
        x_shared=None,
    ):
        torch._check(x.dim() == 2 or x.dim() == 3)
        # bfloat16 networks: the reward is float32
        return x.new_empty((x.shape[-2],), dtype=torch.float32 if x.dtype == torch.bfloat16 else x.dtype)

    def _no_gradient(ctx, grad):
        raise RuntimeError(
            "cdred_fast::ensemble_reward is the no-grad planning reward; differentiate ops.rnd_reward instead "
            "(with inputs that require grad it runs ensemble_mlp + cdred_reward, which have gradients)"
        )

    torch.library.register_autograd("cdred_fast::ensemble_reward", _no_gradient)

    # Gradients of a direct torch.ops call (the wrapper routes differentiable
    # calls to _ensemble_mlp_trainable instead): recompute the forward in its
    # trainable form on the saved inputs and differentiate that. Only the inputs
    # that need a gradient are differentiated.
    def _setup(ctx, inputs, output):
        x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared = inputs
        ctx.num_layers = len(weights)
        ctx.ln_eps = ln_eps
        ctx.save_for_backward(x, *weights, *biases, *ln_weights, *ln_biases, x_shared)

    def _backward(ctx, grad):
        L = ctx.num_layers
        saved = list(ctx.saved_tensors)
        x, rest, x_shared = saved[0], saved[1:-1], saved[-1]
        groups = [rest[:L], rest[L : 2 * L], rest[2 * L : 3 * L - 1], rest[3 * L - 1 :]]
        # The dispatcher drops a trailing x_shared=None (its default), so
        # needs_input_grad may have 6 entries instead of 7.
        nig = tuple(ctx.needs_input_grad) + (False,) * (7 - len(ctx.needs_input_grad))
        need_x, need_w, need_b, need_lw, need_lb, _, need_s = nig
        needs = [need_w, need_b, need_lw, need_lb]

        def leaf(t, need):
            return None if t is None else t.detach().requires_grad_(bool(need))

        x_l = leaf(x, need_x)
        s_l = leaf(x_shared, need_s)
        groups_l = [[leaf(t, n) for t, n in zip(grp, need)] for grp, need in zip(groups, needs)]
        wanted = [t for t in [x_l, *[t for grp in groups_l for t in grp], s_l] if t is not None and t.requires_grad]
        grads = {}
        if wanted:
            with torch.enable_grad():
                out = _ensemble_mlp_trainable(x_l, *groups_l, ctx.ln_eps, s_l)
                for t, gr in zip(wanted, torch.autograd.grad(out, wanted, grad, allow_unused=True)):
                    grads[id(t)] = gr

        def pick(t):
            return None if t is None else grads.get(id(t))

        result = (pick(x_l), *[[pick(t) for t in grp] for grp in groups_l], None, pick(s_l))
        return result[: len(ctx.needs_input_grad)]  # same structure as the inputs given

    torch.library.register_autograd("cdred_fast::ensemble_mlp", _backward, setup_context=_setup)


if FUSED_AVAILABLE:
    _register()
