"""cdred_fast.Planner (fused MPPI ops) vs an eager TD-MPC2 planning loop, same model.

TD-MPC2 planning defaults: H = 3, N = 512 sequences (24 from the policy prior), k = 64
elites, J = 6 iterations, temperature 0.5, std in [0.05, 2]. The model is a small
TD-MPC2-like world model with the current TD-MPC2 API (latent 32, hidden 64, A = 6,
101-bin two-hot reward and 5 distributional Q heads), so the MPPI bookkeeping is a
visible part of a plan. Cases: one state per plan (B = 1, what TD-MPC2 does), and 8
states (Planner: one batched plan; eager: 8 plans one after the other).

impl labels: "fused" = Planner(kernels="fused"); "reference" = the eager TD-MPC2 loop (the
baseline, so the summary's speed-up column reads eager / Planner-fused);
"planner-reference" = Planner(kernels="reference") (the same loop on the pure-PyTorch ops).
CPU timings use one intra-op thread: the small model's GEMMs gain little from a second
thread, and on a shared machine OpenMP spin-waits make multi-threaded timings mostly noise.
Run: pytest bench/test_bench_planner.py --benchmark-only
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from bench_utils import DEVICES, sync
from torch import nn

from cdred_fast import Planner

LATENT, HIDDEN, ACT, BINS, VMIN, VMAX, NUM_Q = 32, 64, 6, 101, -10.0, 10.0, 5
CFG = SimpleNamespace(
    horizon=3,
    num_samples=512,
    num_elites=64,
    num_pi_trajs=24,
    iterations=6,
    temperature=0.5,
    min_std=0.05,
    max_std=2.0,
    action_dim=ACT,
    multitask=False,
    episodic=False,
    num_bins=BINS,
    vmin=VMIN,
    vmax=VMAX,
    episode_length=500,
    discount_denom=5,
    discount_min=0.95,
    discount_max=0.995,
)
DISCOUNT = min(max((500 / 5 - 1) / (500 / 5), 0.95), 0.995)


def _mlp(i, o):
    return nn.Sequential(
        nn.Linear(i, HIDDEN),
        nn.LayerNorm(HIDDEN),
        nn.Mish(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.LayerNorm(HIDDEN),
        nn.Mish(),
        nn.Linear(HIDDEN, o),
    )


def _two_hot_inv(x):
    bins = torch.linspace(VMIN, VMAX, BINS, device=x.device, dtype=x.dtype)
    y = (F.softmax(x, dim=-1) * bins).sum(-1, keepdim=True)
    return torch.sign(y) * (torch.exp(y.abs()) - 1)


class TDMPC2LikeModel(nn.Module):
    """Current TD-MPC2 API: pi -> (action, info), reward -> two-hot logits, Q(..., 'avg') -> [M, 1]."""

    def __init__(self):
        super().__init__()
        self._dynamics = _mlp(LATENT + ACT, LATENT)
        self._reward = _mlp(LATENT + ACT, BINS)
        self._pi = _mlp(LATENT, 2 * ACT)
        self._Qs = nn.ModuleList([_mlp(LATENT + ACT, BINS) for _ in range(NUM_Q)])

    def next(self, z, a, task=None):
        z = self._dynamics(torch.cat([z, a], -1))
        return F.softmax(z.view(*z.shape[:-1], -1, 8), -1).view(z.shape)  # SimNorm

    def reward(self, z, a, task=None):
        return self._reward(torch.cat([z, a], -1))

    def pi(self, z, task=None):
        mu, log_std = self._pi(z).chunk(2, -1)
        log_std = -10 + 0.5 * 12 * (torch.tanh(log_std) + 1)
        action = torch.tanh(mu + torch.randn_like(mu) * log_std.exp())
        return action, {"mean": torch.tanh(mu)}

    def Q(self, z, a, task=None, return_type="min"):
        x = torch.cat([z, a], -1)
        out = torch.stack([q(x) for q in self._Qs])
        idx = torch.randperm(NUM_Q, device=x.device)[:2]
        q = _two_hot_inv(out[idx])
        return q.min(0).values if return_type == "min" else q.sum(0) / 2


@torch.no_grad()
def eager_plan(model, z, prev_mean, t0=False, eval_mode=False):
    """TD-MPC2's planning loop (one state ``z [1, L]``), eager PyTorch, the baseline."""
    c, dev = CFG, z.device
    pi_actions = torch.empty(c.horizon, c.num_pi_trajs, ACT, device=dev)
    _z = z.repeat(c.num_pi_trajs, 1)
    for t in range(c.horizon - 1):
        pi_actions[t], _ = model.pi(_z)
        _z = model.next(_z, pi_actions[t])
    pi_actions[-1], _ = model.pi(_z)
    z = z.repeat(c.num_samples, 1)
    mean = torch.zeros(c.horizon, ACT, device=dev)
    std = torch.full((c.horizon, ACT), c.max_std, device=dev)
    if not t0:
        mean[:-1] = prev_mean[1:]
    actions = torch.empty(c.horizon, c.num_samples, ACT, device=dev)
    actions[:, : c.num_pi_trajs] = pi_actions
    for _ in range(c.iterations):
        r = torch.randn(c.horizon, c.num_samples - c.num_pi_trajs, ACT, device=dev)
        actions[:, c.num_pi_trajs :] = (mean.unsqueeze(1) + std.unsqueeze(1) * r).clamp(-1, 1)
        G, discount, _z = 0, 1, z
        for t in range(c.horizon):
            G = G + discount * _two_hot_inv(model.reward(_z, actions[t]))
            _z = model.next(_z, actions[t])
            discount = discount * DISCOUNT
        value = (G + discount * model.Q(_z, model.pi(_z)[0], return_type="avg")).nan_to_num(0)
        elite_idxs = torch.topk(value.squeeze(1), c.num_elites, dim=0).indices
        elite_value, elite_actions = value[elite_idxs], actions[:, elite_idxs]
        score = torch.exp(c.temperature * (elite_value - elite_value.max(0).values))
        score = score / score.sum(0)
        mean = (score.unsqueeze(0) * elite_actions).sum(dim=1) / score.sum(0)
        std = ((score.unsqueeze(0) * (elite_actions - mean.unsqueeze(1)) ** 2).sum(dim=1) / score.sum(0)).sqrt()
        std = std.clamp(c.min_std, c.max_std)
    idx = torch.multinomial(score.squeeze(1), 1)
    a, std0 = elite_actions[0, idx[0]], std[0]
    if not eval_mode:
        a = a + std0 * torch.randn(ACT, device=dev)
    return a.clamp(-1, 1), mean


