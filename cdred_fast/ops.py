"""Thin Python wrappers over the ``torch.ops.cdred_fast`` kernels.

Every wrapper takes ``impl="fused"`` (the C++/CUDA kernel) or ``impl="reference"``
(the pure-PyTorch twin in :mod:`cdred_fast.reference`). Arguments are validated
here for both paths, with errors that name the argument; the C++ kernels check
the same things again with ``TORCH_CHECK`` so direct ``torch.ops`` calls are safe.

Each op also gets a fake (meta) implementation, so it traces under
``torch.compile(fullgraph=True)``, and an autograd formula: ``layernorm_mish`` has
a backward kernel of its own (``layernorm_mish_backward``); ``ensemble_mlp`` runs a
trainable form built on it when gradients are needed; the reward ops differentiate
their reference on the saved inputs; the MPPI ops are not differentiable (planning).
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


# =============================================================================== MPPI planning (SPEC section 4)
# Batched over a leading B of independent planning problems; the unbatched form
# (no B axis anywhere) is accepted too and returns unbatched results.
#
# Planning is no-grad: the wrappers detach their inputs, so the outputs never
# require grad whatever the inputs do (a backward through them then fails with
# "does not require grad" instead of producing a silently wrong gradient). Direct
# torch.ops calls behave the same: the library's Autograd kernel for these ops
# runs them below autograd, so their outputs never require grad either.
#
# Random draws come only from ``generator`` (the device's default generator when
# None), in the reference's shapes and order; with equal generator states the
# fused and reference ops return the same samples. The CUDA ops never
# synchronise with the host, so a plan can be recorded in a CUDA graph: the fused
# mppi_select makes torch.multinomial(w, 1)'s own draw (exponential_, then
# argmax(w / q)) but not its validation of w, which reads a reduction on the host.
# The CPU kernel validates w itself; on CUDA an invalid row (NaN, negative, all
# zero) is not reported and draws some index in [0, k).


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_layout(name: str, t, batched_layout: str, unbatched_layout: str) -> bool:
    """Type-checks the first tensor of an op and returns whether it is batched."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    nb = batched_layout.count(",") + 1
    if t.dim() not in (nb, nb - 1):
        raise ValueError(
            f"{name} must have shape {batched_layout} ({nb}-D) or {unbatched_layout} ({nb - 1}-D), "
            f"got shape {tuple(t.shape)}"
        )
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    return t.dim() == nb


def _layout(batched: bool, layout: str) -> str:
    return layout if batched else "[" + layout[len("[B, ") :]


