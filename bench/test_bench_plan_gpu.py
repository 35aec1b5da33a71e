"""The issue's GPU plan targets (fused kernels): one plan <= 1 ms on an H100 at the SPEC
defaults, >= 20x the reference path in eager mode, >= 3x the reference path under
``torch.compile(mode="reduce-overhead")``.

One group per action dimension, the same plan in four variants: the agent's plan from a
latent ``z [1, L]`` on the GPU to the action, from the episode start (mean 0), with the default
CUDA generator (as ``agent.act(obs, t0=True)`` without a generator, minus the encoder and the
copy of the action to the host), each timed to a synchronised result.

* ``fused``: ``agent.plan``, ``kernels="fused"``, eager.
* ``reference``: the same with ``kernels="reference"`` (pure-PyTorch ops), eager.
* ``reference-compiled``: the reference plan compiled whole with
  ``torch.compile(mode="reduce-overhead", fullgraph=True)``: ``mppi_plan`` with
  ``impl="reference"`` (policy roll-out, J iterations of sampling + value roll-out + elite
  update, the final draw). It traces as one graph with the default generator (checked on CPU
  by python_tests/test_plan_compile.py); with an explicit ``torch.Generator`` Dynamo breaks the
  graph at every draw (``randn`` of the policy noise, ``randperm`` of the Q heads, the sampling
  ``randn``, ``multinomial``: 26 graphs at TINY sizes), so the benchmark, like TD-MPC2's
  planner, uses the default generator. Inductor draws its own random numbers
  (``fallback_random=False``, its fastest setting), so the compiled plan is not bitwise the
  eager one; the CPU smoke test below compiles with ``fallback_random=True`` and checks that
  it is. Compilation and the CUDA-graph recording happen before the timing.
* ``fused-graph``: the fused plan replayed from a CUDA graph: ``Planner.from_agent(agent,
  capture_graph=True)`` (python_tests/test_plan_compile.py checks on CPU that this wrapper
  plans exactly like the agent). Captured before the timing.

* ``fused-graph-tf32``: ``fused-graph`` with ``matmul_precision="high"`` (TF32 tensor-core
  products for every float32 matrix product of the plan).
* ``fused-graph-bf16``: ``fused-graph-tf32`` with ``planning_precision="bfloat16"`` (the CDRED
  reward networks, ~85 % of a plan's multiply-adds, in bfloat16; the rest in TF32).

The first four run in IEEE float32 (the default ``matmul_precision="auto"`` is ``"highest"`` on
CUDA). A plan at the
SPEC defaults is ~185 GFLOP (A = 6; ~250 at A = 38; ``torch.utils.flop_counter`` on the
reference path), so on an H100/H200 (67 TFLOPS in float32 without tensor cores) no float32
plan can take under ~2.8 ms: the 1 ms target needs the TF32 or bfloat16 variants, which the
report (tools/gpu_report.py) lists beside the targets.

The summary (bench/conftest.py) prints reference / fused for every pair of a ``reference*``
and a ``fused*`` variant of a group: the targets read ``reference / fused-graph`` (or
``/ fused``) >= 20 and ``reference-compiled / fused-graph`` >= 3.

CUDA only (skipped without a CUDA device). ``test_bench_plan_compile_smoke_cpu`` runs the
compiled-reference code path on the CPU at TINY sizes (``mode="reduce-overhead"`` there is
plain Inductor: CUDA graphs need CUDA tensors) and checks the action against the eager plan;
compiling takes ~30-80 s on 2 cores.

Run on a GPU machine: pytest bench/test_bench_plan_gpu.py --benchmark-only (``-k A6``: the
target group only; compiling the unrolled reference plan at the SPEC sizes may take minutes)
"""

from __future__ import annotations

import sys

import pytest
import torch
from bench_utils import cuda_skip_reason, sync
from testing_utils import TINY

from cdred_fast import CDREDAgent, CDREDConfig, Planner
from cdred_fast.planner import mppi_plan
from cdred_fast.precision import matmul_precision, matmul_precisions

OBS_DIM = 39
VARIANTS = ["fused", "reference", "reference-compiled", "fused-graph", "fused-graph-tf32", "fused-graph-bf16"]
# the reduced-precision variants: the fused-graph plan with these config settings
REDUCED = {
    "fused-graph-tf32": dict(matmul_precision="high"),
    "fused-graph-bf16": dict(matmul_precision="high", planning_precision="bfloat16"),
}
# TINY sizes of python_tests/testing_utils.py (IEEE float32 products: the smoke test compares
# plans to 1e-5, and "auto" is bfloat16 on AMX CPUs) with J = 1, H = 2: the CPU smoke compiles
# in ~30 s, not minutes
SMOKE = {**TINY, "iterations": 1, "horizon": 2}


def _agent(kernels: str, action_dim: int, device: str, **kw) -> CDREDAgent:
    torch.manual_seed(0)
    return CDREDAgent(CDREDConfig(kernels=kernels, episode_length=500, **kw), OBS_DIM, action_dim, device=device)


def _latent(agent: CDREDAgent) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return agent.model.encode(torch.randn(1, OBS_DIM, generator=g).to(agent.device))