@pytest.fixture
def one_cpu_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 8], ids=["B1", "B8"])
@pytest.mark.parametrize("impl", ["fused", "reference", "planner-reference"])
def test_bench_plan(benchmark, impl, B, device, one_cpu_thread):
    torch.manual_seed(0)
    model = TDMPC2LikeModel().to(device).eval()
    z = F.softmax(torch.randn(B, LATENT // 8, 8, device=device), -1).view(B, LATENT)
    benchmark.group = f"plan B={B} H=3 N=512 k=64 J=6 A={ACT} L={LATENT} {device}"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["variant"] = {
        "fused": "Planner(kernels='fused')",
        "reference": "eager TD-MPC2 loop",
        "planner-reference": "Planner(kernels='reference')",
    }[impl]

    if impl == "reference":
        prev = [torch.zeros(CFG.horizon, ACT, device=device) for _ in range(B)]

        def run():
            out = []
            for b in range(B):  # TD-MPC2 plans one state at a time
                a, prev[b] = eager_plan(model, z[b : b + 1], prev[b])
                out.append(a)
            sync(device)
            return torch.stack(out)
    else:
        planner = Planner(model, CFG, kernels="fused" if impl == "fused" else "reference")
        planner.plan(z, t0=True)  # API detection and warm start outside the timing

        def run():
            out = planner.plan(z)
            sync(device)
            return out

    out = benchmark(run)
    assert out.shape == (B, ACT) and bool((out.abs() <= 1).all())
