"""cdred_fast.Planner (the drop-in fused MPPI planner for TD-MPC2 codebases) and the CDRED agent's
planner on the fused ops.

The planner is checked against an eager TD-MPC2 planning loop written out here from SPEC.md
section 4 (+ TD-MPC2's two-hot reward decoding, multitask masks and episodic termination), fed
the same random draws: the MPPI draws from one torch.Generator, the models' own draws (policy
noise, Q heads) from the global RNG, re-seeded before each of the two runs.

The world models are small but real nn.Modules with each API generation:

* ``CurrentModel``: TD-MPC2 (2024+): ``pi(z, task) -> (action, info)``, ``reward`` two-hot logits,
  ``Q(..., return_type="avg") -> [M, 1]``, ``termination(z, task)``.
* ``Model2023``: TD-MPC2 (2023) and its CDRED / IQ-MPC forks: ``pi(z, task) -> (mu, pi, log_pi,
  log_std)``, ``reward`` two-hot logits, or a scalar ``[M, 1]`` with ``scalar_reward=True``.
"""

from types import SimpleNamespace

import pytest
import torch
from testing_utils import needs_cuda
from torch import nn

import cdred_fast
from cdred_fast import ops
from cdred_fast.tdmpc2_planner import Planner

L, A, BINS, VMIN, VMAX = 8, 3, 11, -5.0, 5.0
IMPLS = ["fused", "reference"]


