"""cdred_fast: CDRED world-model online imitation learning with fused C++/CUDA kernels.

Public API (everything else is an implementation detail):

* :func:`build_info` - what the installed extension was compiled with.
* :mod:`cdred_fast.ops` - fused ops with an ``impl="fused"|"reference"`` switch.
* :mod:`cdred_fast.reference` - the pure-PyTorch twin of every op.
"""

from . import ops, reference
from ._lib import build_info

__version__ = "0.1.0"

__all__ = ["build_info", "ops", "reference", "__version__"]
