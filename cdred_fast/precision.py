"""Reduced precision: the matrix products of ``CDREDConfig.matmul_precision`` as a context, the
dtype of the reward networks in planning (``CDREDConfig.planning_precision``), and bfloat16
matrix products in the update (``CDREDConfig.update_precision``, :func:`bf16_products`)."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ._lib import BF16_CPU_FLAGS, bf16_flags_of, cpu_native_bf16
from .config import MATMUL_PRECISIONS, PLANNING_PRECISIONS, UPDATE_BF16_PARTS, UPDATE_PRECISIONS
from .ops.rnd import _needs_grad

__all__ = [
    "matmul_precision",
    "resolve_matmul_precision",
    "acting_width",
    "matmul_precisions",
    "AUTO_ACT_MIN_WIDTH",
    "medium_matmul_error",
    "medium_is_float32_class",
    "FLOAT32_CLASS_BOUND",
    "planning_dtype",
    "update_dtype",
    "update_parts",
    "update_products",
    "describe",
    "bf16_products",
    "products_in",
    "cpu_native_bf16",
    "cuda_native_bf16",
    "bf16_flags_of",
    "BF16_CPU_FLAGS",
]


def cuda_native_bf16(device) -> bool:
    """Whether the CUDA ``device`` multiplies bfloat16 matrices natively (tensor cores of compute
    capability 8.0 and later: A100, H100, ...); False for any other device."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def _reduced_dtype(name: str, choices: tuple, precision: str, device, cuda: bool) -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``auto`` -> a dtype on ``device`` (see :func:`planning_dtype`);
    ``cuda``: whether the setting's bfloat16 form runs on CUDA devices too."""
    if precision not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "auto":
        native = bool(cpu_native_bf16()) if kind == "cpu" else cuda and cuda_native_bf16(device)
        return torch.bfloat16 if native else torch.float32
    reduced = precision.startswith("bfloat16")  # "bfloat16" or a part of the model in it
    if reduced and kind != "cpu" and not (cuda and kind == "cuda"):
        where = "on the CPU and CUDA" if cuda else "on the CPU only"
        raise ValueError(
            f"{name}={precision!r} runs {where}; the model is on {device} "
            "(use 'float32' or 'auto', or matmul_precision for reduced-precision products on CUDA)"
        )
    return torch.bfloat16 if reduced else torch.float32


def planning_dtype(precision: str, device) -> torch.dtype:
    """The dtype of the CDRED reward networks in planning for ``CDREDConfig.planning_precision``
    on ``device``: ``"auto"`` is bfloat16 on a CPU with native bf16 (:func:`cpu_native_bf16`) or
    a CUDA device with bf16 tensor cores (:func:`cuda_native_bf16`), float32 elsewhere;
    ``"bfloat16"`` on any other kind of device is an error."""
    return _reduced_dtype("planning_precision", PLANNING_PRECISIONS, precision, device, cuda=True)


def update_dtype(precision: str, device) -> torch.dtype:
    """The dtype of the update's matrix products for ``CDREDConfig.update_precision`` on
    ``device``: ``"auto"`` is bfloat16 on a CPU with native bf16, float32 elsewhere; ``"bfloat16"``
    (:func:`bf16_products`) and ``"bfloat16-q-rnd"`` (bfloat16 in the parts of :func:`update_parts`)
    run on the CPU only."""
    return _reduced_dtype("update_precision", UPDATE_PRECISIONS, precision, device, cuda=False)


def update_parts(precision: str) -> tuple[str, ...]:
    """The parts of the model whose products an update with ``CDREDConfig.update_precision``
    rounds to bfloat16 when only parts are (``"bfloat16-q-rnd"``: ``("q", "rnd")``, the Q
    ensemble and the CDRED reward networks; :meth:`WorldModel.products`); ``()`` for the
    settings that round every product or none (:func:`update_dtype` says which)."""
    return UPDATE_BF16_PARTS.get(precision, ())


def update_products(model, dtype: torch.dtype, parts: tuple[str, ...]):
    """The context of an update's products: :class:`bf16_products` around all of them (``dtype``
    bfloat16, no ``parts``), around those of ``parts`` of ``model`` only (the model's
    :meth:`~cdred_fast.world_model.WorldModel.bf16_parts`), or nothing (float32)."""
    if dtype == torch.bfloat16 and parts:
        return model.bf16_parts(parts)
    return products_in(dtype)