# =============================================================================== test world models
class _SmallWorldModel(nn.Module):
    def __init__(
        self,
        latent=L,
        action=A,
        num_bins=BINS,
        num_q=5,
        hidden=32,
        num_tasks=0,
        masks=None,
        scalar_reward=False,
        deterministic=False,
        seed=0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.num_q, self.deterministic = num_q, deterministic
        emb = 4 if num_tasks else 0
        self._task_emb = nn.Embedding(num_tasks, emb) if num_tasks else None
        if num_tasks:
            self.register_buffer("_action_masks", masks.float())

        def net(i, o):
            return nn.Sequential(nn.Linear(i, hidden), nn.LayerNorm(hidden), nn.Mish(), nn.Linear(hidden, o))

        self._dynamics = net(latent + action + emb, latent)
        self._reward = net(latent + action + emb, 1 if scalar_reward else num_bins)
        self._pi = net(latent + emb, 2 * action)
        self._Qs = nn.ModuleList([net(latent + action + emb, num_bins) for _ in range(num_q)])
        self._termination = net(latent + emb, 1)
        self.eval()

    def task_emb(self, x, task):
        if self._task_emb is None:
            return x
        if isinstance(task, int):
            task = torch.tensor([task], device=x.device)
        e = self._task_emb(task.long())
        if e.shape[0] == 1:
            e = e.expand(x.shape[0], -1)
        return torch.cat([x, e], dim=-1)

    def next(self, z, a, task=None):
        return torch.tanh(self._dynamics(torch.cat([self.task_emb(z, task), a], -1)))

    def reward(self, z, a, task=None):
        return self._reward(torch.cat([self.task_emb(z, task), a], -1))

    def termination(self, z, task=None):
        return torch.sigmoid(self._termination(self.task_emb(z, task)))

    def _policy(self, z, task):
        mu, rho = self._pi(self.task_emb(z, task)).chunk(2, -1)
        log_std = -5 + 0.5 * 7 * (torch.tanh(rho) + 1)
        eps = torch.zeros_like(mu) if self.deterministic else torch.randn_like(mu)
        action, mean = torch.tanh(mu + eps * log_std.exp()), torch.tanh(mu)
        if self._task_emb is not None:
            m = self._action_masks[task]
            action, mean = action * m, mean * m
        return mean, action, log_std

    def Q(self, z, a, task=None, return_type="min", target=False):
        x = torch.cat([self.task_emb(z, task), a], -1)
        out = torch.stack([q(x) for q in self._Qs])
        if return_type == "all":
            return out
        idx = torch.arange(2) if self.deterministic else torch.randperm(self.num_q)[:2]
        q = decode(out[idx]).unsqueeze(-1)  # [2, M, 1]
        return q.min(0).values if return_type == "min" else q.sum(0) / 2


class CurrentModel(_SmallWorldModel):
    """TD-MPC2 (2024+) API."""

    def pi(self, z, task=None):
        mean, action, log_std = self._policy(z, task)
        return action, {"mean": mean, "log_std": log_std}


class Model2023(_SmallWorldModel):
    """TD-MPC2 (2023) API (also the CDRED / IQ-MPC forks when scalar_reward=True)."""

    def pi(self, z, task=None):
        mean, action, log_std = self._policy(z, task)
        return mean, action, torch.zeros(z.shape[0], 1), log_std


def make_model(api, **kw):
    if api == "tdmpc2":
        return CurrentModel(**kw)
    return Model2023(scalar_reward=(api == "scalar-reward"), **kw)


def make_cfg(**kw):
    base = dict(
        horizon=3,
        num_samples=64,
        num_elites=8,
        num_pi_trajs=6,
        iterations=3,
        temperature=0.5,
        min_std=0.05,
        max_std=2.0,
        action_dim=A,
        multitask=False,
        num_bins=BINS,
        vmin=VMIN,
        vmax=VMAX,
        episode_length=100,
        discount_denom=5,
        discount_min=0.95,
        discount_max=0.995,
        episodic=False,
    )
    base.update(kw)
    return SimpleNamespace(**base)


# =============================================================================== the eager loop (SPEC section 4)
def symexp(x):
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


def decode(logits):
    """Two-hot logits -> scalar: symexp of the softmax expectation over the symlog bins."""
    bins = torch.linspace(VMIN, VMAX, logits.shape[-1], dtype=logits.dtype)
    return symexp((torch.softmax(logits, -1) * bins).sum(-1))


def tdmpc2_discount(T, denom=5, lo=0.95, hi=0.995):
    return min(max((T / denom - 1) / (T / denom), lo), hi)


def eager_plan(model, cfg, api, z, prev_mean, t0, eval_mode, g, task=None, gamma=None):
    """TD-MPC2's planning loop for one latent ``z [1, L]``: returns (action [A], mean [H, A])."""
    H, N, n_pi, k, J = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, cfg.num_elites, cfg.iterations
    A_ = cfg.action_dim
    gamma = tdmpc2_discount(cfg.episode_length) if gamma is None else gamma
    mask = model._action_masks[task] if cfg.multitask else None

    def policy(x):
        out = model.pi(x, task)
        return out[0] if api == "tdmpc2" else out[1]  # (action, info) / (mu, pi, log_pi, log_std)

    def reward(x, a):
        r = model.reward(x, a, task)
        return r.reshape(-1) if api == "scalar-reward" else decode(r)

    # 1. policy sequences from z
    pi_seq = torch.empty(H, n_pi, A_)
    x = z.repeat(n_pi, 1)
    for t in range(H):
        pi_seq[t] = policy(x)
        if t < H - 1:
            x = model.next(x, pi_seq[t], task)
    # 2. mean 0 or the previous mean shifted; std = max_std
    mean = torch.zeros(H, A_)
    if not t0 and prev_mean is not None:
        mean[:-1] = prev_mean[1:]
    std = torch.full((H, A_), cfg.max_std)
    # 3. iterations
    for _ in range(J):
        eps = torch.randn(H, N - n_pi, A_, generator=g)
        seqs = torch.cat([pi_seq, (mean[:, None] + std[:, None] * eps).clamp(-1, 1)], dim=1)
        if mask is not None:
            seqs = seqs * mask
        G, disc, alive, x = torch.zeros(N), 1.0, torch.ones(N), z.repeat(N, 1)
        for t in range(H):
            r = reward(x, seqs[t])
            x = model.next(x, seqs[t], task)
            G = G + disc * alive * r
            disc = disc * gamma
            if cfg.episodic:
                alive = alive * (model.termination(x, task).reshape(-1) <= 0.5).float()
        G = G + disc * alive * model.Q(x, policy(x), task, return_type="avg").reshape(-1)
        G = torch.where(torch.isnan(G), torch.zeros_like(G), G)  # NaN counts as 0
        idx = torch.argsort(G, descending=True, stable=True)[:k]  # k best, ties in candidate order
        elite_G, elites = G[idx], seqs[:, idx]
        w = torch.softmax(cfg.temperature * (elite_G - elite_G.max()), 0)
        mean = (w[None, :, None] * elites).sum(1) / w.sum()
        var = (w[None, :, None] * (elites - mean[:, None]) ** 2).sum(1) / w.sum()
        std = var.sqrt().clamp(cfg.min_std, cfg.max_std)
        if mask is not None:
            mean, std = mean * mask, std * mask
    # 4. one elite drawn with probability w; its first action (+ noise unless evaluating)
    choice = torch.multinomial(w, 1, generator=g)[0]
    a = elites[0, choice]
    if not eval_mode:
        a = a + std[0] * torch.randn(A_, generator=g)
    return a.clamp(-1, 1), mean


def run_both(planner, model, cfg, api, z, steps, eval_mode=False, task=None, gamma=None, seed=0):
    """Plan ``steps`` consecutive times (t0 on the first) with the planner and the eager loop."""
    prev = None
    for step in range(steps):
        torch.manual_seed(seed + step)
        want, prev = eager_plan(
            model,
            cfg,
            api,
            z,
            prev,
            step == 0,
            eval_mode,
            torch.Generator().manual_seed(seed + 100 + step),
            task=task,
            gamma=gamma,
        )
        torch.manual_seed(seed + step)
        got = planner.plan(
            z[0],
            t0=step == 0,
            eval_mode=eval_mode,
            task=task,
            generator=torch.Generator().manual_seed(seed + 100 + step),
        )
        yield got, want, planner.prev_mean[0], prev


# =============================================================================== equality with the eager loop
# Tolerance: the fused elite update sums in another order than the eager loop, and the planner's
# symexp uses expm1; actions and means agree to ~2e-7 (measured); 1e-5 absolute leaves margin.
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("api", ["tdmpc2", "tdmpc2-2023", "scalar-reward"])
def test_same_action_as_eager_tdmpc2_loop(api, impl):
    model, cfg = make_model(api), make_cfg()
    planner = Planner(model, cfg, kernels=impl)  # api detected on the first plan
    z = torch.randn(1, L)
    for got, want, got_mean, want_mean in run_both(planner, model, cfg, api, z, steps=3):
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(got_mean, want_mean, **TOL)
    assert planner.api == api


@pytest.mark.parametrize("impl", IMPLS)
def test_same_action_as_eager_eval_mode_and_episodic(impl):
    model = make_model("tdmpc2", seed=3)
    with torch.no_grad():  # terminations about half of the time
        model._termination[-1].bias.fill_(0.0)
    cfg = make_cfg(episodic=True)
    planner = Planner(model, cfg, api="tdmpc2", kernels=impl)
    z = torch.randn(1, L)
    for got, want, got_mean, want_mean in run_both(planner, model, cfg, "tdmpc2", z, steps=2, eval_mode=True):
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(got_mean, want_mean, **TOL)


def test_omegaconf_and_dict_cfg_and_default_generator():
    omegaconf = pytest.importorskip("omegaconf")
    model = make_model("tdmpc2-2023")
    cfg = make_cfg()
    dict_cfg = dict(vars(cfg))
    for c in (dict_cfg, omegaconf.OmegaConf.create(dict_cfg)):
        planner = Planner(model, c, kernels="fused")
        # generator=None: every draw (model's and MPPI's) from the global RNG, in TD-MPC2's order
        torch.manual_seed(5)
        want, _ = eager_plan(model, cfg, "tdmpc2-2023", torch.ones(1, L), None, True, False, None)
        torch.manual_seed(5)
        got = planner.plan(torch.ones(1, L), t0=True)
        assert got.shape == (1, A)
        torch.testing.assert_close(got[0], want, **TOL)


# =============================================================================== known optimum, batching
def toy_planner(cfg, impl="fused"):
    """Identity dynamics; the target a* of each problem is stored in its latent: reward -||a - a*||^2."""
    return Planner.from_functions(
        dynamics=lambda z, a: z,
        reward=lambda z, a: -((a - z[:, :A]) ** 2).sum(-1),
        value=lambda z, a: torch.zeros(z.shape[0], 1),
        policy=lambda z: torch.rand(z.shape[0], A) * 2 - 1,
        cfg=cfg,
        kernels=impl,
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_converges_to_known_optimum(impl):
    targets = torch.tensor([[0.3, -0.5, 0.8], [-0.7, 0.1, 0.0], [0.5, 0.5, -0.9]])
    cfg = make_cfg(num_samples=256, num_elites=32, num_pi_trajs=8, iterations=8, discount=0.9)
    planner = toy_planner(cfg, impl)
    assert planner.api == "functions"
    a = planner.plan(targets, t0=True, eval_mode=True, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, A)
    torch.testing.assert_close(a, targets, rtol=0, atol=0.05)
    torch.testing.assert_close(planner.prev_mean, targets[:, None].expand(3, 3, A), rtol=0, atol=0.05)
    # warm-started (std restarts at max_std, the last step's mean at 0): still there
    a2 = planner.plan(targets, eval_mode=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a2, targets, rtol=0, atol=0.1)


def check_batched_equals_single(monkeypatch, impl, model, cfg, tasks=None):
    """B problems at once == B planners, one problem each, given each problem's own draws.

    A batched plan draws the MPPI noise of all problems from one generator; to give each
    problem the draws of its own planner, the ops see one generator per problem here (the
    wrappers split the batch and call the real ops per problem). The model is deterministic so
    that its own draws do not depend on the batch size.
    """
    B = 3
    zs = torch.randn(B, L)
    t0s = [[True] * B, [False, True, False], [False, False, False]]
    task_b = (lambda b: None) if tasks is None else (lambda b: int(tasks[b]))

    singles = [Planner(model, cfg, kernels=impl) for _ in range(B)]
    single_actions = []
    for step, t0 in enumerate(t0s):
        single_actions.append(
            torch.stack(
                [
                    singles[b].plan(
                        zs[b], t0=t0[b], task=task_b(b), generator=torch.Generator().manual_seed(10 * step + b)
                    )
                    for b in range(B)
                ]
            )
        )
    single_means = torch.cat([p.prev_mean for p in singles])

    real_sample, real_select = ops.mppi_sample, ops.mppi_select
    gens = []

    def sample(mean, std, num_samples, generator=None, *, impl):
        return torch.stack([real_sample(mean[b], std[b], num_samples, gens[b], impl=impl) for b in range(B)])

    def select(elite_actions, elite_weights, std, eval_mode=False, generator=None, *, impl):
        return torch.stack(
            [real_select(elite_actions[b], elite_weights[b], std[b], eval_mode, gens[b], impl=impl) for b in range(B)]
        )

    monkeypatch.setattr(ops, "mppi_sample", sample)
    monkeypatch.setattr(ops, "mppi_select", select)
    batched = Planner(model, cfg, kernels=impl)
    for step, t0 in enumerate(t0s):
        gens[:] = [torch.Generator().manual_seed(10 * step + b) for b in range(B)]
        got = batched.plan(zs, t0=torch.tensor(t0), task=tasks)
        torch.testing.assert_close(got, single_actions[step], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.prev_mean, single_means, rtol=1e-5, atol=1e-6)
    return got


@pytest.mark.parametrize("impl", IMPLS)
def test_batched_planning_equals_planning_each_state(impl, monkeypatch):
    model, cfg = make_model("tdmpc2", deterministic=True, seed=1), make_cfg()
    check_batched_equals_single(monkeypatch, impl, model, cfg)


def test_batch_size_change_needs_t0_or_reset():
    planner = toy_planner(make_cfg(discount=0.9))
    planner.plan(torch.zeros(2, L), t0=True)
    with pytest.raises(ValueError, match="previous plan was for 2 problem"):
        planner.plan(torch.zeros(3, L))
    assert planner.plan(torch.zeros(3, L), t0=True).shape == (3, A)
    planner.reset()
    assert planner.prev_mean is None
    assert planner.plan(torch.zeros(L)).shape == (A,)


# =============================================================================== multitask
MASKS = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])


