"""Network building blocks (SPEC.md sections 0 and 1), TD-MPC2 style.

* :class:`NormedLinear` - the "Block" ``Linear -> [Dropout] -> LayerNorm -> act`` (act = Mish by default).
* :func:`mlp` - ``MLP(i -> [h1, h2, ...] -> o)``: Blocks for the hidden sizes, a last plain
  ``Linear`` unless a last activation (e.g. :class:`SimNorm`) is given, in which case the last
  layer is a Block with that activation.
* :class:`SimNorm` - split into groups of ``dim`` (8) and softmax each group.
* :func:`trunc_normal_init_`, :func:`target_init_` - the two initialisations of SPEC section 1.
* :func:`symlog`, :func:`symexp`, :func:`two_hot`, :func:`two_hot_inv`, :func:`soft_ce` -
  distributional regression over ``num_bins`` bins in symlog space.
* :class:`Ensemble` - ``E`` MLPs of identical shape evaluated together with stacked weights and a
  batched matmul (the 5 Q heads, the K CDRED targets).
* :func:`use_kernels` - run the Mish Blocks of a module through the fused
  :func:`cdred_fast.ops.layernorm_mish` (the world model does, unless ``kernels="reference"``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops


# --------------------------------------------------------------------------- blocks
class SimNorm(nn.Module):
    """Simplicial normalisation: view the last dim as groups of ``dim`` and softmax each group."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(*shape[:-1], shape[-1] // self.dim, self.dim)
        # softmax over each group, written out (cheaper than F.softmax over rows this short on
        # CPU). The max is a constant shift (softmax is shift-invariant), so it is detached: the
        # gradient is exact and skips the max's backward.
        e = torch.exp(x - x.amax(dim=-1, keepdim=True).detach())
        return (e / e.sum(dim=-1, keepdim=True)).reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class NormedLinear(nn.Linear):
    """The SPEC "Block": ``Linear -> [Dropout] -> LayerNorm -> act`` (act defaults to Mish)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, act: Optional[nn.Module] = None):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else nn.Mish()
        self.dropout = nn.Dropout(dropout) if dropout else None

    # "reference": PyTorch's LayerNorm and Mish; "fused": ops.layernorm_mish (see use_kernels).
    kernels: str = "reference"

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = block_dropout(x, self.dropout.p, self.training, self.kernels)
        if _fused_block(self.kernels, self.act, x, self.ln.weight):
            return ops.layernorm_mish(x, self.ln.weight, self.ln.bias, self.ln.eps)
        return self.act(self.ln(x))


def _fused_block(kernels: str, act: Optional[nn.Module], x: Tensor, ln_weight: Tensor) -> bool:
    """Whether a Block's LayerNorm -> act tail runs as the fused ``layernorm_mish`` op (otherwise
    PyTorch's; :func:`use_kernels` warns once when "fused" cannot be honoured). The device check
    reads the module constant ``ops.FUSED_DEVICE_TYPES``, so it traces under torch.compile."""
    return (
        kernels == "fused"
        and type(act) is nn.Mish
        and x.device.type in ops.FUSED_DEVICE_TYPES
        and x.dtype in (torch.float32, torch.float64)
        and ln_weight.dtype == x.dtype
    )


# --------------------------------------------------------------------------- dropout
# Largest rate at which the fused Blocks draw their dropout mask sparsely (below): the draw
# costs ~numel * p geometric samples, against numel Bernoulli ones, so it pays only for small p
# (the Q heads' 0.01).
SPARSE_DROPOUT_MAX_P = 0.1


def dropout_positions(numel: int, p: float) -> Tensor:
    """The flat indices, ascending, of the elements a dropout of rate ``p`` zeroes among ``numel``.

    Each element is dropped independently with probability ``p``, as by ``bernoulli_``, but
    drawn as the successes of that Bernoulli sequence: the gaps between successive dropped
    positions are i.i.d. ``Geometric(p)`` on {1, 2, ...}, so the positions are the running
    sums of geometric draws, minus one. That is ~``numel * p`` draws from torch's global
    generator (``geometric_``) instead of ``numel``. Returns a CPU LongTensor.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout_positions: p must lie in (0, 1), got {p}")
    mean = numel * p
    # enough gaps to pass numel with overwhelming probability; more are drawn if not
    chunk = int(mean + 6.0 * (mean * (1.0 - p)) ** 0.5 + 16)
    ends, last = [torch.zeros(0, dtype=torch.float64)], 0.0
    while last < numel:
        gaps = torch.empty(chunk, dtype=torch.float64).geometric_(p)  # exact integers in float64
        ends.append(gaps.cumsum_(0).add_(last))
        last = float(ends[-1][-1])
    positions = torch.cat(ends).sub_(1.0)
    return positions[positions < numel].long()