def describe(cfg, device) -> str:
    """One line on the precision a run of ``cfg`` on ``device`` computes in, its ``"auto"``
    settings resolved (the CLI prints it when a run starts): the CDRED reward networks in
    planning, the update's matrix products, ``matmul_precision``, and the device's native bf16."""
    planning = planning_dtype(cfg.planning_precision, device)
    update = update_dtype(cfg.update_precision, device)

    def part(what, dtype, setting):
        name = str(dtype).removeprefix("torch.")
        return f"{what} {name}" + (" (auto)" if setting == "auto" else "")

    parts = [part("update products", update, cfg.update_precision)]
    if update_parts(cfg.update_precision):
        parts[0] += " in the Q ensemble and reward networks, float32 elsewhere"
    if cfg.method == "cdred":  # the only method with reward networks in its plan
        parts.insert(0, part("planning reward networks", planning, cfg.planning_precision))
    if cfg.matmul_precision != "highest":
        acting, updating = matmul_precisions(cfg, device)
        resolved = acting if acting == updating else f"{acting} acting, {updating} in the update"
        parts.append(f"matmul_precision {resolved}" + (" (auto)" if cfg.matmul_precision == "auto" else ""))
    device = torch.device(device)
    if device.type == "cpu":
        where = f"; native bf16 on this CPU: {', '.join(cpu_native_bf16()) or 'none'}"
    elif device.type == "cuda" and torch.cuda.is_available():
        where = f"; bf16 tensor cores on this GPU: {'yes' if cuda_native_bf16(device) else 'no'}"
    else:
        where = ""
    return "precision: " + ", ".join(parts) + where


# ------------------------------------------------------------------ bfloat16 products
def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16)


def _is_f32_cpu(*tensors) -> bool:
    return all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def _linear(x, weight, bias=None):
    y = F.linear(_bf16(x), _bf16(weight)).float()
    return y if bias is None else y + bias


def _product(func: Callable) -> Callable:
    return lambda a, b: func(_bf16(a), _bf16(b)).float()


def _with_input(func: Callable) -> Callable:
    """``addmm`` / ``baddbmm`` with beta = alpha = 1: ``input + product``, the sum in float32."""
    return lambda input, a, b: input + func(_bf16(a), _bf16(b)).float()


def _ensemble_mlp(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared=None):
    """The fused no-gradient ensemble forward on rounded copies (the op's bfloat16 planning form)."""
    out = torch.ops.cdred_fast.ensemble_mlp.default(
        _bf16(x),
        [_bf16(w) for w in weights],
        [_bf16(b) for b in biases],
        [_bf16(w) for w in ln_weights],
        [_bf16(b) for b in ln_biases],
        ln_eps,
        None if x_shared is None else _bf16(x_shared),
    )
    return out.float()


class bf16_products(TorchFunctionMode):
    """Inside this context every float32 CPU matrix product of PyTorch (``F.linear``, ``matmul``,
    ``mm``, ``bmm``, ``addmm`` / ``baddbmm`` with unit scales, and the fused no-gradient
    ``cdred_fast::ensemble_mlp``) rounds its two operands to bfloat16, multiplies with float32
    accumulation (oneDNN) and returns float32; a bias or ``input`` term is added in float32.
    Autograd records the roundings, so the backward's products are bfloat16 products too, and
    every gradient arrives in float32. Everything else (biases, LayerNorm, Mish, softmax, the
    losses, reductions, the optimisers) is untouched, and so is any call with a non-float32 or
    non-CPU operand, an ``out=`` argument or other scales. Used by ``CDREDAgent.update`` with
    ``update_precision="bfloat16"``."""

    def __init__(self):
        super().__init__()
        # func -> (replacement, whether the call qualifies)
        two = lambda args, kwargs: not kwargs and len(args) == 2 and _is_f32_cpu(*args)
        three = lambda args, kwargs: not kwargs and len(args) == 3 and _is_f32_cpu(*args)
        self._handlers: dict = {
            F.linear: (_linear, _linear_qualifies),
            torch.matmul: (_product(torch.matmul), two),
            torch.Tensor.matmul: (_product(torch.matmul), two),
            torch.Tensor.__matmul__: (_product(torch.matmul), two),
            torch.mm: (_product(torch.mm), two),
            torch.Tensor.mm: (_product(torch.mm), two),
            torch.bmm: (_product(torch.bmm), two),
            torch.Tensor.bmm: (_product(torch.bmm), two),
            torch.addmm: (_with_input(torch.mm), three),
            torch.baddbmm: (_with_input(torch.bmm), three),
        }
        lib = getattr(torch.ops, "cdred_fast", None)
        if lib is not None and hasattr(lib, "ensemble_mlp"):
            self._handlers[lib.ensemble_mlp.default] = (_ensemble_mlp, _ensemble_mlp_qualifies)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = self._handlers.get(func)
        if handler is not None and handler[1](args, kwargs):
            return handler[0](*args, **kwargs)
        return func(*args, **kwargs)