def multitask_setup(api="tdmpc2", **kw):
    model = make_model(api, num_tasks=3, masks=MASKS, seed=2, **kw)
    cfg = make_cfg(multitask=True, episode_lengths=[100, 500, 25])
    del cfg.episode_length
    return model, cfg


@pytest.mark.parametrize("impl", IMPLS)
def test_multitask_matches_eager_with_masks_and_task_discount(impl):
    model, cfg = multitask_setup()
    planner = Planner(model, cfg, kernels=impl)
    z = torch.randn(1, L)
    for task in (1, 2):
        planner.reset()
        task_t = torch.tensor([task])  # what TD-MPC2's act() passes
        gamma = tdmpc2_discount(cfg.episode_lengths[task])
        cfg.episode_length = cfg.episode_lengths[task]  # for the eager loop's discount
        for got, want, got_mean, want_mean in run_both(planner, model, cfg, "tdmpc2", z, 2, task=task_t, gamma=gamma):
            torch.testing.assert_close(got, want, **TOL)
            torch.testing.assert_close(got_mean, want_mean, **TOL)
            masked = MASKS[task] == 0
            assert (got[masked] == 0).all() and (got_mean[:, masked] == 0).all()
        del cfg.episode_length


@pytest.mark.parametrize("impl", IMPLS)
def test_multitask_batched_per_problem_tasks_equal_single_plans(impl, monkeypatch):
    """One task per problem: its own mask and its own discount (episode lengths 100, 500, 25)."""
    model, cfg = multitask_setup(deterministic=True)
    a = check_batched_equals_single(monkeypatch, impl, model, cfg, tasks=torch.tensor([0, 1, 2]))
    assert (a[MASKS == 0] == 0).all()


