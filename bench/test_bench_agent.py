"""Agent-level benchmarks at the SPEC defaults (issue: fused kernels).

* one MPPI plan: H = 3, N = 512 (24 from the policy prior), k = 64, J = 6 (+2 for A >= 20),
  full-size model (latent 512, MLPs of 512, K = 5 targets of [512, 512] -> 256, two
  predictors of [1024, 1024, 1024] -> 256), for A = 6 and A = 38;
* one update at B = 256 sub-trajectories of H + 1 = 4 from each buffer.

`kernels="fused"` against `kernels="reference"` in the same run, and on the CPU the fused plan
with the reward networks in bfloat16 (`planning_precision="bfloat16"`, "fused-bf16"; its effect on
what the agent does: bench/precision_outcome.py, bench/RESULTS.md), and the fused update with its
matrix products in bfloat16 (`update_precision="bfloat16"`, "fused-bf16"). The benchmark fixtures
run a few rounds only (each plan is seconds on a 2-core CPU).
Run: pytest bench/test_bench_agent.py --benchmark-only
"""

import pytest
import torch
from bench_utils import DEVICES, sync, time_plan

from cdred_fast import CDREDAgent, CDREDConfig

OBS_DIM = 39


def _agent(kernels, action_dim, device, planning_precision="float32", update_precision="float32"):
    torch.manual_seed(0)
    cfg = CDREDConfig(
        kernels=kernels,
        episode_length=500,
        planning_precision=planning_precision,
        update_precision=update_precision,
    )
    return CDREDAgent(cfg, OBS_DIM, action_dim, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("action_dim", [6, 38])
@pytest.mark.parametrize("impl", ["fused", "fused-bf16", "reference"])
def test_bench_plan(benchmark, impl, action_dim, device):
    if impl == "fused-bf16" and device != "cpu":
        pytest.skip("planning_precision='bfloat16' runs on the CPU only")
    kernels, precision = ("fused", "bfloat16") if impl == "fused-bf16" else (impl, "float32")
    agent = _agent(kernels, action_dim, device, precision)
    benchmark.group = f"plan SPEC defaults A={action_dim} {device}"
    benchmark.extra_info["impl"] = impl
    time_plan(benchmark, agent, OBS_DIM, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "fused-bf16", "reference"])
def test_bench_update(benchmark, impl, device):
    if impl == "fused-bf16" and device != "cpu":
        pytest.skip("update_precision='bfloat16' runs on the CPU only")
    kernels, precision = ("fused", "bfloat16") if impl == "fused-bf16" else (impl, "float32")
    agent = _agent(kernels, 6, device, update_precision=precision)
    H, B = agent.cfg.horizon, agent.cfg.batch_size
    g = torch.Generator().manual_seed(1)
    batch = lambda: {
        "obs": torch.randn(H + 1, B, OBS_DIM, generator=g),
        "action": torch.rand(H, B, 6, generator=g) * 2 - 1,
    }
    behavioral, expert = batch(), batch()
    benchmark.group = f"update B={B} {device}"
    benchmark.extra_info["impl"] = impl

    def update():
        stats = agent.update(behavioral, expert)
        sync(device)
        return stats

    stats = benchmark.pedantic(update, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
