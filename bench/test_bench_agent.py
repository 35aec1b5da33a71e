"""Agent-level benchmarks at the SPEC defaults (issue: fused kernels).

* one MPPI plan: H = 3, N = 512 (24 from the policy prior), k = 64, J = 6 (+2 for A >= 20),
  full-size model (latent 512, MLPs of 512, K = 5 targets of [512, 512] -> 256, two
  predictors of [1024, 1024, 1024] -> 256), for A = 6 and A = 38;
* one update at B = 256 sub-trajectories of H + 1 = 4 from each buffer.

`kernels="fused"` against `kernels="reference"` in the same run, and the fused agent in reduced
precision:
* "fused-bf16": the plan with the reward networks in bfloat16 (`planning_precision="bfloat16"`;
  its effect on what the agent does: bench/precision_outcome.py, bench/RESULTS.md), the update
  with its matrix products in bfloat16 (`update_precision="bfloat16"`, CPU only);
* "fused-medium": `matmul_precision="medium"` (oneDNN's products: float32 kernels on an AMD
  EPYC Zen 5, bfloat16 ones on an Intel AMX CPU; bf16-based products on CUDA).
* "fused-default": the agent of `CDREDConfig()`'s defaults, its "auto" settings resolved on this
  machine (tools/cpu_report.py says to what).
`fused` and the reference are IEEE float32 (`matmul_precision="highest"`). The benchmark
fixtures run a few rounds only (each plan is seconds on a 2-core CPU). `scripts/cpu_check.sh`
runs the CPU groups and writes this CPU kind's row of bench/RESULTS-cpu.md
(tools/cpu_report.py).
Run: pytest bench/test_bench_agent.py --benchmark-only
"""

import pytest
import torch
from bench_utils import DEVICES, sync, time_plan
from update_batch import update_batch

from cdred_fast import CDREDAgent, CDREDConfig

OBS_DIM = 39


IMPLS = ["fused-default", "fused", "fused-bf16", "fused-medium", "reference"]


def _agent(impl, action_dim, device, bf16_setting):
    """The agent of a variant; ``bf16_setting``: the config field that "fused-bf16" sets."""
    torch.manual_seed(0)
    if impl == "fused-default":  # CDREDConfig's own defaults: whatever "auto" resolves to on this machine
        return CDREDAgent(CDREDConfig(episode_length=500), OBS_DIM, action_dim, device=device)
    cfg = dict(kernels="reference" if impl == "reference" else "fused", episode_length=500)
    # IEEE float32 products unless the variant says otherwise (the default "auto" may pick
    # "medium": it is "fused-medium" on a CPU where auto resolves so, "fused" elsewhere)
    cfg["matmul_precision"] = "medium" if impl == "fused-medium" else "highest"
    if impl == "fused-bf16":
        cfg[bf16_setting] = "bfloat16"
    return CDREDAgent(CDREDConfig(**cfg), OBS_DIM, action_dim, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("action_dim", [6, 38])
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_plan(benchmark, impl, action_dim, device):
    agent = _agent(impl, action_dim, device, "planning_precision")
    benchmark.group = f"plan SPEC defaults A={action_dim} {device}"
    benchmark.extra_info["impl"] = impl
    time_plan(benchmark, agent, OBS_DIM, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_update(benchmark, impl, device):
    if impl == "fused-bf16" and device != "cpu":
        pytest.skip("update_precision='bfloat16' runs on the CPU only")
    agent = _agent(impl, 6, device, "update_precision")
    H, B = agent.cfg.horizon, agent.cfg.batch_size
    g = torch.Generator().manual_seed(1)
    behavioral, expert = (update_batch(H, B, OBS_DIM, 6, g) for _ in range(2))
    benchmark.group = f"update B={B} {device}"
    benchmark.extra_info["impl"] = impl

    def update():
        stats = agent.update(behavioral, expert)
        sync(device)
        return stats

    stats = benchmark.pedantic(update, rounds=5, warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