def test_multitask_batched_per_problem_tasks():
    model, cfg = multitask_setup()
    planner = Planner(model, cfg)
    g = torch.Generator().manual_seed(0)
    a = planner.plan(torch.randn(3, L), t0=True, task=torch.tensor([0, 1, 2]), generator=g)
    assert (a[MASKS == 0] == 0).all()
    assert (a[MASKS == 1] != 0).all()
    assert (planner.prev_mean.permute(1, 0, 2)[:, MASKS == 0] == 0).all()
    with pytest.raises(ValueError, match="needs the task id"):
        planner.plan(torch.randn(3, L), t0=True)
    with pytest.raises(ValueError, match=r"task ids must be in \[0, 3\)"):
        planner.plan(torch.randn(1, L), t0=True, task=5)


@pytest.mark.cuda
@needs_cuda
def test_multitask_task_ids_on_the_gpu_are_read_on_the_host_once():
    """Task ids on the GPU: one host read per plan (validating them), none for the masks and the
    per-task discounts, which are looked up on the device."""
    import warnings

    model, cfg = multitask_setup()
    model = model.cuda()
    planner = Planner(model, cfg)
    device = torch.device("cuda")
    for ids in (torch.tensor([0, 1, 2], device=device), torch.tensor([2], device=device)):
        B = 3
        planner._mask_and_discount(planner._task_state(ids, B, device), B, device, torch.float32)  # copies once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                state = planner._task_state(ids, B, device)
                mask, discount = planner._mask_and_discount(state, B, device, torch.float32)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == 1, [str(w.message) for w in syncs]
        gammas = [tdmpc2_discount(n) for n in cfg.episode_lengths]
        want = [gammas[i] for i in ids.tolist()]
        if ids.numel() > 1:
            torch.testing.assert_close(discount, torch.tensor(want, device=device))
        else:
            assert discount == pytest.approx(want[0])
        torch.testing.assert_close(mask, MASKS[ids.cpu()].float().to(device).expand(B, -1))
    a = planner.plan(torch.randn(3, L, device=device), t0=True, task=torch.tensor([0, 1, 2], device=device))
    assert (a[MASKS.to(device) == 0] == 0).all()


