"""The plan under torch.compile and the fused plan through the drop-in Planner: the CPU side of
the GPU plan benchmark (bench/test_bench_plan_gpu.py), which needs a CUDA device to run.

* The reference plan (``mppi_plan`` with ``impl="reference"``: policy roll-out, J iterations of
  sampling, value roll-out and elite update, the final draw) traces as ONE graph
  (``fullgraph=True``: no graph break, not on the default generator, the ``randperm`` of the Q
  heads, ``multinomial`` or the top-k) and, run from the same global-RNG state, gives the eager
  plan's action and mean. Backend ``aot_eager`` (Dynamo + AOTAutograd, no code generation) keeps
  this test at a few seconds; the Inductor build of the same function (what
  ``mode="reduce-overhead"`` runs) is checked by the CPU smoke variant of the benchmark, which
  takes ~30-80 s to compile on 2 cores.
* ``Planner.from_agent`` around the CDRED agent (the benchmark's ``capture_graph=True`` variant)
  plans exactly like the agent.
"""

import pytest
import torch
from testing_utils import TINY
from torch._dynamo.testing import CompileCounterWithBackend

from cdred_fast import Planner
from cdred_fast.agent import CDREDAgent
from cdred_fast.config import CDREDConfig
from cdred_fast.planner import mppi_plan

OBS, ACT = 6, 2


def _agent(kernels: str) -> CDREDAgent:
    torch.manual_seed(0)
    agent = CDREDAgent(CDREDConfig(kernels=kernels, episode_length=100, **TINY), OBS, ACT)
    with torch.no_grad():  # give the zero-initialised last Q layer some structure
        for p in agent.model.Qs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return agent


def reference_plan_fn(agent: CDREDAgent):
    """The agent's plan as a function of tensors, ``(z [1, L], mean [1, H, A]) -> (action, mean)``:
    ``agent.plan(z, t0=True)`` with the default generator, minus the Python bookkeeping."""
    planner, model = agent.planner, agent.model
    assert not model.training  # eval mode (no Q dropout), as inside agent.plan
    fns, settings, discount, impl = agent.rollout_functions(None), planner.settings, planner.discount, planner.impl

    def plan(z, mean):
        return mppi_plan(fns, z, mean, settings, discount=discount, generator=None, impl=impl)

    return plan


def test_compiled_reference_plan_is_one_graph_and_matches_eager():
    torch._dynamo.reset()
    agent = _agent("reference")
    plan = reference_plan_fn(agent)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(plan, backend=counter, fullgraph=True)
    with torch.no_grad():
        z = agent.model.encode(torch.randn(1, OBS))
    mean = agent.planner.initial_mean(True)
    try:
        for seed in (5, 6):
            torch.manual_seed(seed)
            a_eager, m_eager = plan(z, mean)
            torch.manual_seed(seed)
            a_comp, m_comp = compiled(z, mean)
            torch.testing.assert_close(a_comp, a_eager, rtol=0, atol=1e-6)
            torch.testing.assert_close(m_comp, m_eager, rtol=0, atol=1e-6)
            # the same action as the agent's own planner from the same draws
            torch.manual_seed(seed)
            torch.testing.assert_close(agent.plan(z, t0=True), a_eager[0], rtol=0, atol=0)
        assert counter.frame_count == 1  # one graph, compiled once, reused for the second plan
        assert counter.op_count > 100
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("kernels", ["fused", "reference"])
def test_drop_in_planner_around_the_agent_model_plans_like_the_agent(kernels):
    agent = _agent(kernels)
    planner = Planner.from_agent(agent)
    with torch.no_grad():
        z = agent.model.encode(torch.randn(1, OBS))
    for step, seed in enumerate((3, 4, 5)):  # from t0, then warm-started from the previous mean
        torch.manual_seed(seed)
        a_agent = agent.plan(z, t0=step == 0)
        torch.manual_seed(seed)
        a_drop_in = planner.plan(z, t0=step == 0)
        torch.testing.assert_close(a_drop_in, a_agent.unsqueeze(0), rtol=0, atol=0)
        torch.testing.assert_close(planner.prev_mean, agent.planner.prev_mean, rtol=0, atol=0)
