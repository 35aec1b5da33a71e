"""The CDRED agent's planning on the fused MPPI ops: fused and reference agents give the same
action, and the agent's plans replay from a CUDA graph (CUDA tests skip without a GPU)."""

import pytest
import torch
from testing_utils import SMALL_MODEL, needs_cuda

from cdred_fast.agent import CDREDAgent
from cdred_fast.config import CDREDConfig
from cdred_fast.planner import MAX_GRAPHS, MPPIPlanner, MPPISettings
from cdred_fast.tdmpc2_planner import Planner

# float32 planning: these tests hold the fused ops to the reference at float32 tolerances
# (bfloat16 reward networks, the default on CPUs with native bf16: test_bf16_planning.py)
AGENT_KW = dict(SMALL_MODEL, num_samples=64, num_elites=8, num_pi_trajs=4, dropout=0.0, planning_precision="float32")


def test_fused_agent_plans_like_reference_agent():
    """Same weights, same seeded generator: kernels="fused" and kernels="reference" give the same action.

    Tolerance 5e-4 absolute: the fused CDRED reward and elite-update kernels sum in another order
    than the reference, so the values differ by ~1e-6 relative. A plan from t0 agrees to ~2e-7;
    through the warm starts of the following plans the differences grow to ~7e-5 (measured).
    """
    torch.manual_seed(0)
    fused = CDREDAgent(CDREDConfig(kernels="fused", **AGENT_KW), 6, 2)
    reference = CDREDAgent(CDREDConfig(kernels="reference", **AGENT_KW), 6, 2)
    with torch.no_grad():
        for p in fused.model.Qs.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    reference.model.load_state_dict(fused.model.state_dict())
    assert fused.planner.impl == "fused" and reference.planner.impl == "reference"
    obs = torch.randn(6)
    for step in range(3):
        for eval_mode in (False, True):
            a_f = fused.act(obs, t0=step == 0, eval_mode=eval_mode, generator=torch.Generator().manual_seed(step))
            a_r = reference.act(obs, t0=step == 0, eval_mode=eval_mode, generator=torch.Generator().manual_seed(step))
            torch.testing.assert_close(a_f, a_r, rtol=0, atol=5e-4)


# =============================================================================== CUDA-graph replay of the agent's plans


def test_agent_capture_graph_is_validated_on_cpu():
    """CDREDConfig.capture_graph: a bool, off by default, kept through to_dict; an agent (or
    MPPIPlanner) that would need a CUDA graph but runs on the CPU fails when it is built."""
    settings = MPPISettings.from_config(CDREDConfig(**AGENT_KW), 2)
    assert CDREDConfig().capture_graph is False
    cfg = CDREDConfig(capture_graph=True, **AGENT_KW)
    assert CDREDConfig.from_dict(cfg.to_dict()).capture_graph is True
    with pytest.raises(TypeError, match="capture_graph"):
        CDREDConfig(capture_graph="yes")
    with pytest.raises(RuntimeError, match="capture_graph=True .* needs a CUDA device, but the planner is on cpu"):
        CDREDAgent(cfg, 6, 2)
    agent = CDREDAgent(CDREDConfig(**AGENT_KW), 6, 2)
    assert agent.planner.capture_graph is False
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        MPPIPlanner(settings, 0.99, capture_graph=True, device="cpu")
    with pytest.raises(TypeError, match="capture_graph must be a bool"):
        MPPIPlanner(settings, 0.99, capture_graph=1, device="cpu")