# =============================================================================== configuration
def test_iterations_and_discount_resolution():
    model = make_model("tdmpc2")
    assert Planner(model, make_cfg()).iterations == 3
    big = make_model("tdmpc2", action=20)
    assert Planner(big, make_cfg(action_dim=20)).iterations == 5  # +2 when A >= 20
    assert Planner(big, make_cfg(action_dim=20), iterations=3).iterations == 3  # cfg already bumped by TDMPC2
    p = Planner(model, make_cfg())
    assert p._discounts == [pytest.approx(tdmpc2_discount(100))]
    assert Planner(model, make_cfg(discount=0.9))._discounts == [0.9]
    assert Planner(model, make_cfg(), discount=0.8)._discounts == [0.8]
    assert Planner(model, make_cfg(episode_length=1000))._discounts == [0.995]  # clipped to discount_max


def test_errors_name_what_is_missing():
    model, cfg = make_model("tdmpc2"), make_cfg()
    bad_cfg = make_cfg()
    del bad_cfg.horizon, bad_cfg.num_elites
    with pytest.raises(ValueError, match="horizon, num_elites"):
        Planner(model, bad_cfg)
    no_discount = make_cfg()
    del no_discount.episode_length
    with pytest.raises(ValueError, match="episode_length"):
        Planner(model, no_discount)
    with pytest.raises(ValueError, match="api must be one of"):
        Planner(model, cfg, api="tdmpc3")
    with pytest.raises(ValueError, match="kernels"):
        Planner(model, cfg, kernels="cuda")
    with pytest.raises(ValueError, match="num_elites"):
        Planner(model, make_cfg(num_elites=65))

    class NoQ(nn.Module):
        def next(self, z, a, task=None):
            return z

        def pi(self, z, task=None):
            return z[:, :A], {}

    with pytest.raises(TypeError, match=r"missing the TD-MPC2 world-model method\(s\): reward.*Q\(z, a, task"):
        Planner(NoQ(), cfg)
    with pytest.raises(TypeError, match="termination"):
        Planner(NoQ(), make_cfg(episodic=True))
    with pytest.raises(TypeError, match="_action_masks"):
        Planner(make_model("tdmpc2"), make_cfg(multitask=True, episode_lengths=[100]))

    class BadPi(CurrentModel):
        def pi(self, z, task=None):
            return z[:, :A]

    with pytest.raises(TypeError, match=r"model.pi\(z, task\) returned shape \[2, 3\]"):
        Planner(BadPi(), cfg).plan(torch.zeros(L))

    class BadReward(CurrentModel):
        def reward(self, z, a, task=None):
            return torch.zeros(z.shape[0], 7)

    with pytest.raises(ValueError, match="7 values per row.*num_bins is 11"):
        Planner(BadReward(), cfg).plan(torch.zeros(L))

    # a scalar reward with the current pi API fits neither generation
    with pytest.raises(ValueError, match="not two-hot logits"):
        Planner(CurrentModel(num_bins=BINS, scalar_reward=True), cfg).plan(torch.zeros(L))
    # one reward value per row with num_bins == 1: TD-MPC2 would symexp it, a scalar fork would not
    with pytest.raises(ValueError, match="num_bins == 1"):
        Planner(make_model("scalar-reward"), make_cfg(num_bins=1)).plan(torch.zeros(L))
    assert Planner(make_model("scalar-reward"), make_cfg(num_bins=1), api="scalar-reward").plan(
        torch.zeros(L)
    ).shape == (A,)
    # an explicit api that does not fit the model
    with pytest.raises(ValueError, match=r"api='tdmpc2' expects model.pi to return \(action, info\)"):
        Planner(make_model("tdmpc2-2023"), cfg, api="tdmpc2").plan(torch.zeros(L))
    with pytest.raises(ValueError, match="api='scalar-reward'"):
        Planner(make_model("tdmpc2-2023"), cfg, api="scalar-reward").plan(torch.zeros(L))
    bins_cfg = make_cfg()
    del bins_cfg.num_bins
    with pytest.raises(ValueError, match="missing num_bins"):
        Planner(model, bins_cfg, api="tdmpc2")
    with pytest.raises(ValueError, match="z must be a latent"):
        Planner(model, cfg).plan(torch.zeros(2, 2, L))