def _check_match(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must match")


def _check_generator(generator, ref: Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != ref.device.type:
        raise ValueError(
            f"generator is a {generator.device.type} generator but the tensors are on {ref.device}; "
            "pass a generator of the tensors' device type (or None)"
        )


def _check_temperature(temperature, dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    if not _is_number(temperature) or not (info.tiny <= float(temperature) <= info.max):
        raise ValueError(
            f"temperature must be finite and > 0, between {info.tiny:g} and {info.max:g} for {dtype}, "
            f"got {temperature!r}"
        )


def _check_std_bounds(min_std, max_std) -> None:
    if not _is_number(min_std) or not math.isfinite(min_std) or min_std <= 0:
        raise ValueError(f"min_std must be a finite number > 0, got {min_std!r}")
    if not _is_number(max_std) or not math.isfinite(max_std) or max_std < min_std:
        raise ValueError(f"max_std must be a finite number >= min_std ({min_std!r}), got {max_std!r}")


def mppi_sample(
    mean: Tensor, std: Tensor, num_samples: int, generator: torch.Generator | None = None, *, impl: str = "fused"
) -> Tensor:
    """Sample action sequences ``clamp(mean + std * eps, -1, 1)`` (SPEC section 4, step 3).

    Args:
        mean, std: ``[B, H, A]`` (or ``[H, A]``), same dtype and device.
        num_samples: M >= 0 sequences per problem (``N - N_pi`` in the SPEC).
        generator: source of ``eps ~ N(0, 1)`` of shape ``[B, H, M, A]``, drawn in
            one ``torch.randn`` call (the device's default generator when None).
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``[B, H, M, A]`` (or ``[H, M, A]``); never requires grad.
    """
    _check_impl(impl)
    batched = _check_layout("mean", mean, "[B, H, A]", "[H, A]")
    _check_tensor("std", std, mean.dim(), _layout(batched, "[B, H, A]"))
    if std.shape != mean.shape:
        raise ValueError(f"std has shape {tuple(std.shape)} but mean has shape {tuple(mean.shape)}; they must match")
    _check_match("std", std, "mean", mean)
    if not _is_int(num_samples) or num_samples < 0:
        raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
    _check_generator(generator, mean)
    mean, std = mean.detach(), std.detach()
    if not batched:
        mean, std = mean.unsqueeze(0), std.unsqueeze(0)
    if impl == "reference":
        out = reference.mppi_sample(mean, std, num_samples, generator)
    else:
        if not FUSED_AVAILABLE:
            _lib.require()
        out = torch.ops.cdred_fast.mppi_sample.default(mean, std, num_samples, generator)
    return out if batched else out.squeeze(0)


def mppi_elite_update(
    values: Tensor,
    actions: Tensor,
    num_elites: int = 64,
    temperature: float = 0.5,
    min_std: float = 0.05,
    max_std: float = 2.0,
    *,
    impl: str = "fused",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Refit the sampling distribution to the elites (SPEC section 4, step 3).

    NaN values count as 0; the ``k = num_elites`` best sequences are kept, best
    first, equal values in candidate order; ``w = softmax(temperature * (G - max G))``
    (an elite equal to the maximum gets exponent 0, so +-inf values give finite
    weights); ``mean = sum w a / sum w``; ``std = sqrt(sum w (a - mean)^2 / sum w)``
    clamped to ``[min_std, max_std]``.

    Args:
        values: returns G ``[B, N]`` (or ``[N]``).
        actions: the sequences ``[B, H, N, A]`` (or ``[H, N, A]``), same dtype and device.
        num_elites: k in [1, N].
        temperature: tau > 0, finite in the dtype of ``values``.
        min_std, max_std: ``0 < min_std <= max_std``, finite.
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``(mean [B,H,A], std [B,H,A], elite_actions [B,H,k,A], elite_weights [B,k],
    elite_values [B,k])`` (without the B axis for unbatched inputs); none requires grad.
    """
    _check_impl(impl)
    batched = _check_layout("values", values, "[B, N]", "[N]")
    _check_tensor("actions", actions, values.dim() + 2, _layout(batched, "[B, H, N, A]"))
    n_axis = 2 if batched else 1
    if actions.shape[n_axis] != values.shape[-1] or (batched and actions.shape[0] != values.shape[0]):
        expected = f"[{values.shape[0]}, H, {values.shape[1]}, A]" if batched else f"[H, {values.shape[0]}, A]"
        raise ValueError(f"actions has shape {tuple(actions.shape)} but values {tuple(values.shape)} needs {expected}")
    _check_match("actions", actions, "values", values)
    N = values.shape[-1]
    if not _is_int(num_elites) or not (1 <= num_elites <= N):
        raise ValueError(f"num_elites must be an int in [1, N] = [1, {N}], got {num_elites!r}")
    _check_temperature(temperature, values.dtype)
    _check_std_bounds(min_std, max_std)
    values, actions = values.detach(), actions.detach()
    if not batched:
        values, actions = values.unsqueeze(0), actions.unsqueeze(0)
    args = (int(num_elites), float(temperature), float(min_std), float(max_std))
    if impl == "reference":
        out = reference.mppi_elite_update(values, actions, *args)
    else:
        if not FUSED_AVAILABLE:
            _lib.require()
        out = torch.ops.cdred_fast.mppi_elite_update.default(values, actions, *args)
    return tuple(out) if batched else tuple(t.squeeze(0) for t in out)


def mppi_select(
    elite_actions: Tensor,
    elite_weights: Tensor,
    std: Tensor,
    eval_mode: bool = False,
    generator: torch.Generator | None = None,
    *,
    impl: str = "fused",
) -> Tensor:
    """The action to execute (SPEC section 4, step 4).

    Draws, from ``generator`` and in this order: (1) one elite per problem with
    probability ``elite_weights``, as ``torch.multinomial(elite_weights, 1)`` (the fused
    kernels repeat its calls, ``exponential_`` then ``argmax(w / q)``: the same index
    and generator state);
    (2) unless ``eval_mode``, ``eps ~ torch.randn([B, A])``. Returns
    ``clamp(elite_actions[b, 0, choice_b] + std[b, 0] * eps_b, -1, 1)`` (no noise
    term in eval mode).

    Args:
        elite_actions: ``[B, H, k, A]`` (or ``[H, k, A]``), best first as returned by
            :func:`mppi_elite_update`.
        elite_weights: ``[B, k]`` (or ``[k]``) finite, non-negative, with a positive sum per
            problem (not necessarily 1). Checked (RuntimeError) on the CPU and by the
            reference; the fused CUDA kernel does not check it (no host synchronisation):
            there an invalid row draws an unspecified index in ``[0, k)``.
        std: ``[B, H, A]`` (or ``[H, A]``); only ``std[:, 0]`` is used.
        eval_mode: no exploration noise (and no second draw).
        generator: the device's default generator when None.
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``[B, A]`` (or ``[A]``); never requires grad.
    """
    _check_impl(impl)
    batched = _check_layout("elite_actions", elite_actions, "[B, H, k, A]", "[H, k, A]")
    _check_tensor("elite_weights", elite_weights, elite_actions.dim() - 2, _layout(batched, "[B, k]"))
    _check_tensor("std", std, elite_actions.dim() - 1, _layout(batched, "[B, H, A]"))
    shape = tuple(elite_actions.shape) if batched else (None, *elite_actions.shape)
    B, H, k, A = shape
    if H < 1:
        raise ValueError(f"elite_actions needs a horizon H >= 1 (the first action is taken), got shape {shape}")
    if k < 1:
        raise ValueError(f"elite_actions needs at least one elite (k >= 1), got shape {tuple(elite_actions.shape)}")
    lead = (B,) if batched else ()
    if tuple(elite_weights.shape) != lead + (k,):
        raise ValueError(
            f"elite_weights has shape {tuple(elite_weights.shape)} but elite_actions {tuple(elite_actions.shape)} "
            f"needs {lead + (k,)}"
        )
    if tuple(std.shape) != lead + (H, A):
        raise ValueError(
            f"std has shape {tuple(std.shape)} but elite_actions {tuple(elite_actions.shape)} needs {lead + (H, A)}"
        )
    _check_match("elite_weights", elite_weights, "elite_actions", elite_actions)
    _check_match("std", std, "elite_actions", elite_actions)
    if not isinstance(eval_mode, bool):
        raise TypeError(f"eval_mode must be a bool, got {type(eval_mode).__name__}")
    _check_generator(generator, elite_actions)
    elite_actions, elite_weights, std = elite_actions.detach(), elite_weights.detach(), std.detach()
    if not batched:
        elite_actions, elite_weights, std = elite_actions.unsqueeze(0), elite_weights.unsqueeze(0), std.unsqueeze(0)
    if impl == "reference":
        out = reference.mppi_select(elite_actions, elite_weights, std, eval_mode, generator)
    else:
        if not FUSED_AVAILABLE:
            _lib.require()
        out = torch.ops.cdred_fast.mppi_select.default(elite_actions, elite_weights, std, eval_mode, generator)
    return out if batched else out.squeeze(0)


def _register_mppi_family() -> None:
    @torch.library.register_fake("cdred_fast::mppi_sample")
    def _(mean, std, num_samples, generator=None):
        torch._check(mean.dim() == 3)
        B, H, A = mean.shape
        return mean.new_empty((B, H, num_samples, A))

    @torch.library.register_fake("cdred_fast::mppi_elite_update")
    def _(values, actions, num_elites, temperature, min_std, max_std):
        torch._check(values.dim() == 2)
        torch._check(actions.dim() == 4)
        B, H, N, A = actions.shape
        k = num_elites
        return (
            actions.new_empty((B, H, A)),
            actions.new_empty((B, H, A)),
            actions.new_empty((B, H, k, A)),
            values.new_empty((B, k)),
            values.new_empty((B, k)),
        )

    @torch.library.register_fake("cdred_fast::mppi_select")
    def _(elite_actions, elite_weights, std, eval_mode, generator=None):
        torch._check(elite_actions.dim() == 4)
        return elite_actions.new_empty((elite_actions.shape[0], elite_actions.shape[3]))

    # No autograd registration here: the C++ library registers an Autograd
    # kernel that runs these ops below autograd (csrc/mppi/cpu.cpp).

if FUSED_AVAILABLE:
    _register_mppi_family()


# =============================================================================== RND ensemble forward (SPEC section 2)
# E MLPs of one architecture (TD-MPC2 Blocks Linear -> LayerNorm -> Mish for the
# hidden layers, a plain Linear last) from stacked parameters: the K random
# targets (E = K) and the two predictors stacked as an E = 2 ensemble.
# The CPU/CUDA kernels run the GEMMs through ATen and one fused epilogue
# (bias + LayerNorm + affine + Mish, in place) per hidden layer; see
# csrc/rnd/rnd_math.h for the schedule and the accuracy of the Mish.


def _is_tensor_seq(seq) -> bool:
    return isinstance(seq, (list, tuple)) and all(isinstance(t, Tensor) for t in seq)


def _check_rnd_tensor(name: str, t, ref: Tensor, shape: tuple, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has {ref.dtype}; they must match")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but x is on {ref.device}; they must match")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {list(shape)}, got shape {tuple(t.shape)}")


def _check_ensemble_mlp_inputs(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(
            "x must have shape [N, I] (2-D, rows shared by every member) or [E, N, I] (3-D, rows per member), "
            f"got shape {tuple(x.shape)}"
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
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
            raise ValueError(f"{name} must hold one tensor per hidden layer ({L - 1} = len(weights) - 1), got {len(seq)}")
    if not _is_number(ln_eps) or not math.isfinite(ln_eps) or ln_eps < 0:
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
            raise ValueError(f"{name} has E = {w.shape[0]} members but weights[0] has {E}; every layer must have the same E")
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
        raise ValueError(f"x has shape {tuple(x.shape)} (per-member rows [E, N, I]) but the weights have E = {E} members")


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

    Returns: ``[E, N, out]``. Differentiable w.r.t. ``x``, ``x_shared`` and every
    parameter tensor. When grad mode is on and an input requires grad (training
    the predictors), the fused path runs in its trainable form: ATen GEMMs with
    the bias and the fused ``layernorm_mish`` op per hidden layer, so the
    backward reuses the forward's activations and row statistics and runs one
    fused LayerNorm + Mish backward kernel per hidden layer. Otherwise (planning,
    the targets) one fused forward that keeps no activations. No dropout: the
    CDRED targets and predictors have none.
    """
    _check_impl(impl)
    _check_ensemble_mlp_inputs(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared)
    args = (list(weights), list(biases), list(ln_weights), list(ln_biases), float(ln_eps))
    if impl == "reference":
        return reference.ensemble_mlp(x, *args, x_shared)
    if not FUSED_AVAILABLE:
        _lib.require()  # raises with the reason
    if _needs_grad(x, x_shared, *[t for group in args[:4] for t in group]):
        return _ensemble_mlp_trainable(x, *args, x_shared)  # training: keep what the backward needs
    return torch.ops.cdred_fast.ensemble_mlp.default(x, *args, x_shared)


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


def _as_ensemble_params(name: str, params) -> tuple[list, list, list, list, float]:
    """``(weights, biases, ln_weights, ln_biases[, ln_eps])`` -> the five arguments of :func:`ensemble_mlp`."""
    if not isinstance(params, (list, tuple)) or len(params) not in (4, 5):
        raise TypeError(
            f"{name} must be a tuple (weights, biases, ln_weights, ln_biases[, ln_eps]) of stacked parameters, "
            f"got {type(params).__name__}" + (f" of length {len(params)}" if isinstance(params, (list, tuple)) else "")
        )
    ln_eps = params[4] if len(params) == 5 else 1e-5
    return list(params[0]), list(params[1]), list(params[2]), list(params[3]), ln_eps


def _is_params_tuple(p) -> bool:
    return isinstance(p, (list, tuple)) and len(p) in (4, 5) and isinstance(p[0], (list, tuple))


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
            parameters: no copy of the weights per call (``torch.stack`` of the
            SPEC-size predictors copies 23 MB per call).
        alpha, zeta, sigma, g, eps: as in :func:`cdred_reward`.
        x_shared: optional ``[I_s]`` shared first input features (see :func:`ensemble_mlp`).
        impl: ``"fused"`` or ``"reference"``.

    Returns: ``[N]`` reward per row.

    Fused path without gradients (planning): the predictors run through
    ``ensemble_mlp``; the targets through ``ensemble_reward``, which runs their
    hidden layers, then their last Linear and the reward on tiles of rows whose
    ``[K, rows, D]`` outputs stay in the CPU's L2 cache (512 KB; one tile on a
    GPU): the ``[K, N, D]`` target tensor is never materialised. Measured on the
    CPU this saves memory (2.6 MB per call at the SPEC sizes) but no time (15.9
    vs 15.9 ms, interleaved A/B): the last layer's weights are as large as its
    outputs at N = 512, so re-reading them per tile costs what the cached
    outputs save (``bench/RESULTS.md``).
    With gradients (or ``impl="reference"``): ``ensemble_mlp`` + ``cdred_reward``.
    """
    _check_impl(impl)
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a torch.Tensor of shape [N, I] (2-D), got {shape}")
    t_args = _as_ensemble_params("targets_params", targets_params)
    pair = (
        isinstance(predictors_params, (list, tuple))
        and len(predictors_params) == 2
        and all(_is_params_tuple(p) for p in predictors_params)
    )
    if pair:
        e_args = _as_ensemble_params("predictors_params[0]", predictors_params[0])
        b_args = _as_ensemble_params("predictors_params[1]", predictors_params[1])
        for name, a in (("predictors_params[0]", e_args), ("predictors_params[1]", b_args)):
            w0 = a[0][0] if a[0] else None
            if isinstance(w0, Tensor) and w0.dim() == 3 and w0.shape[0] != 1:
                raise ValueError(f"{name} must hold ONE predictor (E = 1), got E = {w0.shape[0]}")
        pred_expert = ensemble_mlp(x, *e_args, x_shared, impl=impl)[0]  # f_phi(x) [N, D]
        pred_behavioral = ensemble_mlp(x, *b_args, x_shared, impl=impl)[0]  # f_psi(x) [N, D]
    else:
        p_args = _as_ensemble_params("predictors_params", predictors_params)
        w0 = p_args[0][0] if p_args[0] else None
        if isinstance(w0, Tensor) and w0.dim() == 3 and w0.shape[0] != 2:
            raise ValueError(
                f"predictors_params must stack exactly 2 predictors (expert, behavioural), got E = {w0.shape[0]}"
            )
        preds = ensemble_mlp(x, *p_args, x_shared, impl=impl)  # [2, N, D]
        pred_expert, pred_behavioral = preds[0], preds[1]
    target_tensors = [t for group in t_args[:4] for t in group]
    if impl == "fused" and not _needs_grad(x, x_shared, pred_expert, pred_behavioral, *target_tensors):
        # planning: the targets' last layer and the reward per tile of rows, no [K, N, D] tensor
        _check_ensemble_mlp_inputs(x, *t_args, x_shared)
        _check_unit("alpha", alpha)
        _check_reward_args(zeta, sigma, g)
        _check_nonneg("eps", eps)
        return torch.ops.cdred_fast.ensemble_reward.default(
            x, *t_args, pred_expert, pred_behavioral, float(alpha), float(zeta), float(sigma), g, float(eps), x_shared
        )
    targets = ensemble_mlp(x, *t_args, x_shared, impl=impl)  # [K, N, D]
    return cdred_reward(pred_expert, pred_behavioral, targets, alpha, zeta, sigma, g, eps, impl=impl)


def _register_rnd_family() -> None:
    @torch.library.register_fake("cdred_fast::ensemble_mlp")
    def _(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared=None):
        torch._check(x.dim() == 2 or x.dim() == 3)
        torch._check(len(weights) >= 1)
        return x.new_empty((weights[0].shape[0], x.shape[-2], weights[-1].shape[1]))

    @torch.library.register_fake("cdred_fast::ensemble_reward")
    def _(x, weights, biases, ln_weights, ln_biases, ln_eps, pred_expert, pred_behavioral, alpha, zeta, sigma, g, eps,
          x_shared=None):
        torch._check(x.dim() == 2 or x.dim() == 3)
        return x.new_empty((x.shape[-2],))

    def _no_gradient(ctx, grad):
        raise RuntimeError(
            "cdred_fast::ensemble_reward is the no-grad planning reward; differentiate ops.rnd_reward instead "
            "(with inputs that require grad it runs ensemble_mlp + cdred_reward, which have gradients)"
        )

    torch.library.register_autograd("cdred_fast::ensemble_reward", _no_gradient)

    @torch.library.register_fake("cdred_fast::_rnd_mish")
    def _(x):
        return torch.empty_like(x)

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
        groups = [rest[: L], rest[L : 2 * L], rest[2 * L : 3 * L - 1], rest[3 * L - 1 :]]
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
    _register_rnd_family()


# =============================================================================== Block tail: LayerNorm -> Mish (SPEC section 0)
# The world model's Blocks (Linear -> [Dropout] -> LayerNorm -> Mish) and the
# predictors' hidden layers during training run their Linear through ATen and
# this op for the rest: one kernel forward, one kernel backward (no autograd
# graph of the five or so elementwise ops PyTorch's LayerNorm + Mish record).


def _check_layernorm_mish_inputs(x, gamma, beta, eps) -> tuple[int, int]:
    """Validates and returns ``(E, D)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (1, 2):
            raise ValueError(f"{name} must have shape [D] or [E, D] (per member), got shape {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; they must match")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; they must match")
    if gamma.shape != beta.shape:
        raise ValueError(f"gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)} must have the same shape")
    _check_nonneg("eps", eps)
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
    _check_impl(impl)
    E, D = _check_layernorm_mish_inputs(x, gamma, beta, eps)
    x3 = x.reshape(E, -1, D)
    g2, b2 = gamma.reshape(E, D), beta.reshape(E, D)
    if impl == "reference":
        y = reference.layernorm_mish(x3, g2, b2, float(eps))[0]
    else:
        if not FUSED_AVAILABLE:
            _lib.require()  # raises with the reason
        y = torch.ops.cdred_fast.layernorm_mish.default(x3, g2, b2, float(eps))[0]
    return y.reshape(x.shape)


def _register_block_family() -> None:
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
    _register_block_family()
