"""MPPI family (csrc/mppi): sampling, the elite refit and the action draw of SPEC section 4.

Batched over a leading B of independent planning problems; the unbatched form
(no B axis anywhere) is accepted too and returns unbatched results.

Planning is no-grad: the wrappers detach their inputs, so the outputs never
require grad whatever the inputs do (a backward through them then fails with
"does not require grad" instead of producing a silently wrong gradient). Direct
torch.ops calls behave the same: the library's Autograd kernel for these ops
runs them below autograd, so their outputs never require grad either.

Random draws come only from ``generator`` (the device's default generator when
None), in the reference's shapes and order; with equal generator states the
fused and reference ops return the same samples. The CUDA ops never
synchronise with the host, so a plan can be recorded in a CUDA graph: the fused
mppi_select makes torch.multinomial(w, 1)'s own draw (exponential_, then
argmax(w / q)) but not its validation of w, which reads a reduction on the host.
The CPU kernel validates w itself; on CUDA an invalid row (NaN, negative, all
zero) is not reported and draws some index in [0, k).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_float, check_is_tensor, check_match, check_tensor, is_int, is_number
from ._dispatch import FUSED_AVAILABLE, check_impl, run


def _check_layout(name: str, t, batched_layout: str, unbatched_layout: str) -> bool:
    """Type-checks the first tensor of an op and returns whether it is batched."""
    check_is_tensor(name, t)
    nb = batched_layout.count(",") + 1
    if t.dim() not in (nb, nb - 1):
        raise ValueError(
            f"{name} must have shape {batched_layout} ({nb}-D) or {unbatched_layout} ({nb - 1}-D), "
            f"got shape {tuple(t.shape)}"
        )
    check_float(name, t)
    return t.dim() == nb


def _layout(batched: bool, layout: str) -> str:
    return layout if batched else "[" + layout[len("[B, ") :]


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
    if not is_number(temperature) or not (info.tiny <= float(temperature) <= info.max):
        raise ValueError(
            f"temperature must be finite and > 0, between {info.tiny:g} and {info.max:g} for {dtype}, "
            f"got {temperature!r}"
        )


def _check_std_bounds(min_std, max_std) -> None:
    if not is_number(min_std) or not math.isfinite(min_std) or min_std <= 0:
        raise ValueError(f"min_std must be a finite number > 0, got {min_std!r}")
    if not is_number(max_std) or not math.isfinite(max_std) or max_std < min_std:
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
    check_impl(impl)
    batched = _check_layout("mean", mean, "[B, H, A]", "[H, A]")
    check_tensor("std", std, mean.dim(), _layout(batched, "[B, H, A]"))
    if std.shape != mean.shape:
        raise ValueError(f"std has shape {tuple(std.shape)} but mean has shape {tuple(mean.shape)}; they must match")
    check_match("std", std, "mean", mean)
    if not is_int(num_samples) or num_samples < 0:
        raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
    _check_generator(generator, mean)
    return _run_planning(impl, "mppi_sample", batched, (mean, std), num_samples, generator)


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
    check_impl(impl)
    batched = _check_layout("values", values, "[B, N]", "[N]")
    check_tensor("actions", actions, values.dim() + 2, _layout(batched, "[B, H, N, A]"))
    n_axis = 2 if batched else 1
    if actions.shape[n_axis] != values.shape[-1] or (batched and actions.shape[0] != values.shape[0]):
        expected = f"[{values.shape[0]}, H, {values.shape[1]}, A]" if batched else f"[H, {values.shape[0]}, A]"
        raise ValueError(f"actions has shape {tuple(actions.shape)} but values {tuple(values.shape)} needs {expected}")
    check_match("actions", actions, "values", values)
    N = values.shape[-1]
    if not is_int(num_elites) or not (1 <= num_elites <= N):
        raise ValueError(f"num_elites must be an int in [1, N] = [1, {N}], got {num_elites!r}")
    _check_temperature(temperature, values.dtype)
    _check_std_bounds(min_std, max_std)
    args = (int(num_elites), float(temperature), float(min_std), float(max_std))
    return _run_planning(impl, "mppi_elite_update", batched, (values, actions), *args)


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
    check_impl(impl)
    batched = _check_layout("elite_actions", elite_actions, "[B, H, k, A]", "[H, k, A]")
    check_tensor("elite_weights", elite_weights, elite_actions.dim() - 2, _layout(batched, "[B, k]"))
    check_tensor("std", std, elite_actions.dim() - 1, _layout(batched, "[B, H, A]"))
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
    check_match("elite_weights", elite_weights, "elite_actions", elite_actions)
    check_match("std", std, "elite_actions", elite_actions)
    if not isinstance(eval_mode, bool):
        raise TypeError(f"eval_mode must be a bool, got {type(eval_mode).__name__}")
    _check_generator(generator, elite_actions)
    tensors = (elite_actions, elite_weights, std)
    return _run_planning(impl, "mppi_select", batched, tensors, eval_mode, generator)


def _run_planning(impl: str, name: str, batched: bool, tensors, *rest):
    """Op ``name`` on the detached ``tensors`` (given a leading B = 1 axis when unbatched) and
    ``rest``; the result loses that axis again."""
    tensors = [t.detach() if batched else t.detach().unsqueeze(0) for t in tensors]
    out = run(impl, name, *tensors, *rest)
    if isinstance(out, Tensor):
        return out if batched else out.squeeze(0)
    return tuple(out) if batched else tuple(t.squeeze(0) for t in out)


def _register() -> None:
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
    _register()