def test_from_functions_errors():
    cfg = make_cfg(discount=0.9)
    with pytest.raises(TypeError, match="value, policy"):
        Planner.from_functions(dynamics=lambda z, a: z, reward=lambda z, a: z[:, 0], value=None, policy=3, cfg=cfg)
    planner = toy_planner(cfg)
    with pytest.raises(ValueError, match="takes no task"):
        planner.plan(torch.zeros(L), task=1)
    bad = Planner.from_functions(
        dynamics=lambda z, a: z,
        reward=lambda z, a: torch.zeros(z.shape[0], 2),
        value=lambda z, a: torch.zeros(z.shape[0]),
        policy=lambda z: torch.zeros(z.shape[0], A),
        cfg=cfg,
    )
    with pytest.raises(ValueError, match=r"reward\(z, a\) must give one value per row"):
        bad.plan(torch.zeros(L))


def test_from_functions_termination_stops_reward():
    """After a terminal step no reward is collected: with reward +1 for a > 0 and termination after
    step 0, only the first action matters, and a sequence ending early is not penalised later."""
    cfg = make_cfg(horizon=3, num_samples=128, num_elites=16, num_pi_trajs=0, iterations=6, discount=1.0)
    planner = Planner.from_functions(
        dynamics=lambda z, a: z + 1,
        reward=lambda z, a: torch.where(z[:, 0] == 0, a[:, 0], -10 * a[:, 0]),
        value=lambda z, a: torch.full((z.shape[0],), 100.0),
        policy=lambda z: torch.zeros(z.shape[0], A),
        termination=lambda z: (z[:, 0] >= 1).float(),
        cfg=cfg,
    )
    a = planner.plan(torch.zeros(L), t0=True, eval_mode=True, generator=torch.Generator().manual_seed(0))
    assert a[0] > 0.9


def test_capture_graph_needs_cuda():
    model, cfg = make_model("tdmpc2"), make_cfg()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="capture_graph=True needs CUDA"):
            Planner(model, cfg, capture_graph=True)
    else:  # pragma: no cover - needs a GPU
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            Planner(model, cfg, capture_graph=True).plan(torch.zeros(L))


def test_exported():
    assert cdred_fast.Planner is Planner
    assert "Planner" in cdred_fast.__all__