class _SparseDropout(torch.autograd.Function):
    """``x / (1 - p)`` with the elements at flat ``positions`` zeroed; the backward applies the
    same mask and scale to the gradient. Output and gradient are contiguous."""

    @staticmethod
    def forward(ctx, x: Tensor, positions: Tensor, scale: float) -> Tensor:
        out = (x * scale).contiguous()
        out.view(-1).index_fill_(0, positions, 0.0)
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (positions,) = ctx.saved_tensors
        g = (grad * ctx.scale).contiguous()
        g.view(-1).index_fill_(0, positions, 0.0)
        return g, None, None


def _sparse_dropout(p: float, training: bool, kernels: str, x: Tensor) -> bool:
    """Whether a Block's dropout of rate ``p`` on ``x`` draws its mask sparsely (see
    :func:`block_dropout`)."""
    return (
        training
        and kernels == "fused"
        and 0.0 < p <= SPARSE_DROPOUT_MAX_P
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
    )


def block_dropout(x: Tensor, p: float, training: bool, kernels: str) -> Tensor:
    """The dropout of a Block: ``F.dropout(x, p, training)`` in distribution.

    With ``kernels="fused"`` on the CPU, in training, for ``0 < p <= SPARSE_DROPOUT_MAX_P``
    (outside torch.compile) the mask is drawn sparsely (:func:`dropout_positions`): each element
    is still zeroed independently with probability ``p`` and the others scaled by ``1/(1-p)``,
    at a fraction of the cost of ``bernoulli_`` over every element (the Q heads' dropout was
    ~7 % of a SPEC-size update on CPU). The draws come from the same global generator, but they
    are other draws: the masks differ from ``F.dropout``'s for the same seed.
    """
    if _sparse_dropout(p, training, kernels, x):
        return _SparseDropout.apply(x, dropout_positions(x.numel(), p), 1.0 / (1.0 - p))
    return F.dropout(x, p, training)