def _linear_qualifies(args, kwargs) -> bool:
    if len(args) not in (2, 3) or kwargs.keys() - {"bias"}:
        return False
    bias = args[2] if len(args) == 3 else kwargs.get("bias")
    return _is_f32_cpu(args[0], args[1]) and (bias is None or _is_f32_cpu(bias))


def _ensemble_mlp_qualifies(args, kwargs) -> bool:
    """The no-gradient call ``(x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared)`` in float32."""
    if kwargs or len(args) != 7 or not _is_f32_cpu(args[0], *args[1]):
        return False
    tensors = [args[0], args[6], *args[1], *args[2], *args[3], *args[4]]
    return not _needs_grad(*tensors)


def products_in(dtype: torch.dtype):
    """A context for :func:`update_dtype`'s result: :class:`bf16_products` for bfloat16, nothing
    for float32."""
    return bf16_products() if dtype == torch.bfloat16 else contextlib.nullcontext()


# torch's float32 matmul precisions (CDREDConfig.matmul_precision adds "auto", resolved by
# resolve_matmul_precision for each phase of MATMUL_PHASES)
TORCH_MATMUL_PRECISIONS = ("highest", "high", "medium")
# the phases of an agent that resolve "auto" apart: acting (planning included) and the update
MATMUL_PHASES = ("act", "update")
# A 'medium' probe error (medium_matmul_error) at or below this is float32-class: float32
# products have errors of order 1e-6 on the probe, bfloat16-rounded operands of order 2**-9.
FLOAT32_CLASS_BOUND = 2.0**-12
# On a CPU where 'medium' rounds to bfloat16 (AMX), "auto" acts in 'medium' only for models whose
# widest acting layer (acting_width) is at least this wide: oneDNN's fixed cost per product
# outweighs its faster arithmetic below (bench/act_width_check.py on an Intel Xeon with AMX,
# bench/RESULTS.md: one plan 9-18 % slower at the main job's widths of 128, 0.89-1.17x at 256,
# 2.0-2.2x at SPEC's sizes).
AUTO_ACT_MIN_WIDTH = 256


def acting_width(cfg) -> int:
    """The widest hidden layer of the networks an agent of ``cfg`` acts with: ``mlp_dim``
    (dynamics, Q heads, policy, reward head), and for CDRED the reward networks' hidden widths
    (``rnd_target_hidden``, ``rnd_predictor_hidden``), which its plans run."""
    widths = [cfg.mlp_dim]
    if cfg.method == "cdred":
        widths += [*cfg.rnd_target_hidden, *cfg.rnd_predictor_hidden]
    return int(max(widths))


