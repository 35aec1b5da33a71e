"""Thin Python wrappers over the ``torch.ops.cdred_fast`` kernels, one module per csrc family.

* :mod:`.reward` - ``moment_bonus`` (SPEC Eq. 8), ``cdred_reward`` (Eq. 7);
* :mod:`.rnd` - ``ensemble_mlp`` (the targets and predictors of SPEC section 2) over
  :class:`EnsembleParams`, and ``rnd_reward``, the reward straight from the parameters;
* :mod:`.block` - ``layernorm_mish``, the Block tail of SPEC section 0;
* :mod:`.mppi` - ``mppi_sample``, ``mppi_elite_update``, ``mppi_select`` (SPEC section 4);
* :mod:`._dispatch` - the choice between the fused kernels and the reference:
  :func:`resolve_impl` (``kernels`` setting + device -> ``impl``), :data:`FUSED_DEVICE_TYPES`.

Every wrapper takes ``impl="fused"`` (the C++/CUDA kernel) or ``impl="reference"`` (the
pure-PyTorch twin in :mod:`cdred_fast.reference`). Arguments are validated here for both
paths, with errors that name the argument; the C++ kernels check the same things again with
``TORCH_CHECK`` so direct ``torch.ops`` calls are safe.

Each op also gets a fake (meta) implementation, so it traces under
``torch.compile(fullgraph=True)``, and an autograd formula: ``layernorm_mish`` has a backward
kernel of its own (``layernorm_mish_backward``); ``ensemble_mlp`` runs a trainable form built
on it when gradients are needed; the reward ops differentiate their reference on the saved
inputs; the MPPI ops are not differentiable (planning).
"""

from ..reference import DEFAULT_EPS, G_FUNCTIONS
from ._dispatch import (
    FUSED_AVAILABLE,
    FUSED_DEVICE_TYPES,
    IMPLS,
    fused_unavailable_reason,
    resolve_impl,
)
from .block import layernorm_mish
from .mppi import mppi_elite_update, mppi_sample, mppi_select
from .reward import cdred_reward, moment_bonus
from .rnd import EnsembleParams, ensemble_mlp, rnd_reward

__all__ = [
    "DEFAULT_EPS",
    "G_FUNCTIONS",
    "IMPLS",
    "FUSED_AVAILABLE",
    "FUSED_DEVICE_TYPES",
    "EnsembleParams",
    "cdred_reward",
    "ensemble_mlp",
    "fused_unavailable_reason",
    "layernorm_mish",
    "moment_bonus",
    "mppi_elite_update",
    "mppi_sample",
    "mppi_select",
    "resolve_impl",
    "rnd_reward",
]
