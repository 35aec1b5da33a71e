"""IQ-MPC agent benchmarks (SPEC section 6), `kernels="fused"` against "reference".

The search is SPEC's, the model moderate (these files also run once each as smoke tests):
latent 128, MLPs of 256, 5 scalar Q heads, A = 6.

* one MPPI plan with the soft return: H = 3, N = 512 (24 from the policy prior, whose returns are
  redrawn in every iteration), k = 64, J = 6. Per step and row the return evaluates the dynamics,
  the policy twice and four Q heads (two Q_min);
* one update at B = 128 sub-trajectories of H + 1 = 4 from each buffer (critic loss, clip over
  all parameters, policy loss), without and with the gradient penalty.

"fused" runs the Blocks' LayerNorm -> Mish and the MPPI ops through the extension; the gradient
penalty's double backward always runs the reference Blocks.
Run: pytest bench/test_bench_iqmpc.py --benchmark-only
"""

import pytest
import torch
from bench_utils import DEVICES, sync, time_plan
from update_batch import update_batch

from cdred_fast import CDREDAgent, CDREDConfig

OBS_DIM, ACT = 39, 6
MODEL = dict(latent_dim=128, enc_dim=128, mlp_dim=256, batch_size=128)


def _agent(kernels, device, **over):
    torch.manual_seed(0)
    cfg = CDREDConfig(method="iqmpc", kernels=kernels, episode_length=500, **MODEL, **over)
    return CDREDAgent(cfg, OBS_DIM, ACT, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_iqmpc_plan(benchmark, impl, device):
    agent = _agent(impl, device)
    benchmark.group = f"iqmpc plan N=512 J=6 L=128 A={ACT} {device}"
    benchmark.extra_info["impl"] = impl
    time_plan(benchmark, agent, OBS_DIM, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_pen", [False, True])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bench_iqmpc_update(benchmark, impl, grad_pen, device):
    agent = _agent(impl, device, grad_pen=grad_pen)
    H, B = agent.cfg.horizon, agent.cfg.batch_size
    g = torch.Generator().manual_seed(1)
    behavioral, expert = (update_batch(H, B, OBS_DIM, ACT, g) for _ in range(2))
    benchmark.group = f"iqmpc update B={B}{' grad_pen' if grad_pen else ''} {device}"
    benchmark.extra_info["impl"] = impl

    def update():
        stats = agent.update(behavioral, expert)
        sync(device)
        return stats

    stats = benchmark.pedantic(update, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