def use_kernels(module: nn.Module, kernels: str) -> nn.Module:
    """Set the ``kernels`` choice ("fused" or "reference") of every Block in ``module``.

    With "fused" (and the extension built for the tensors' device), the Blocks whose activation
    is Mish run ``LayerNorm -> Mish`` as the fused op :func:`cdred_fast.ops.layernorm_mish`
    (forward and backward), and a dropout of small rate draws its mask sparsely on the CPU
    (:func:`block_dropout`); the Linear stays PyTorch's. Returns ``module``.
    """
    ops.resolve_impl(kernels)  # validates; warns once if the extension is not built
    for m in module.modules():
        if isinstance(m, (NormedLinear, _StackedLayer)):
            m.kernels = kernels
    return module


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    last_act: Optional[nn.Module] = None,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``MLP(in_dim -> hidden -> out_dim)`` of SPEC section 0.

    Blocks for the hidden sizes (``dropout`` only in the first one), then a plain
    ``Linear``, or a Block with activation ``last_act`` when one is given.
    """
    dims = [int(in_dim), *[int(h) for h in hidden], int(out_dim)]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 2):
        layers.append(NormedLinear(dims[i], dims[i + 1], dropout=dropout if i == 0 else 0.0))
    if last_act is not None:
        layers.append(NormedLinear(dims[-2], dims[-1], act=last_act))
    else:
        layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- initialisation
def trunc_normal_init_(module: nn.Module) -> nn.Module:
    """Released TD-MPC2 init: every Linear weight truncated normal (std 0.02), bias 0.

    LayerNorm keeps PyTorch's default (weight 1, bias 0). Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def target_init_(net: nn.Sequential) -> nn.Sequential:
    """CDRED random-target init (SPEC section 1): hidden Linears orthogonal (gain 1) with zero bias;
    the last Linear keeps PyTorch's default uniform(+-1/sqrt(fan_in)) for weight and bias."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        nn.init.orthogonal_(m.weight, gain=1.0)
        nn.init.zeros_(m.bias)
    linears[-1].reset_parameters()
    return net


# --------------------------------------------------------------------------- symlog / two-hot
def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """Inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``."""
    return torch.sign(x) * torch.expm1(x.abs())


def bin_centers(num_bins: int, vmin: float, vmax: float, device=None, dtype=None) -> Tensor:
    """The ``num_bins`` equally spaced bin centres spanning ``[vmin, vmax]`` (symlog space)."""
    return torch.linspace(vmin, vmax, num_bins, device=device, dtype=dtype)


def two_hot(x: Tensor, num_bins: int, vmin: float, vmax: float) -> Tensor:
    """Two-hot encoding of SPEC section 1: ``[...] -> [..., num_bins]``.

    ``symlog(x)`` clamped to ``[vmin, vmax]`` is split linearly between its two
    neighbouring bins, so ``sum(out * bins) == clamp(symlog(x))``.
    """
    bin_size = (vmax - vmin) / (num_bins - 1)
    pos = (symlog(x).clamp(vmin, vmax) - vmin) / bin_size  # in [0, num_bins - 1]
    lower = pos.floor().clamp(0, num_bins - 2)  # left neighbour; the top value uses bins (n-2, n-1)
    frac = (pos - lower).unsqueeze(-1)  # weight of the right neighbour, in [0, 1]
    lower = lower.long().unsqueeze(-1)
    out = torch.zeros(*x.shape, num_bins, device=x.device, dtype=x.dtype)
    out.scatter_(-1, lower, 1.0 - frac)
    out.scatter_(-1, lower + 1, frac)
    return out


def two_hot_inv(logits: Tensor, vmin: float, vmax: float) -> Tensor:
    """Scalar of a distributional head: ``symexp(sum softmax(logits) * bins)``; ``[..., n] -> [...]``."""
    bins = bin_centers(logits.shape[-1], vmin, vmax, device=logits.device, dtype=logits.dtype)
    return symexp((F.softmax(logits, dim=-1) * bins).sum(dim=-1))


def soft_ce(logits: Tensor, target: Tensor, vmin: float, vmax: float) -> Tensor:
    """Cross-entropy of ``logits [..., n]`` against ``two_hot(target [...])``; returns ``[...]``."""
    target_dist = two_hot(target, logits.shape[-1], vmin, vmax)
    return -(target_dist * F.log_softmax(logits, dim=-1)).sum(dim=-1)


# --------------------------------------------------------------------------- ensemble
def _stacked_linear(x: Tensor, w: Tensor, b: Tensor, fused: bool) -> Tensor:
    """The Linears of ``E`` members: ``x @ w[e].T + b[e]`` for every ``e``, ``[E, N, out]``.

    ``x`` is ``[E, N, in]`` or ``[N, in]`` (one input for every member); ``w [E, out, in]``,
    ``b [E, out]``. The reference path (``fused`` False) broadcasts with ``torch.matmul``. With one
    shared input, that product is computed as ``(w x^T)^T``: its result is the element-wise
    transpose of ``[E, N, out]``, and its backward copies a transposed gradient (~9 ms of a
    SPEC-size update on a 2-core CPU). The fused path computes it as one ``[N, in] x [in, E * out]``
    product with the bias added in the GEMM (``addmm``), whose ``[N, E * out]`` result is read as
    ``[E, N, out]`` through a view that keeps rows of ``out`` contiguous.
    """
    if fused and x.dim() == 2:
        E, out = w.shape[0], w.shape[1]
        h = torch.addmm(b.reshape(E * out), x, w.reshape(E * out, w.shape[2]).t())
        return h.view(x.shape[0], E, out).transpose(0, 1)
    return torch.matmul(x, w.transpose(1, 2)) + b.unsqueeze(1)  # batched matmul over members


class _SharedDropoutBlockTail(torch.autograd.Function):
    """Dropout -> LayerNorm -> Mish of the ``E`` Blocks of a stacked layer whose members share
    their input, in training with a sparse dropout mask (fused kernels, CPU): the Q heads' first
    layer in the value and policy losses.

    ``h [E, N, D]``: the members' Linear outputs (:func:`_stacked_linear`'s row-keeping view of
    one product), already scaled by dropout's ``1 / (1 - p)`` (folded into ``w`` and ``b``);
    ``positions``: the flat indices into ``[E, N, D]`` that the dropout zeroes
    (:func:`dropout_positions`); ``gamma, beta [E, D]``. Returns
    ``layernorm_mish(h with those elements zeroed)``, ``[E, N, D]``, the value of
    ``block_dropout`` then ``ops.layernorm_mish`` up to rounding.

    What it saves over those two steps: the passes over the activations that scale and mask
    them, forward and backward; the copy of ``h`` into contiguous ``[E, N, D]`` is made once,
    here, and the mask applied in place to it and to the gradient the backward kernel returns.
    No matrix products (so ``update_precision="bfloat16"``'s context still sees every product
    of the layer).
    """

    @staticmethod
    def forward(ctx, h: Tensor, positions: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
        # rows copied whole; always a copy (for E = 1 the view is contiguous already, and the
        # mask below must not write into h)
        x = h.clone(memory_format=torch.contiguous_format)
        x.view(-1).index_fill_(0, positions, 0.0)
        y, mean, rstd = torch.ops.cdred_fast.layernorm_mish.default(x, gamma, beta, float(eps))
        ctx.save_for_backward(x, mean, rstd, gamma, beta, positions)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, mean, rstd, gamma, beta, positions = ctx.saved_tensors
        gx, gg, gb = torch.ops.cdred_fast.layernorm_mish_backward.default(
            grad_y.contiguous(), x, mean, rstd, gamma, beta
        )
        gx.view(-1).index_fill_(0, positions, 0.0)
        return gx, None, gg, gb, None


class _StackedLayer(nn.Module):
    """One layer of :class:`Ensemble`: ``E`` Linears (optionally Blocks) with stacked weights.

    ``weight [E, out, in]``, ``bias [E, out]`` (nn.Linear layout per member); for a Block also the
    LayerNorm affine ``ln_weight/ln_bias [E, out]``, the dropout rate and the activation.
    """

    def __init__(self, members: Sequence[nn.Linear]):
        super().__init__()
        first = members[0]
        self.weight = nn.Parameter(torch.stack([m.weight.detach().clone() for m in members]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach().clone() for m in members]))
        self.normed = isinstance(first, NormedLinear)
        self.kernels = first.kernels if self.normed else "reference"  # see use_kernels
        self.dropout_p = 0.0
        self.act: Optional[nn.Module] = None
        if self.normed:
            self.ln_weight = nn.Parameter(torch.stack([m.ln.weight.detach().clone() for m in members]))
            self.ln_bias = nn.Parameter(torch.stack([m.ln.bias.detach().clone() for m in members]))
            self.ln_eps = first.ln.eps
            self.dropout_p = first.dropout.p if first.dropout is not None else 0.0
            self.act = first.act

    def forward(self, x: Tensor, index: Optional[Tensor] = None) -> Tensor:
        # x: [N, in] (shared by all members) or [E', N, in]; returns [E', N, out].
        w, b = (self.weight, self.bias) if index is None else (self.weight[index], self.bias[index])
        fused = self.kernels == "fused"
        if not self.normed:
            return _stacked_linear(x, w, b, fused)
        g, beta = (self.ln_weight, self.ln_bias) if index is None else (self.ln_weight[index], self.ln_bias[index])
        p = self.dropout_p
        if (
            x.dim() == 2
            and p
            and _sparse_dropout(p, self.training, self.kernels, x)
            and _fused_block(self.kernels, self.act, x, g)
        ):
            # the Q heads' first layer in training: dropout's 1 / (1 - p) folded into the
            # product, then mask and LayerNorm -> Mish in one step (_SharedDropoutBlockTail)
            s = 1.0 / (1.0 - p)
            h = _stacked_linear(x, w * s, b * s, fused)
            return _SharedDropoutBlockTail.apply(h, dropout_positions(h.numel(), p), g, beta, self.ln_eps)
        h = _stacked_linear(x, w, b, fused)
        if p:
            h = block_dropout(h, p, self.training, self.kernels)
        if _fused_block(self.kernels, self.act, h, g):
            return ops.layernorm_mish(h, g, beta, self.ln_eps)  # one affine per member
        h = F.layer_norm(h, h.shape[-1:], eps=self.ln_eps) * g.unsqueeze(1) + beta.unsqueeze(1)
        return self.act(h)


class Ensemble(nn.Module):
    """``E`` MLPs of identical structure (built by :func:`mlp`) evaluated as one vectorised net.

    The members' parameters are copied into stacked ``nn.Parameter`` tensors at construction,
    so initialise the members first. ``forward(x [..., in]) -> [E, ..., out]``; with
    ``index`` (a LongTensor of member ids) only those members are evaluated.
    """

    def __init__(self, members: Sequence[nn.Sequential]):
        super().__init__()
        if len(members) < 1:
            raise ValueError("Ensemble needs at least one member")
        depth = len(members[0])
        self.layers = nn.ModuleList()
        for i in range(depth):
            layer_i = [m[i] for m in members]
            if any(type(l) is not type(layer_i[0]) or l.weight.shape != layer_i[0].weight.shape for l in layer_i):
                raise ValueError(f"Ensemble members differ at layer {i}")
            self.layers.append(_StackedLayer(layer_i))
        self.size = len(members)
        self.in_dim = members[0][0].in_features
        self.out_dim = members[0][-1].out_features

    def forward(self, x: Tensor, index: Optional[Tensor] = None) -> Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for layer in self.layers:
            h = layer(h, index)
        return h.reshape(h.shape[0], *lead, h.shape[-1])

    def member(self, k: int) -> nn.Sequential:
        """A standalone ``nn.Sequential`` copy of member ``k`` (for inspection and tests)."""
        layers: list[nn.Module] = []
        for layer in self.layers:
            out_f, in_f = layer.weight.shape[1:]
            if layer.normed:
                m = NormedLinear(in_f, out_f, dropout=layer.dropout_p, act=layer.act)
                m.kernels = layer.kernels
                m.ln.weight.data.copy_(layer.ln_weight[k])
                m.ln.bias.data.copy_(layer.ln_bias[k])
            else:
                m = nn.Linear(in_f, out_f)
            m.weight.data.copy_(layer.weight[k])
            m.bias.data.copy_(layer.bias[k])
            layers.append(m)
        ref = self.layers[0].weight
        return nn.Sequential(*layers).to(device=ref.device, dtype=ref.dtype)


__all__ = [
    "SimNorm",
    "NormedLinear",
    "mlp",
    "trunc_normal_init_",
    "target_init_",
    "symlog",
    "symexp",
    "bin_centers",
    "two_hot",
    "two_hot_inv",
    "soft_ce",
    "Ensemble",
    "use_kernels",
    "block_dropout",
    "dropout_positions",
]
