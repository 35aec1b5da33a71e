"""A random update batch for the benchmarks and the bench/ scripts: a module with no test-suite
imports (``bench_utils`` imports python_tests' helpers), so that ``python bench/SCRIPT.py``
can use it as well as pytest."""

from __future__ import annotations

import torch


def update_batch(
    horizon: int, batch_size: int, obs_dim: int, action_dim: int, generator: torch.Generator, reward: bool = False
) -> dict:
    """One batch as ``CDREDAgent.update`` takes it, drawn from ``generator`` in this order:
    ``obs [H+1, B, obs_dim]`` standard normal, ``action [H, B, A]`` uniform in [-1, 1), and with
    ``reward`` an environment reward ``[H, B]``, standard normal (the methods that learn from it)."""
    out = {
        "obs": torch.randn(horizon + 1, batch_size, obs_dim, generator=generator),
        "action": torch.rand(horizon, batch_size, action_dim, generator=generator) * 2 - 1,
    }
    if reward:
        out["reward"] = torch.randn(horizon, batch_size, generator=generator)
    return out