def reference_plan_fn(agent: CDREDAgent):
    """``agent.plan(z, t0=True)`` with the default generator as a function of tensors,
    ``(z [1, L], mean [1, H, A]) -> (action [1, A], mean)``: the region torch.compile compiles."""
    planner = agent.planner
    assert not agent.model.training  # eval mode (no Q dropout), as inside agent.plan
    fns, settings, discount, impl = agent.rollout_functions(None), planner.settings, planner.discount, planner.impl

    def plan(z, mean):
        return mppi_plan(fns, z, mean, settings, discount=discount, generator=None, impl=impl)

    return plan


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _plan_runner(impl: str, action_dim: int, device: str, **cfg):
    """``(run, info)``: ``run()`` plans once from a fixed latent and returns the action [A]
    (synchronised), under the config's ``matmul_precision`` (as ``agent.act`` plans)."""
    cfg = {**cfg, **REDUCED.get(impl, {})}
    agent = _agent("reference" if impl.startswith("reference") else "fused", action_dim, device, **cfg)
    z = _latent(agent)
    info = {"impl": impl, "iterations": agent.planner.iterations}
    info.update({k: getattr(agent.cfg, k) for k in ("matmul_precision", "planning_precision")})
    precision = matmul_precisions(agent.cfg, device)[0]  # acting's, as agent.act plans
    with matmul_precision(precision):  # compiling and capturing too
        run, info = _runner(impl, agent, z, device, info)

    def run_in_precision():
        with matmul_precision(precision):
            return run()

    return run_in_precision, info


def _runner(impl: str, agent: CDREDAgent, z: torch.Tensor, device: str, info: dict):
    if impl in ("fused", "reference"):

        def run():
            a = agent.plan(z, t0=True)
            sync(device)
            return a
    elif impl == "reference-compiled":
        torch._dynamo.reset()
        compiled = torch.compile(reference_plan_fn(agent), mode="reduce-overhead", fullgraph=True)
        mean = agent.planner.initial_mean(True)
        skips = _cudagraph_skips()

        def run():
            if device == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # a new plan: earlier outputs may be overwritten
            a = compiled(z, mean)[0][0].clone()
            sync(device)
            return a

        for _ in range(3):  # compile, then record the CUDA graph (cudagraph trees record on a later call)
            run()
        info["cudagraph_skips"] = _cudagraph_skips() - skips  # > 0: reduce-overhead fell back to plain Inductor
        if device == "cuda" and info["cudagraph_skips"]:
            print(
                f"reference-compiled: {info['cudagraph_skips']} CUDA-graph skip(s), see TORCH_LOGS=perf_hints",
                file=sys.stderr,
            )
    elif impl.startswith("fused-graph"):
        planner = Planner.from_agent(agent, capture_graph=True)

        def run():
            a = planner.plan(z, t0=True)[0]
            sync(device)
            return a

        run()  # capture
    else:
        raise ValueError(impl)
    return run, info


@pytest.mark.skipif(bool(cuda_skip_reason(need_kernels=False)), reason=cuda_skip_reason(need_kernels=False) or "-")
@pytest.mark.parametrize("action_dim", [6, 38], ids=["A6", "A38"])
@pytest.mark.parametrize("impl", VARIANTS)
def test_bench_plan_gpu(benchmark, impl, action_dim):
    """SPEC defaults (H 3, N 512, k 64, J 6 (+2 for A >= 20), full-size model) on the GPU."""
    if impl.startswith("fused") and cuda_skip_reason():
        pytest.skip(cuda_skip_reason())  # the reference variants need the device only
    run, info = _plan_runner(impl, action_dim, "cuda")
    benchmark.group = f"plan from z, SPEC defaults A={action_dim} cuda: eager, compiled, CUDA graph"
    benchmark.extra_info.update(info)
    action = benchmark.pedantic(run, rounds=30, warmup_rounds=3)
    assert action.shape == (action_dim,) and bool(torch.isfinite(action).all()) and bool((action.abs() <= 1).all())
    if impl == "reference-compiled":
        torch._dynamo.reset()


@pytest.mark.parametrize("impl", ["fused", "reference", "reference-compiled"])
def test_bench_plan_compile_smoke_cpu(benchmark, impl):
    """The compiled-reference code path at TINY sizes on the CPU: ``torch.compile(mode="reduce-overhead")``
    (plain Inductor on a CPU) with ``fallback_random=True`` plans exactly like the eager reference
    from the same global-RNG state; the eager fused plan gives the same action up to rounding."""
    import torch._inductor.config as inductor_config

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with inductor_config.patch(fallback_random=True):  # aten's random ops: the eager draws
            run, info = _plan_runner(impl, 2, "cpu", **SMOKE)
            eager, _ = _plan_runner("reference", 2, "cpu", **SMOKE)
            for seed in (5, 6):
                torch.manual_seed(seed)
                want = eager()
                torch.manual_seed(seed)
                got = run()
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if impl == "fused" else 1e-6)
            benchmark.group = "plan TINY J=1 H=2 cpu: eager vs compiled (smoke)"
            benchmark.extra_info.update(info)
            action = benchmark.pedantic(run, rounds=20, warmup_rounds=2)
        assert action.shape == (2,) and bool(torch.isfinite(action).all())
    finally:
        torch.set_num_threads(previous)
        torch._dynamo.reset()
