"""Device parametrisation for the benchmarks: the tests' (python_tests/testing_utils.py), plus
``sync``. A module of its own: ``conftest`` is not a unique module name when bench/ and
python_tests/ are collected in one run."""

import torch
from testing_utils import CUDA_SKIP_REASON, DEVICES, cuda_skip_reason  # noqa: F401  (re-exported)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_plan(benchmark, agent, obs_dim: int, device: str) -> torch.Tensor:
    """Time one plan of ``agent`` from an episode start (5 rounds after a warm-up) and return
    its action, checked to be ``[A]`` and finite."""
    obs = torch.randn(obs_dim)

    def plan():
        a = agent.act(obs, t0=True)
        sync(device)
        return a

    action = benchmark.pedantic(plan, rounds=5, warmup_rounds=1)
    assert action.shape == (agent.action_dim,) and torch.isfinite(action).all()
    return action