def _cuda_agents(**kw):
    torch.manual_seed(0)
    kw = {**AGENT_KW, **kw}
    graphed = CDREDAgent(CDREDConfig(capture_graph=True, **kw), 6, 2, device="cuda")
    eager = CDREDAgent(CDREDConfig(**kw), 6, 2, device="cuda")
    with torch.no_grad():
        for p in graphed.model.Qs.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    eager.model.load_state_dict(graphed.model.state_dict())
    return graphed, eager


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("planning_precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("eval_mode", [False, True])
def test_agent_capture_graph_replays_the_eager_plan(eval_mode, planning_precision):
    """cfg.capture_graph=True: the agent's plans (policy rollouts, the fused MPPI ops with the
    elite draw of mppi_select, warm starts) replayed from a CUDA graph equal the eager plans
    from the same generator state, across warm-started steps and after a parameter update.
    With bfloat16 reward networks the graph rounds the parameters on every replay: after the
    update it must plan with the new weights, as the eager agent's re-made copies do."""
    graphed, eager = _cuda_agents(planning_precision=planning_precision)
    assert graphed.planner.capture_graph and graphed.planner.impl == "fused"
    g_graph, g_eager = torch.Generator(device="cuda").manual_seed(0), torch.Generator(device="cuda")
    obs = torch.randn(5, 6)
    graphed.act(obs[0], t0=True, eval_mode=eval_mode, generator=g_graph)  # records the graph
    for step in range(5):
        if step == 3:  # a training step changes the weights in place: the graph must see it
            with torch.no_grad():
                for p_g, p_e in zip(graphed.model.parameters(), eager.model.parameters()):
                    noise = 0.01 * torch.randn_like(p_g)
                    p_g.add_(noise)
                    p_e.add_(noise)
        g_eager.set_state(g_graph.get_state())
        a_g = graphed.act(obs[step], t0=step == 0, eval_mode=eval_mode, generator=g_graph)
        a_e = eager.act(obs[step], t0=step == 0, eval_mode=eval_mode, generator=g_eager)
        torch.testing.assert_close(a_g, a_e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(graphed.planner.prev_mean, eager.planner.prev_mean, rtol=1e-6, atol=1e-6)
        assert torch.equal(g_graph.get_state(), g_eager.get_state())  # a replay advances the generator as a plan
    assert len(graphed.planner._graphs) == 1


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("own_generator", [True, False])
def test_recording_a_graph_draws_no_random_numbers(own_generator):
    """The first plan of a graph (two warm-up plans, the capture, the first replay) is the eager
    plan from the same generator state, and leaves the generator where the eager plan does: a
    run with capture_graph=True is the run without it, from its first step (and a resumed run,
    which records its graphs again, the uninterrupted one)."""
    graphed, eager = _cuda_agents()
    obs = torch.randn(6)
    if own_generator:
        g_graph, g_eager = (torch.Generator(device="cuda").manual_seed(3) for _ in range(2))
        a_g = graphed.act(obs, t0=True, generator=g_graph)
        a_e = eager.act(obs, t0=True, generator=g_eager)
        assert torch.equal(g_graph.get_state(), g_eager.get_state())
    else:  # the default CUDA generator
        torch.cuda.manual_seed(3)
        a_g = graphed.act(obs, t0=True)
        after_graph = torch.cuda.get_rng_state()
        torch.cuda.manual_seed(3)
        a_e = eager.act(obs, t0=True)
        assert torch.equal(after_graph, torch.cuda.get_rng_state())
    torch.testing.assert_close(a_g, a_e, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
def test_a_parameter_with_new_storage_records_a_new_graph():
    """A graph reads the parameters' memory: after one of them gets other storage (here the
    same values, copied), the next plan records a new graph, and plans as the eager agent."""
    graphed, eager = _cuda_agents()
    obs = torch.randn(6)
    g = torch.Generator(device="cuda").manual_seed(0)
    graphed.act(obs, t0=True, generator=g)
    p = next(graphed.model.parameters())
    p.data = p.data.clone()
    g_eager = torch.Generator(device="cuda")
    g_eager.set_state(g.get_state())
    a_g = graphed.act(obs, t0=True, generator=g)
    a_e = eager.act(obs, t0=True, generator=g_eager)
    torch.testing.assert_close(a_g, a_e, rtol=1e-6, atol=1e-6)
    assert len(graphed.planner._graphs) == 2


@pytest.mark.cuda
@needs_cuda
def test_the_planner_keeps_at_most_max_graphs():
    """One graph per generator object: a fresh generator per plan records a graph each time, and
    the planner keeps the last MAX_GRAPHS of them (each holds a memory pool)."""
    graphed, _ = _cuda_agents()
    obs = torch.randn(6)
    for seed in range(MAX_GRAPHS + 2):
        graphed.act(obs, t0=True, generator=torch.Generator(device="cuda").manual_seed(seed))
    assert len(graphed.planner._graphs) == MAX_GRAPHS


@pytest.mark.cuda
@needs_cuda
def test_agent_capture_graph_needs_the_fused_ops():
    with pytest.raises(RuntimeError, match="needs the fused CUDA ops"):
        CDREDAgent(CDREDConfig(capture_graph=True, kernels="reference", **AGENT_KW), 6, 2, device="cuda")


@pytest.mark.cuda
@needs_cuda
def test_planner_from_agent_capture_graph_replays_the_eager_plan():
    """The drop-in Planner's capture_graph around the same model, default CUDA generator for
    every draw (MPPI and the model's): replays equal eager plans from the same RNG state."""
    _, agent = _cuda_agents()
    graphed, eager = Planner.from_agent(agent, capture_graph=True), Planner.from_agent(agent)
    z = torch.randn(3, AGENT_KW["latent_dim"], device="cuda")
    with agent.model.planning():
        graphed.plan(z, t0=True)  # records the graph
        for step in range(3):
            state = torch.cuda.get_rng_state()
            a_g = graphed.plan(z, t0=step == 0)
            torch.cuda.set_rng_state(state)
            a_e = eager.plan(z, t0=step == 0)
            torch.testing.assert_close(a_g, a_e, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(graphed.prev_mean, eager.prev_mean, rtol=1e-6, atol=1e-6)
