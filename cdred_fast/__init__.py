"""cdred_fast: CDRED world-model online imitation learning with fused C++/CUDA kernels.

Public API (everything else is an implementation detail):

* :class:`CDREDConfig` - every hyper-parameter of the method, validated.
* :class:`CDREDAgent` - world model + CDRED reward; ``act`` and ``update``.
* :class:`Trainer` - the online imitation loop (Algorithm 1) with logs and checkpoints.
* :func:`build_info` - what the installed extension was compiled with.
* :mod:`cdred_fast.ops` - fused ops with an ``impl="fused"|"reference"`` switch.
* :mod:`cdred_fast.reference` - the pure-PyTorch twin of every op.
* :mod:`cdred_fast.envs` - ``envs.make(task, obs, seed)`` and the task registry.
* :mod:`cdred_fast.data` - the demonstration file format.
"""

from . import ops, reference
from ._lib import build_info
from ._version import __version__
from .agent import CDREDAgent
from .config import CDREDConfig
from .tdmpc2_planner import Planner


def __getattr__(name):  # the trainer pulls in simulators and plotting: import it lazily
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'cdred_fast' has no attribute {name!r}")


__all__ = ["CDREDAgent", "CDREDConfig", "Planner", "Trainer", "build_info", "ops", "reference", "__version__"]