def medium_matmul_error(shapes=((64, 18, 256), (64, 256, 256), (64, 256, 16), (256, 512, 512))) -> tuple[float, float]:
    """Measured, not inferred from CPU flags: the largest relative error (max |error| / max
    |exact|) of float32 CPU products against float64, under the 'medium' and the 'highest' float32
    matmul precision: ``F.linear`` over a few ``(rows, in, out)`` shapes like the networks' and one
    batched product (``torch.bmm``, as the fused ensembles use). Returns ``(medium, highest)``.
    Under 'medium' oneDNN may round the operands to bfloat16 (Intel AMX: errors of order 2**-9)
    or keep float32 arithmetic in its own kernels (measured on AMD EPYC Zen 5: ~1e-6)."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for m, k, n in shapes:
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        cases.append((F.linear, (x, w, b)))
    cases.append((torch.bmm, (torch.randn(3, 64, 128, generator=g), torch.randn(3, 128, 96, generator=g))))
    worst = {"medium": 0.0, "highest": 0.0}
    with torch.no_grad():
        for fn, args in cases:
            exact = fn(*(a.double() for a in args))
            for precision in worst:
                with matmul_precision(precision):
                    got = fn(*args).double()
                err = ((got - exact).abs().max() / exact.abs().max()).item()
                worst[precision] = max(worst[precision], err)
    return worst["medium"], worst["highest"]


@functools.lru_cache(maxsize=None)
def medium_is_float32_class() -> bool:
    """Whether this CPU's 'medium' float32 products are float32-class (:func:`medium_matmul_error`
    at most :data:`FLOAT32_CLASS_BOUND`): measured once per process (a few milliseconds)."""
    return medium_matmul_error()[0] <= FLOAT32_CLASS_BOUND


def resolve_matmul_precision(precision: str, device, phase: str = "act", width: Optional[int] = None) -> str:
    """``CDREDConfig.matmul_precision`` on ``device`` for one phase of the agent (``"act"``:
    acting and planning; ``"update"``: the update) as a torch float32 matmul precision, for a
    model whose widest acting layer is ``width`` (:func:`acting_width`; None: SPEC's sizes).

    ``"auto"``:

    * ``"medium"`` in both phases on a CPU whose 'medium' products are float32-class
      (:func:`medium_is_float32_class`: oneDNN's float32 kernels, faster than MKL's on AMD CPUs);
    * on a CPU with AMX-BF16, where 'medium' is oneDNN's bfloat16 AMX products: ``"medium"`` for
      acting (trained agents' closed-loop evaluation unchanged within noise on three checkpoints)
      when ``width >=`` :data:`AUTO_ACT_MIN_WIDTH` (narrower models plan faster in IEEE float32),
      and ``"highest"`` for the update (a DMControl training curve was slower with bfloat16
      products: results/amx-medium-dmc/);
    * ``"highest"`` elsewhere (other CPUs where 'medium' rounds to bfloat16, which were not
      measured, and CUDA, where it would mean TF32 or bfloat16).

    Any other setting is returned as it is, for both phases and every width."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    if phase not in MATMUL_PHASES:
        raise ValueError(f"phase must be one of {MATMUL_PHASES}, got {phase!r}")
    if width is not None and int(width) < 1:
        raise ValueError(f"width must be a positive layer width, got {width!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type != "cpu":
        return "highest"
    if medium_is_float32_class():
        return "medium"
    wide = width is None or int(width) >= AUTO_ACT_MIN_WIDTH
    return "medium" if phase == "act" and wide and "amx_bf16" in cpu_native_bf16() else "highest"


def matmul_precisions(cfg, device) -> tuple[str, ...]:
    """``cfg.matmul_precision`` resolved on ``device`` for each phase of :data:`MATMUL_PHASES`
    (acting, update), for the model of ``cfg`` (:func:`acting_width`): what an agent of ``cfg``
    computes in."""
    width = acting_width(cfg)
    return tuple(resolve_matmul_precision(cfg.matmul_precision, device, phase, width) for phase in MATMUL_PHASES)


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Run a block with ``torch.set_float32_matmul_precision(precision)``, then restore the
    previous setting (see ``CDREDConfig.matmul_precision``; ``"auto"`` must be resolved first:
    :func:`resolve_matmul_precision`)."""
    if precision not in TORCH_MATMUL_PRECISIONS:
        raise ValueError(
            f"matmul_precision must be one of {TORCH_MATMUL_PRECISIONS}, got {precision!r}"
            + (" (resolve it first: precision.resolve_matmul_precision)" if precision == "auto" else "")
        )
    try:
        previous, backends = torch.get_float32_matmul_precision(), None
    except RuntimeError:  # the caller set torch's per-backend fp32_precision API, one backend differently
        previous = None
        backends = (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)
    if previous == precision:
        yield
        return
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        if previous is not None:
            torch.set_float32_matmul_precision(previous)
        else:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = backends
