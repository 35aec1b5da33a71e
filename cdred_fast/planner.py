"""MPPI planning in the latent space of a world model (SPEC.md section 4, paper Algorithm 2).

One implementation of the MPPI loop, :func:`mppi_plan`, batched over ``B``
independent planning problems. Every MPPI step goes through the fused ops of
:mod:`cdred_fast.ops` (``mppi_sample`` -> values from the model -> ``mppi_elite_update``,
``J`` times, then ``mppi_select``) with ``impl="fused"`` or ``"reference"``. The
model is seen through :class:`RolloutFunctions` (policy, dynamics, reward, value,
optional termination), so two front ends share the loop:

* :class:`MPPIPlanner` - the CDRED agent's planner, for a :class:`cdred_fast.world_model.WorldModel`
  (every random draw of the model and of MPPI comes from one optional ``torch.Generator``).
* :class:`Planner` - a drop-in fused MPPI planner for TD-MPC2 codebases (both API generations),
  or for any model through :meth:`Planner.from_functions`.

Semantics (SPEC section 4, TD-MPC2's planner): policy-prior sequences first, warm start from the
previous mean shifted one step, ``G = sum_t gamma^t R + gamma^H Q(z_H, pi(z_H))``, NaN values
count as 0, top-k with ties in candidate order, ``w = softmax(tau (G - max G))``, mean and std
from ``w`` with std clamped to ``[min_std, max_std]``, the final elite drawn with probability
``w`` on the device, plus ``std_0 * eps`` unless ``eval_mode``. The weights' sum is not offset by
1e-9 (the released TD-MPC2 code adds 1e-9 to a sum that is 1 after the softmax; SPEC has no such
term and the ops follow SPEC). Only NaN values are replaced; +-inf values are kept (see
:func:`cdred_fast.reference.mppi_elite_update` for how the weights stay finite).

Reward, dynamics (and termination) are taken to be deterministic functions of ``(z, a)``, as
TD-MPC2's and CDRED's are in eval mode: the ``N_pi`` policy sequences keep their actions through
the ``J`` iterations, so their rewards and last latents are computed once per plan, and only
their bootstrap ``Q(z_H, pi(z_H))`` is redrawn in every iteration, like every other row's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from . import ops
from .config import CDREDConfig, discount_heuristic
from .ops import resolve_impl
from .layers import symexp, two_hot_inv

_FLOATS = (torch.float32, torch.float64)


# =============================================================================== the shared MPPI core
@dataclass(frozen=True)
class MPPISettings:
    """The sizes and constants of one MPPI plan (SPEC section 4 names in brackets).

    ``iterations`` is the final count (any ``+2 when A >= 20`` already applied).
    """

    horizon: int  # H
    num_samples: int  # N, policy sequences included
    num_elites: int  # k
    num_pi_trajs: int  # N_pi
    iterations: int  # J
    temperature: float  # tau
    min_std: float
    max_std: float
    action_dim: int  # A

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

        for name in ("horizon", "num_samples", "num_elites", "num_pi_trajs", "iterations", "action_dim"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), name, "an int")
        need(self.horizon >= 1, "horizon", ">= 1")
        need(self.num_samples >= 1, "num_samples", ">= 1")
        need(0 <= self.num_pi_trajs < self.num_samples, "num_pi_trajs",
             f"in [0, num_samples) = [0, {self.num_samples}) (at least one sampled sequence)")
        need(1 <= self.num_elites <= self.num_samples, "num_elites", f"in [1, num_samples] = [1, {self.num_samples}]")
        need(self.iterations >= 1, "iterations", ">= 1")
        need(self.action_dim >= 1, "action_dim", ">= 1")
        need(float(self.temperature) > 0, "temperature", "> 0")
        need(float(self.min_std) > 0, "min_std", "> 0")
        need(float(self.max_std) >= float(self.min_std), "max_std", f">= min_std = {self.min_std}")


@dataclass(frozen=True)
class RolloutFunctions:
    """The world model as the MPPI loop sees it. Every function maps ``R`` rows to ``R`` rows.

    * ``policy(z [R, L]) -> a [R, A]``: an action sampled from the policy prior.
    * ``dynamics(z [R, L], a [R, A]) -> z' [R, L]``.
    * ``reward(z, a) -> [R]`` and ``value(z, a) -> [R]`` (``Q`` of the last latent and ``pi``'s action).
    * ``termination(z) -> [R]`` in {0, 1} (1: the episode has ended before ``z``'s step), or None.
    """

    policy: Callable[[Tensor], Tensor]
    dynamics: Callable[[Tensor, Tensor], Tensor]
    reward: Callable[[Tensor, Tensor], Tensor]
    value: Callable[[Tensor, Tensor], Tensor]
    termination: Optional[Callable[[Tensor], Tensor]] = None


def policy_rollout(fns: RolloutFunctions, z: Tensor, horizon: int) -> Tensor:
    """SPEC step 1: roll ``pi`` and ``d`` from ``z [R, L]`` for ``H`` steps; returns ``[H, R, A]``."""
    actions = []
    for _ in range(horizon - 1):
        a = fns.policy(z)
        actions.append(a)
        z = fns.dynamics(z, a)
    actions.append(fns.policy(z))
    return torch.stack(actions)


def rollout_return(fns: RolloutFunctions, z: Tensor, actions: Tensor, discount: Union[float, Tensor]):
    """The model-rollout part of a sequence's value, ``sum_t gamma^t R(z_t, a_t)``, for ``z [R, L]``
    and ``actions [H, R, A]``; ``discount`` is a number or a per-row tensor ``[R]``.

    With a termination function, TD-MPC2's episodic rule: a row stops collecting reward (and the
    bootstrap) after a step whose next latent is terminal. Returns ``(G [R], z_H [R, L], gamma^H,
    done)`` with ``gamma^H`` a number or ``[R]`` and ``done`` ``[R]`` or None (no termination).
    Reward and dynamics are deterministic, so the rows of a fixed action sequence (the policy
    prior's) give the same result in every MPPI iteration.
    """
    G, gamma_t, done = 0.0, 1.0, None
    for t in range(actions.shape[0]):
        r = fns.reward(z, actions[t])
        z = fns.dynamics(z, actions[t])
        G = G + gamma_t * (r if done is None else (1.0 - done) * r)
        gamma_t = gamma_t * discount
        if fns.termination is not None:
            term = fns.termination(z)
            done = term if done is None else torch.clamp(done + term, max=1.0)
    return G, z, gamma_t, done


def bootstrap_value(fns: RolloutFunctions, G: Tensor, z: Tensor, gamma_h, done: Optional[Tensor]) -> Tensor:
    """``G + gamma^H Q(z_H, pi(z_H))`` (0 for rows that terminated), from :func:`rollout_return`'s results."""
    q = fns.value(z, fns.policy(z))
    return G + gamma_h * (q if done is None else (1.0 - done) * q)


def trajectory_value(fns: RolloutFunctions, z: Tensor, actions: Tensor, discount: Union[float, Tensor]) -> Tensor:
    """``G = sum_t gamma^t R(z_t, a_t) + gamma^H Q(z_H, pi(z_H))`` for ``z [R, L]``, ``actions [H, R, A]``.

    ``discount`` is a number or a per-row tensor ``[R]``; termination as in :func:`rollout_return`.
    Returns ``[R]``; NaN is left to the elite update (it counts as 0 there).
    """
    return bootstrap_value(fns, *rollout_return(fns, z, actions, discount))


def _merge_rows(first: Any, second: Any, B: int) -> Any:
    """Interleave per-problem row blocks: ``first [B * n1, ...]`` and ``second [B * n2, ...]`` ->
    ``[B * (n1 + n2), ...]`` with each problem's ``first`` rows before its ``second`` rows (the
    candidate order of :func:`mppi_plan`). Numbers and None pass through (they are the same for all rows)."""
    if not isinstance(first, Tensor):
        return first
    a = first.reshape(B, -1, *first.shape[1:])
    b = second.reshape(B, -1, *second.shape[1:])
    return torch.cat([a, b], dim=1).reshape(-1, *first.shape[1:])


def warm_start(prev_mean: Optional[Tensor], t0: Union[bool, Tensor], B: int, H: int, A: int, dtype, device) -> Tensor:
    """SPEC step 2: ``[B, H, A]`` zeros, or the previous mean ``[B, H, A]`` shifted one step earlier
    (last step 0) for the problems that are not at an episode start. ``t0``: a bool or a bool ``[B]``."""
    mean = torch.zeros(B, H, A, dtype=dtype, device=device)
    if prev_mean is None or (isinstance(t0, bool) and t0):
        return mean
    shifted = torch.zeros_like(mean)
    shifted[:, :-1] = prev_mean[:, 1:]
    if isinstance(t0, bool):
        return shifted
    return torch.where(t0.to(device=device, dtype=torch.bool).view(B, 1, 1), mean, shifted)


@torch.no_grad()
def mppi_plan(
    fns: RolloutFunctions,
    z: Tensor,
    mean: Tensor,
    settings: MPPISettings,
    *,
    discount: Union[float, Tensor],
    mask: Optional[Tensor] = None,
    eval_mode: bool = False,
    generator: Optional[torch.Generator] = None,
    impl: str = "fused",
) -> tuple[Tensor, Tensor]:
    """The MPPI loop of SPEC section 4 for ``B`` independent problems; the one implementation.

    Args:
        fns: the model (:class:`RolloutFunctions`); rows are problem-major (row ``b * n + i``).
        z: latents ``[B, L]``.
        mean: initial mean ``[B, H, A]`` (see :func:`warm_start`); its dtype is the plan's dtype.
        settings: :class:`MPPISettings`.
        discount: ``gamma``, a number or one per problem ``[B]``.
        mask: ``[B, A]`` action masks (TD-MPC2 multitask): sequences, mean and std are multiplied by it.
        eval_mode: no exploration noise on the returned action.
        generator: source of the MPPI draws (sampling, elite choice, noise), in the ops' order.
        impl: ``"fused"`` or ``"reference"`` (see :func:`cdred_fast.ops.resolve_impl`).

    Returns: ``(action [B, A], mean [B, H, A])`` - the action to execute and the final mean.
    """
    s = settings
    B, L = z.shape
    H, N, n_pi, A = s.horizon, s.num_samples, s.num_pi_trajs, s.action_dim
    dtype, device = mean.dtype, mean.device
    std = torch.full((B, H, A), float(s.max_std), dtype=dtype, device=device)
    mask3 = None if mask is None else mask.to(dtype).view(B, 1, A)
    n_s = N - n_pi  # sampled sequences per problem (>= 1)
    discount_s = discount if isinstance(discount, (int, float)) else discount.repeat_interleave(n_s)

    pi_actions, pi_rollout = None, None
    if n_pi > 0:  # step 1: the N_pi policy sequences, candidates 0 .. N_pi - 1 of every problem
        z_pi = z.unsqueeze(1).expand(B, n_pi, L).reshape(B * n_pi, L)
        pi_actions = policy_rollout(fns, z_pi, H).to(dtype)  # [H, B * N_pi, A]
        if mask3 is not None:
            pi_actions = pi_actions * mask.to(dtype).repeat_interleave(n_pi, dim=0)
        # Their actions are the same in every iteration, and reward and dynamics are deterministic,
        # so their rewards and last latents are computed once per plan, not J times. Only the
        # bootstrap Q(z_H, pi(z_H)) is redrawn each iteration (pi's noise, the two Q heads).
        discount_pi = discount if isinstance(discount, (int, float)) else discount.repeat_interleave(n_pi)
        pi_rollout = rollout_return(fns, z_pi, pi_actions, discount_pi)
        pi_actions = pi_actions.reshape(H, B, n_pi, A).permute(1, 0, 2, 3)  # [B, H, N_pi, A]
    z_rows = z.unsqueeze(1).expand(B, n_s, L).reshape(B * n_s, L)

    for _ in range(s.iterations):  # step 3
        sampled = ops.mppi_sample(mean, std, n_s, generator, impl=impl)  # [B, H, N - N_pi, A]
        if mask3 is not None:
            sampled = sampled * mask3.unsqueeze(2)
        rollout = rollout_return(fns, z_rows, sampled.permute(1, 0, 2, 3).reshape(H, B * n_s, A), discount_s)
        if pi_rollout is not None:
            actions = torch.cat([pi_actions, sampled], dim=2)  # [B, H, N, A]
            rollout = tuple(_merge_rows(p, r, B) for p, r in zip(pi_rollout, rollout))
        else:
            actions = sampled
        values = bootstrap_value(fns, *rollout).reshape(B, N).to(dtype)
        mean, std, elite_actions, weights, _ = ops.mppi_elite_update(
            values, actions, s.num_elites, float(s.temperature), float(s.min_std), float(s.max_std), impl=impl
        )
        if mask3 is not None:
            mean, std = mean * mask3, std * mask3
    # step 4: one elite per problem drawn with probability w, its first action (+ std_0 * eps), clamped
    action = ops.mppi_select(elite_actions, weights, std, bool(eval_mode), generator, impl=impl)
    return action, mean


def _check_generator_device(generator: Optional[torch.Generator], device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is a {generator.device.type} generator but the plan runs on {device}; "
            f"pass a torch.Generator(device={device.type!r}) (or None for the default generator)"
        )


# ------------------------------------------------------------------------------- CUDA graphs of a plan
def _check_capturable_impl(impl: str, where: str) -> None:
    """A plan is recorded in a CUDA graph only on the fused ops: the reference mppi_select calls
    torch.multinomial, whose check of the weights reads a value on the host (not capturable)."""
    if impl != "fused":
        raise RuntimeError(
            f"{where}: capture_graph=True needs the fused CUDA ops, but the plan would run on the reference ops "
            "(kernels='reference', or an extension built without CUDA kernels: see cdred_fast.build_info()); the "
            "reference mppi_select calls torch.multinomial, which synchronises with the host and cannot be recorded"
        )


def _record_plan_graph(body: Callable[[], tuple[Tensor, Tensor]], device: torch.device,
                       generator: Optional[torch.Generator]) -> tuple["torch.cuda.CUDAGraph", Tensor, Tensor]:
    """Record ``body() -> (action, mean)`` in a CUDA graph: two warm-up runs on a side stream
    (lazy initialisation, cuBLAS workspaces: they draw from the generator like any plan), then
    the capture. ``generator`` (None: the default CUDA generator, which graphs track by
    themselves) is registered with the graph, so each replay draws from its state at that
    moment and advances it. Returns ``(graph, action, mean)``: the outputs are the graph's
    static tensors, overwritten by every replay."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        register = getattr(graph, "register_generator_state", None)
        if register is None:
            raise RuntimeError(
                "capture_graph=True with a custom generator needs CUDAGraph.register_generator_state "
                "(a newer PyTorch); pass generator=None to use the default CUDA generator"
            )
        register(generator)
    try:
        with torch.cuda.graph(graph):
            action, mean = body()
    except Exception as exc:  # the model did something a CUDA graph cannot record
        raise RuntimeError(
            f"CUDA-graph capture of the plan failed ({type(exc).__name__}: {exc}); the model's methods must be "
            "capturable (no host synchronisation, no CPU tensors); use capture_graph=False"
        ) from exc
    return graph, action, mean


class _PlanGraph:
    """One plan recorded in a CUDA graph and replayed with new inputs.

    The graph's inputs are static tensors: the latents ``z [B, L]``, the previous mean
    ``[B, H, A]`` and the ``t0`` flags ``[B]`` (the warm start is computed inside the graph, as
    :func:`warm_start` with a tensor flag). ``plan(z, mean0) -> (action, mean)`` is the plan to
    record; ``keep_alive`` holds what the graph reads on every replay (functions, masks, ...)."""

    def __init__(self, z: Tensor, horizon: int, action_dim: int, dtype, plan, generator, keep_alive):
        B, device = z.shape[0], z.device
        self.z = z.clone()
        self.prev = torch.zeros(B, horizon, action_dim, dtype=dtype, device=device)
        self.t0 = torch.ones(B, dtype=torch.bool, device=device)

        def body():
            return plan(self.z, warm_start(self.prev, self.t0, B, horizon, action_dim, dtype, device))

        self.graph, self.action, self.mean = _record_plan_graph(body, device, generator)
        self._keep_alive = keep_alive

    def replay(self, z: Tensor, prev: Optional[Tensor], t0) -> tuple[Tensor, Tensor]:
        """Copy ``z``, the previous mean (None: zeros) and ``t0`` (a bool or one per problem) into
        the graph's inputs, replay it, and return copies of ``(action, mean)``."""
        self.z.copy_(z)
        if prev is None:
            self.prev.zero_()
        else:
            self.prev.copy_(prev)
        self.t0.copy_(torch.as_tensor(t0, dtype=torch.bool, device=self.t0.device).expand_as(self.t0))
        self.graph.replay()
        return self.action.clone(), self.mean.clone()


# =============================================================================== CDRED agent's planner
class MPPIPlanner:
    """MPPI of SPEC section 4 for the CDRED agent, through :func:`mppi_plan` (one problem per call).

    Args:
        cfg: the config (horizon, num_samples, num_elites, num_pi_trajs, iterations, temperature,
            min_std, max_std, the discount and ``kernels``: ``"fused"`` (default) plans through the
            fused ops, ``"reference"`` through their pure-PyTorch twins).
        model: a :class:`cdred_fast.world_model.WorldModel` (or anything with ``pi(z, generator=)``,
            ``next(z, a)``, ``reward(z, a)``, ``Q(z, a, "avg", generator=)`` and a ``planning()``
            context manager that puts it in eval mode).
        action_dim: ``A``; sets the number of iterations (+2 when ``A >= 20``).
        device: where the plan's tensors live.
        discount: overrides ``cfg.discount_for()``.
        capture_graph: replay each plan from a CUDA graph (default ``cfg.capture_graph``): the
            first plan with a given ``eval_mode`` and generator records the whole plan, later
            ones copy ``z`` and the warm start into the graph's inputs and replay it. Same
            actions as the eager plan from the same generator state. Needs ``device`` to be a
            CUDA device and the fused CUDA ops (``RuntimeError`` otherwise, here). Not yet run on
            a GPU by this project; python_tests/test_planner.py checks it where CUDA is available.
    """

    def __init__(self, cfg: CDREDConfig, model, action_dim: int, device="cpu", discount: Optional[float] = None,
                 capture_graph: Optional[bool] = None):
        self.cfg = cfg
        self.model = model
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.discount = float(cfg.discount_for() if discount is None else discount)
        self.iterations = cfg.iterations_for(self.action_dim)
        self.impl = resolve_impl(cfg.kernels, self.device)
        self.settings = MPPISettings(
            horizon=cfg.horizon, num_samples=cfg.num_samples, num_elites=cfg.num_elites,
            num_pi_trajs=cfg.num_pi_trajs, iterations=self.iterations, temperature=cfg.temperature,
            min_std=cfg.min_std, max_std=cfg.max_std, action_dim=self.action_dim,
        )
        capture_graph = getattr(cfg, "capture_graph", False) if capture_graph is None else capture_graph
        if not isinstance(capture_graph, bool):
            raise TypeError(f"capture_graph must be a bool, got {type(capture_graph).__name__}")
        if capture_graph:
            if self.device.type != "cuda" or not torch.cuda.is_available():
                raise RuntimeError(
                    f"capture_graph=True (CDREDConfig.capture_graph) replays plans from a CUDA graph and needs a CUDA "
                    f"device, but the planner is on {self.device}"
                    + ("" if torch.cuda.is_available() else " and torch.cuda.is_available() is False")
                    + "; use capture_graph=False"
                )
            _check_capturable_impl(self.impl, "MPPIPlanner")
        self.capture_graph = capture_graph
        self._graphs: dict = {}  # (eval_mode, generator id, dtype) -> _PlanGraph
        self._prev_mean: Optional[Tensor] = None  # the last plan's mean [H, A], for the warm start

    def reset(self) -> None:
        """Forget the warm start (the next plan starts from mean 0)."""
        self._prev_mean = None

    @property
    def prev_mean(self) -> Optional[Tensor]:
        """The last plan's mean ``[H, A]`` (the next plan's warm start), or None after :meth:`reset`."""
        return self._prev_mean

    def rollout_functions(self, generator: Optional[torch.Generator] = None) -> RolloutFunctions:
        """The model as :func:`mppi_plan` sees it; the policy's noise and the Q heads come from ``generator``."""
        m = self.model
        return RolloutFunctions(
            policy=lambda z: m.pi(z, generator=generator)[1],  # a sampled action
            dynamics=m.next,
            reward=m.reward,
            value=lambda z, a: m.Q(z, a, "avg", generator=generator),
        )

    def initial_mean(self, t0: bool) -> Tensor:
        """Step 2: zeros ``[H, A]``, or (when not at the episode start) the previous mean shifted one step."""
        prev = None if self._prev_mean is None else self._prev_mean.unsqueeze(0)
        return warm_start(prev, bool(t0), 1, self.cfg.horizon, self.action_dim, torch.float32, self.device)[0]

    @torch.no_grad()
    def policy_trajectories(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Step 1: roll ``pi`` (sampled actions) and ``d`` from ``z [1, L]``: ``[H, N_pi, A]``."""
        z = z.reshape(1, -1).expand(self.cfg.num_pi_trajs, -1)
        return policy_rollout(self.rollout_functions(generator), z, self.cfg.horizon)

    @torch.no_grad()
    def estimate_value(self, z: Tensor, actions: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """``G = sum_t gamma^t R(z_t, a_t) + gamma^H Q_avg(z_H, pi(z_H))``.

        ``z [N, L]``, ``actions [H, N, A]`` -> ``[N]``."""
        return trajectory_value(self.rollout_functions(generator), z, actions, self.discount)

    @torch.no_grad()
    def plan(
        self, z: Tensor, t0: bool = False, eval_mode: bool = False, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Plan from latent ``z`` (``[L]`` or ``[1, L]``) and return the action ``[A]`` (SPEC section 4).

        Draws, all from ``generator`` (on the planner's device type; the default generator when
        None): the policy's noise for the N_pi sequences, then per iteration the sampled sequences,
        the policy noise and Q heads of the value, then the elite choice and (unless ``eval_mode``)
        the exploration noise.
        """
        _check_generator_device(generator, self.device)
        with self.model.planning():  # eval mode: Q dropout off
            z = z.reshape(1, -1).to(self.device)
            if self.capture_graph:
                action, mean = self._plan_graphed(z, bool(t0), bool(eval_mode), generator)
            else:
                mean = self.initial_mean(t0).unsqueeze(0)
                action, mean = mppi_plan(
                    self.rollout_functions(generator), z, mean, self.settings, discount=self.discount,
                    eval_mode=eval_mode, generator=generator, impl=self.impl,
                )
            self._prev_mean = mean[0]
            return action[0]

    def _plan_graphed(self, z: Tensor, t0: bool, eval_mode: bool, generator: Optional[torch.Generator]):
        """The plan replayed from a CUDA graph: ``(action [1, A], mean [1, H, A])``, copies.

        One graph per (eval_mode, generator object, dtype of z); reuse one generator (or None)
        across plans."""
        key = (eval_mode, None if generator is None else id(generator), z.dtype)
        graph = self._graphs.get(key)
        if graph is None:
            fns = self.rollout_functions(generator)

            def plan(z, mean0):
                return mppi_plan(fns, z, mean0, self.settings, discount=self.discount, eval_mode=eval_mode,
                                 generator=generator, impl=self.impl)

            graph = _PlanGraph(z, self.cfg.horizon, self.action_dim, torch.float32, plan, generator,
                               keep_alive=(fns, generator))
            self._graphs[key] = graph
        prev = None if self._prev_mean is None else self._prev_mean.unsqueeze(0)
        return graph.replay(z, prev, t0)


# =============================================================================== drop-in Planner
_MISSING = object()
API_CHOICES = ("tdmpc2", "tdmpc2-2023", "scalar-reward")
# (how pi's action is read, how reward is decoded) for each API generation
_API_LAYOUT = {
    "tdmpc2": ("(action, info)", "two-hot"),
    "tdmpc2-2023": ("(mu, pi, log_pi, log_std)", "two-hot"),
    "scalar-reward": ("(mu, pi, log_pi, log_std)", "scalar"),
}
_REQUIRED_FIELDS = (
    "horizon", "num_samples", "num_elites", "num_pi_trajs", "iterations", "temperature", "min_std", "max_std",
    "action_dim",
)
_MODEL_METHODS = {
    "next": "next(z, a, task) -> z'",
    "reward": "reward(z, a, task) -> reward (two-hot logits or a scalar)",
    "Q": "Q(z, a, task, return_type='avg') -> Q value",
    "pi": "pi(z, task) -> (action, info) or (mu, pi, log_pi, log_std)",
}


def _cfg_get(cfg: Any, name: str, default: Any = _MISSING) -> Any:
    """``cfg.name`` or ``cfg[name]`` (dicts, OmegaConf DictConfig, dataclasses, namespaces)."""
    try:
        if isinstance(cfg, Mapping):
            return cfg[name] if name in cfg else default
        return getattr(cfg, name)
    except Exception:  # AttributeError, OmegaConf's missing-value errors
        return default


def _shape(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, Tensor) else f"a {type(x).__name__}"


def _decode_two_hot(logits: Tensor, num_bins: int, vmin: float, vmax: float) -> Tensor:
    """TD-MPC2's ``math.two_hot_inv``: identity (0 bins), symexp (1 bin), else ``symexp(E_softmax[bins])``."""
    if num_bins == 0:
        return logits
    if num_bins == 1:
        return symexp(logits)
    return two_hot_inv(logits, vmin, vmax)


def _rows(x: Tensor, R: int, what: str) -> Tensor:
    """``[R]`` or ``[R, 1]`` -> ``[R]``."""
    if not isinstance(x, Tensor) or x.numel() != R:
        raise ValueError(f"{what} must give one value per row ([{R}] or [{R}, 1]), got {_shape(x)}")
    return x.reshape(R)


class Planner:
    """A fused MPPI planner, drop-in for TD-MPC2 codebases (SPEC section 4 / TD-MPC2's ``plan``).

    Args:
        model: a world model with TD-MPC2's methods ``next(z, a, task)``, ``reward(z, a, task)``,
            ``Q(z, a, task, return_type="avg")``, ``pi(z, task)`` (+ ``termination(z, task)`` when
            ``cfg.episodic``; ``model._action_masks [num_tasks, A]`` when ``cfg.multitask``).
        cfg: TD-MPC2's config (attribute access or dict-like). Read: ``horizon``, ``num_samples``,
            ``num_elites``, ``num_pi_trajs``, ``iterations``, ``temperature``, ``min_std``, ``max_std``,
            ``action_dim``; ``multitask`` and ``episodic`` (default False); ``num_bins``, ``vmin``,
            ``vmax`` (to decode two-hot rewards); the discount: ``discount`` (a number, or one per
            task) if present, else TD-MPC2's heuristic from ``episode_length`` (``episode_lengths``
            per task when multitask) with ``discount_denom`` / ``discount_min`` / ``discount_max``
            (defaults 5 / 0.95 / 0.995). The cfg is never modified.
        api: ``"tdmpc2"`` (``pi`` returns ``(action, info)``, ``reward`` two-hot logits),
            ``"tdmpc2-2023"`` (``pi`` returns ``(mu, pi, log_pi, log_std)``, ``reward`` two-hot
            logits), ``"scalar-reward"`` (the 2023 ``pi``, ``reward`` a scalar ``[M]``/``[M, 1]``: the
            CDRED and IQ-MPC forks), or None: detected on a dry run of the model at the first plan
            (see :meth:`detect`).
        kernels: ``"fused"`` or ``"reference"`` (pure-PyTorch ops); see :func:`cdred_fast.ops.resolve_impl`.
        iterations: total MPPI iterations; default ``cfg.iterations + 2`` when ``action_dim >= 20``
            (TD-MPC2's heuristic; its agent adds the 2 to ``cfg.iterations`` in place, so a cfg that
            went through ``TDMPC2.__init__`` should pass ``iterations=cfg.iterations``).
        discount: overrides the cfg's discount (a number, or a sequence with one per task).
        capture_graph: replay each plan from a CUDA graph captured on its first call (CUDA only).
    """

    def __init__(
        self,
        model,
        cfg,
        api: Optional[str] = None,
        kernels: str = "fused",
        *,
        iterations: Optional[int] = None,
        discount: Union[None, float, Sequence[float]] = None,
        capture_graph: bool = False,
    ):
        if api is not None and api not in API_CHOICES:
            raise ValueError(f"api must be one of {API_CHOICES} or None (detect), got {api!r}")
        if not isinstance(capture_graph, bool):
            raise TypeError(f"capture_graph must be a bool, got {type(capture_graph).__name__}")
        if capture_graph and not torch.cuda.is_available():
            raise RuntimeError(
                "capture_graph=True needs CUDA (it records the plan in a CUDA graph), but "
                "torch.cuda.is_available() is False; use capture_graph=False on CPU"
            )
        self.cfg = cfg
        self.model = model
        self.kernels = kernels
        resolve_impl(kernels)  # validates the choice now
        self.capture_graph = capture_graph
        self.multitask = bool(_cfg_get(cfg, "multitask", False))
        self.episodic = bool(_cfg_get(cfg, "episodic", False))
        self._user_fns: Optional[RolloutFunctions] = None
        self._api = api
        self._detected = False

        missing = [name for name in _REQUIRED_FIELDS if _cfg_get(cfg, name, None) is None]
        if missing:
            raise ValueError(
                f"cfg is missing the planning field(s) {', '.join(missing)}; Planner reads TD-MPC2's names: "
                f"{', '.join(_REQUIRED_FIELDS)}"
            )
        A = int(_cfg_get(cfg, "action_dim"))
        J = int(_cfg_get(cfg, "iterations")) + (2 if A >= 20 else 0) if iterations is None else iterations
        self.settings = MPPISettings(
            horizon=int(_cfg_get(cfg, "horizon")), num_samples=int(_cfg_get(cfg, "num_samples")),
            num_elites=int(_cfg_get(cfg, "num_elites")), num_pi_trajs=int(_cfg_get(cfg, "num_pi_trajs")),
            iterations=J, temperature=float(_cfg_get(cfg, "temperature")),
            min_std=float(_cfg_get(cfg, "min_std")), max_std=float(_cfg_get(cfg, "max_std")), action_dim=A,
        )
        self._discounts = self._resolve_discount(discount)  # [gamma] or one per task

        if model is not None:
            needed = dict(_MODEL_METHODS)
            if self.episodic:
                needed["termination"] = "termination(z, task) -> probability (cfg.episodic is set)"
            absent = [sig for name, sig in needed.items() if not callable(getattr(model, name, None))]
            if absent:
                raise TypeError(
                    f"model {type(model).__name__} is missing the TD-MPC2 world-model method(s): {'; '.join(absent)}. "
                    "For another model use Planner.from_functions(dynamics=, reward=, value=, policy=, cfg=)"
                )
            if self.multitask and not isinstance(getattr(model, "_action_masks", None), Tensor):
                raise TypeError(
                    "cfg.multitask is set but the model has no tensor attribute _action_masks [num_tasks, action_dim] "
                    "(TD-MPC2's per-task action masks)"
                )
            if api is not None and _layout_needs_bins(api):
                self._require_bins()
        self._prev_mean: Optional[Tensor] = None  # [B, H, A]
        self._graphs: dict = {}

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_functions(
        cls,
        *,
        dynamics: Callable[[Tensor, Tensor], Tensor],
        reward: Callable[[Tensor, Tensor], Tensor],
        value: Callable[[Tensor, Tensor], Tensor],
        policy: Callable[[Tensor], Tensor],
        cfg,
        termination: Optional[Callable[[Tensor], Tensor]] = None,
        kernels: str = "fused",
        iterations: Optional[int] = None,
        discount: Optional[float] = None,
        capture_graph: bool = False,
    ) -> "Planner":
        """A planner for any model, given as functions on row batches (``M`` rows):

        ``dynamics(z [M, L], a [M, A]) -> [M, L]``; ``reward(z, a) -> [M]`` or ``[M, 1]`` (a scalar
        reward); ``value(z, a) -> [M]`` or ``[M, 1]`` (the bootstrap, called as
        ``value(z_H, policy(z_H))``); ``policy(z) -> [M, A]`` (a sample of the policy prior);
        ``termination(z) -> [M]`` probability that the episode has ended (``> 0.5`` counts, as in
        TD-MPC2), optional. ``cfg`` as for the constructor (``multitask`` is not supported here).
        """
        fns = {"dynamics": dynamics, "reward": reward, "value": value, "policy": policy}
        absent = [name for name, f in fns.items() if not callable(f)]
        if absent:
            raise TypeError(f"Planner.from_functions needs callables for: {', '.join(absent)}")
        if termination is not None and not callable(termination):
            raise TypeError("termination must be a callable or None")
        if bool(_cfg_get(cfg, "multitask", False)):
            raise ValueError("Planner.from_functions does not support cfg.multitask; fold the task into the functions")
        self = cls(None, cfg, None, kernels, iterations=iterations, discount=discount, capture_graph=capture_graph)
        self._user_fns = RolloutFunctions(policy=policy, dynamics=dynamics, reward=reward, value=value,
                                          termination=termination)
        self._api, self._detected = "functions", True
        return self

    @classmethod
    def from_agent(cls, agent, capture_graph: bool = False) -> "Planner":
        """The drop-in planner around a :class:`cdred_fast.CDREDAgent`'s world model, with the
        agent's MPPI settings, kernels and discount: it plans exactly like ``agent.planner``
        (same draws from the same generator state), with this class's options on top, e.g.
        ``capture_graph=True`` to replay the whole plan from a CUDA graph. The agent's warm start
        is not shared (this planner keeps its own ``prev_mean``)."""
        c, m, iterations = agent.cfg, agent.model, agent.planner.iterations
        settings = {name: getattr(c, name) for name in (
            "horizon", "num_samples", "num_elites", "num_pi_trajs", "temperature", "min_std", "max_std")}
        return cls.from_functions(
            dynamics=m.next, reward=m.reward, value=lambda z, a: m.Q(z, a, "avg"), policy=lambda z: m.pi(z)[1],
            cfg={**settings, "iterations": iterations, "action_dim": agent.action_dim},
            kernels=c.kernels, iterations=iterations, discount=agent.discount, capture_graph=capture_graph,
        )

    def _require_bins(self) -> tuple[int, float, float]:
        got = {name: _cfg_get(self.cfg, name, None) for name in ("num_bins", "vmin", "vmax")}
        missing = [name for name, v in got.items() if v is None]
        if missing:
            raise ValueError(
                f"cfg is missing {', '.join(missing)}, needed to decode the model's two-hot reward logits "
                "(TD-MPC2's two_hot_inv: symexp of the softmax expectation over num_bins bins in [vmin, vmax])"
            )
        return int(got["num_bins"]), float(got["vmin"]), float(got["vmax"])

    def _resolve_discount(self, discount) -> list[float]:
        cfg = self.cfg
        value = discount if discount is not None else _cfg_get(cfg, "discount", None)
        if value is not None:
            values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)]
        else:
            name = "episode_lengths" if self.multitask else "episode_length"
            lengths = _cfg_get(cfg, name, None)
            if lengths is None:
                raise ValueError(
                    f"the discount is unknown: cfg has no 'discount' and no '{name}' (TD-MPC2 derives the discount "
                    "from it with discount_denom, discount_min, discount_max); set one of them or pass discount="
                )
            lengths = list(lengths) if self.multitask else [lengths]
            denom = float(_cfg_get(cfg, "discount_denom", 5.0))
            dmin, dmax = float(_cfg_get(cfg, "discount_min", 0.95)), float(_cfg_get(cfg, "discount_max", 0.995))
            values = [discount_heuristic(int(T), denom, dmin, dmax) for T in lengths]
        if not values or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"the discount must be in [0, 1] (one per task when multitask), got {values}")
        if len(values) > 1 and not self.multitask:
            raise ValueError(f"got {len(values)} discounts but cfg.multitask is not set; give one number")
        return values

    # ------------------------------------------------------------------ public state
    @property
    def api(self) -> Optional[str]:
        """The model API: the explicit ``api``, the detected one after the first plan (None before),
        or ``"functions"`` for :meth:`from_functions`."""
        return self._api

    @property
    def prev_mean(self) -> Optional[Tensor]:
        """The last plan's mean ``[B, H, A]`` (the next warm start), or None."""
        return self._prev_mean

    @property
    def iterations(self) -> int:
        return self.settings.iterations

    def reset(self) -> None:
        """Forget the warm start: the next plan starts from mean 0 for every problem."""
        self._prev_mean = None

    # ------------------------------------------------------------------ API detection
    @torch.no_grad()
    def detect(self, z: Tensor, task=None) -> str:
        """Dry-run the model on two rows of ``z`` and fix (or check) the API; returns its name.

        Detection: ``pi(z, task)`` returning 2 items is the current TD-MPC2 API (``(action, info)``,
        action = item 0), 4 items the 2023 one (``(mu, pi, log_pi, log_std)``, action = item 1).
        ``reward(z, a, task)`` of shape ``[M, num_bins]`` (``num_bins >= 2``) is two-hot logits; of
        shape ``[M]`` / ``[M, 1]`` a scalar (with ``num_bins == 1`` TD-MPC2 would apply symexp to it:
        ambiguous, pass ``api`` explicitly). Anything else raises an error naming what was returned
        and what was expected. The dry run does not change the random state.
        """
        if self._user_fns is not None:
            return "functions"
        z = self._as_rows(z)
        z2 = z[:1].expand(2, -1)
        task_state = self._task_state(task, z.shape[0], z.device)
        if task_state is not None and task_state["per_row"]:
            task2 = task_state["ids_dev"][:1].expand(2)  # the first problem's task
        else:
            task2 = self._model_task(task_state, 2)
        model = self.model
        devices = [z.device.index if z.device.index is not None else torch.cuda.current_device()] if z.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            out = model.pi(z2, task2)
            if not isinstance(out, (tuple, list)) or len(out) not in (2, 4):
                got = f"{len(out)} items" if isinstance(out, (tuple, list)) else _shape(out)
                raise TypeError(
                    f"model.pi(z, task) returned {got}; "
                    "Planner needs (action, info) [TD-MPC2] or (mu, pi, log_pi, log_std) [TD-MPC2 2023, CDRED, IQ-MPC]"
                )
            pi_style = "(action, info)" if len(out) == 2 else "(mu, pi, log_pi, log_std)"
            a = out[0] if len(out) == 2 else out[1]
            A = self.settings.action_dim
            if not isinstance(a, Tensor) or tuple(a.shape) != (2, A):
                raise ValueError(
                    f"model.pi(z [2, L], task) gave an action of {_shape(a)}; expected [2, action_dim={A}]"
                )
            z_next = model.next(z2, a, task2)
            if not isinstance(z_next, Tensor) or tuple(z_next.shape) != tuple(z2.shape):
                raise ValueError(f"model.next(z [2, L], a, task) returned {_shape(z_next)}; expected {list(z2.shape)}")
            r = model.reward(z2, a, task2)
            q = model.Q(z2, a, task2, return_type="avg")
            _rows(q, 2, "model.Q(z, a, task, return_type='avg')")
            if self.episodic:
                _rows(model.termination(z_next, task2), 2, "model.termination(z, task)")
        if not isinstance(r, Tensor):
            raise TypeError(f"model.reward(z, a, task) returned {_shape(r)}; expected a Tensor")
        bins = _cfg_get(self.cfg, "num_bins", None)
        width = 1 if r.dim() == 1 else r.shape[-1]
        if r.dim() not in (1, 2) or r.shape[0] != 2:
            raise ValueError(
                f"model.reward(z [2, L], a, task) returned {_shape(r)}; expected [2, num_bins] or [2] / [2, 1]"
            )

        api = self._choose_api(pi_style, width, bins, r) if self._api is None else self._api
        want_pi, want_reward = _API_LAYOUT[api]
        if pi_style != want_pi:
            raise ValueError(f"api={api!r} expects model.pi to return {want_pi}, but it returned {len(out)} items")
        if want_reward == "two-hot":
            nb = self._require_bins()[0]
            if width != max(nb, 1):
                raise ValueError(
                    f"api={api!r}: model.reward returned {_shape(r)}, expected [M, {max(nb, 1)}] for num_bins={nb}"
                )
        elif width != 1:
            raise ValueError(f"api='scalar-reward': model.reward returned {_shape(r)}, expected [M] or [M, 1]")
        self._api, self._detected = api, True
        return api

    @staticmethod
    def _choose_api(pi_style: str, width: int, bins, r: Tensor) -> str:
        """The API generation from pi's tuple length and the reward's width (see :meth:`detect`)."""
        pi_2023 = pi_style != "(action, info)"
        if width >= 2:  # two-hot logits
            if bins is None or int(bins) != width:
                raise ValueError(
                    f"model.reward returned {width} values per row (two-hot logits?) but cfg.num_bins is {bins}; "
                    "they must match to decode the reward"
                )
            return "tdmpc2-2023" if pi_2023 else "tdmpc2"
        if bins is not None and int(bins) == 1:
            raise ValueError(
                "model.reward returned one value per row and cfg.num_bins == 1: TD-MPC2 would decode it with "
                "symexp, a scalar-reward fork would not. Pass api='tdmpc2' / 'tdmpc2-2023' (symexp) or "
                "api='scalar-reward' (as is)"
            )
        if pi_2023:
            return "scalar-reward"
        if bins is not None and int(bins) == 0:
            return "tdmpc2"  # TD-MPC2 with num_bins = 0: its two_hot_inv is the identity
        raise ValueError(
            f"model.pi returns (action, info) (current TD-MPC2 API) but model.reward returned {_shape(r)}, not "
            f"two-hot logits [M, num_bins] (cfg.num_bins = {bins}). Give a scalar-reward model the 2023 pi "
            "(mu, pi, log_pi, log_std), or wrap it with Planner.from_functions"
        )

    # ------------------------------------------------------------------ tasks
    def _as_rows(self, z: Tensor) -> Tensor:
        if not isinstance(z, Tensor) or z.dim() not in (1, 2):
            raise ValueError(f"z must be a latent [L] or a batch of latents [B, L], got {_shape(z)}")
        return z.reshape(1, -1) if z.dim() == 1 else z

    def _task_state(self, task, B: int, device) -> Optional[dict]:
        """Normalise ``task`` (None, an int, or a tensor with 1 or B task ids)."""
        if self._user_fns is not None:
            if task is not None:
                raise ValueError("a Planner built with from_functions takes no task (task must be None)")
            return None
        if not self.multitask:
            return None if task is None else {"given": task, "ids": None, "per_row": False}
        if task is None:
            raise ValueError(
                "cfg.multitask is set: plan(..., task=) needs the task id (an int, or a tensor [1] or [B])"
            )
        if isinstance(task, Tensor):
            ids = task.reshape(-1).long()
            if ids.numel() not in (1, B):
                raise ValueError(f"task must hold 1 or B={B} task ids, got {_shape(task)}")
        elif isinstance(task, int) and not isinstance(task, bool):
            ids = torch.tensor([task])
        else:
            raise TypeError(f"task must be an int or a tensor of task ids, got {type(task).__name__}")
        n_tasks = self.model._action_masks.shape[0]
        if int(ids.min()) < 0 or int(ids.max()) >= n_tasks:
            raise ValueError(f"task ids must be in [0, {n_tasks}), got {ids.tolist()}")
        per_row = ids.numel() > 1
        return {"given": task, "ids": ids, "per_row": per_row, "B": B,
                "ids_dev": ids.to(device) if per_row else None}

    def _model_task(self, state: Optional[dict], rows: int):
        """The task argument of a model call on ``rows`` rows (problem-major)."""
        if state is None:
            return None
        if state["per_row"]:
            return state["ids_dev"].repeat_interleave(rows // state["B"])
        return state["given"]

    def _mask_and_discount(self, state: Optional[dict], B: int, device, dtype):
        if state is None or state["ids"] is None:
            return None, self._discounts[0]
        ids = state["ids"]
        masks = self.model._action_masks
        mask = masks[ids.to(masks.device)].to(device=device, dtype=dtype).expand(B, -1)
        if len(self._discounts) == 1:
            gammas = self._discounts * masks.shape[0]
        else:
            gammas = self._discounts
            if len(gammas) != masks.shape[0]:
                raise ValueError(f"{len(gammas)} discounts for {masks.shape[0]} tasks (model._action_masks)")
        if state["per_row"]:
            return mask, torch.tensor([gammas[i] for i in ids.tolist()], device=device, dtype=dtype)
        return mask, gammas[int(ids[0])]

    def _functions(self, state: Optional[dict], dtype) -> RolloutFunctions:
        if self._user_fns is not None:
            u = self._user_fns

            def termination(z):
                return (_rows(u.termination(z), z.shape[0], "termination(z)") > 0.5).to(dtype)

            return RolloutFunctions(
                policy=u.policy,
                dynamics=u.dynamics,
                reward=lambda z, a: _rows(u.reward(z, a), z.shape[0], "reward(z, a)"),
                value=lambda z, a: _rows(u.value(z, a), z.shape[0], "value(z, a)"),
                termination=None if u.termination is None else termination,
            )
        m, api = self.model, self._api
        task = lambda rows: self._model_task(state, rows)  # noqa: E731
        item = 0 if api == "tdmpc2" else 1
        if _layout_needs_bins(api):
            nb, vmin, vmax = self._require_bins()
            decode = lambda r: _decode_two_hot(r, nb, vmin, vmax)  # noqa: E731
        else:
            decode = lambda r: r  # noqa: E731
        return RolloutFunctions(
            policy=lambda z: m.pi(z, task(z.shape[0]))[item],
            dynamics=lambda z, a: m.next(z, a, task(z.shape[0])),
            reward=lambda z, a: decode(m.reward(z, a, task(z.shape[0]))).reshape(z.shape[0]),
            value=lambda z, a: m.Q(z, a, task(z.shape[0]), return_type="avg").reshape(z.shape[0]),
            termination=(lambda z: (m.termination(z, task(z.shape[0])) > 0.5).to(dtype).reshape(z.shape[0]))
            if self.episodic else None,
        )

    # ------------------------------------------------------------------ planning
    @torch.no_grad()
    def plan(
        self,
        z: Tensor,
        t0: Union[bool, Sequence[bool], Tensor] = False,
        eval_mode: bool = False,
        task=None,
        *,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Plan from ``z`` and return the action(s) to execute (TD-MPC2's ``plan`` semantics).

        Args:
            z: one latent ``[L]`` -> action ``[A]``, or ``B`` independent latents ``[B, L]`` ->
                actions ``[B, A]``, each problem with its own warm-start mean.
            t0: episode start(s): a bool for all problems or one bool per problem (``[B]``); a
                problem not at its start warm-starts from its previous mean shifted one step.
            eval_mode: no exploration noise on the returned action.
            task: multitask only: an int, or a tensor of 1 or ``B`` task ids.
            generator: the source of the MPPI draws (default: the device's default generator, as
                TD-MPC2). The model's own draws (policy noise, Q heads) use whatever it uses.
        """
        unbatched = isinstance(z, Tensor) and z.dim() == 1
        z = self._as_rows(z)
        B, device = z.shape[0], z.device
        dtype = z.dtype if z.dtype in _FLOATS else torch.float32
        _check_generator_device(generator, device)
        if not isinstance(eval_mode, bool):
            raise TypeError(f"eval_mode must be a bool, got {type(eval_mode).__name__}")
        if not self._detected:
            self.detect(z, task)
        t0 = self._t0(t0, B)
        prev = self._prev_mean
        if prev is not None and (prev.shape[0] != B or prev.device != device):
            if not (t0 is True or (isinstance(t0, Tensor) and bool(t0.all()))):
                raise ValueError(
                    f"the previous plan was for {prev.shape[0]} problem(s) on {prev.device}, this one is for {B} on "
                    f"{device}: pass t0=True or call reset() first"
                )
            prev = None
        state = self._task_state(task, B, device)
        s = self.settings
        mask, discount = self._mask_and_discount(state, B, device, dtype)
        impl = resolve_impl(self.kernels, device)
        if self.capture_graph:
            action, mean = self._plan_graphed(z, prev, t0, eval_mode, state, mask, discount, generator, impl, dtype)
        else:
            mean = warm_start(prev, t0, B, s.horizon, s.action_dim, dtype, device)
            action, mean = mppi_plan(
                self._functions(state, dtype), z, mean, s, discount=discount, mask=mask,
                eval_mode=eval_mode, generator=generator, impl=impl,
            )
        self._prev_mean = mean
        return action[0] if unbatched else action

    @staticmethod
    def _t0(t0, B: int) -> Union[bool, Tensor]:
        if isinstance(t0, bool):
            return t0
        t = torch.as_tensor(t0).reshape(-1)
        if t.numel() == 1:
            return bool(t.item())
        if t.numel() != B or t.dtype not in (torch.bool, torch.uint8, torch.int32, torch.int64):
            raise ValueError(f"t0 must be a bool or {B} bools (one per problem), got {t0!r}")
        return t.to(torch.bool)

    # ------------------------------------------------------------------ CUDA graphs
    def _plan_graphed(self, z, prev, t0, eval_mode, state, mask, discount, generator, impl, dtype):
        """Replay the whole plan from a CUDA graph captured on the first call with this signature.

        Static inputs (``z``, the previous mean, the ``t0`` flags) are copied into the graph's
        buffers; the random draws come from ``generator`` (registered with the graph) or the default
        CUDA generator, advanced on every replay. A new graph is captured per (batch size, dtype,
        device, eval_mode, task ids, generator object): reuse one generator (or None) across plans.
        The model must be capturable: no host synchronisation, no CPU tensors created inside its
        methods. Untested here (no CUDA device in this project's test machines).
        """
        if z.device.type != "cuda":
            raise RuntimeError(
                f"capture_graph=True records the plan in a CUDA graph and needs CUDA tensors; z is on {z.device}"
            )
        B = z.shape[0]
        task_key = None if state is None or state["ids"] is None else tuple(state["ids"].tolist())
        key = (B, dtype, str(z.device), bool(eval_mode), task_key, id(generator) if generator is not None else None)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(z, eval_mode, state, mask, discount, generator, impl, dtype)
            self._graphs[key] = graph
        return graph.replay(z, prev, t0)

    def _capture(self, z, eval_mode, state, mask, discount, generator, impl, dtype) -> _PlanGraph:
        s = self.settings
        fns = self._functions(state, dtype)

        def plan(z, mean0):
            return mppi_plan(fns, z, mean0, s, discount=discount, mask=mask, eval_mode=eval_mode,
                             generator=generator, impl=impl)

        _check_capturable_impl(impl, "Planner")
        return _PlanGraph(z, s.horizon, s.action_dim, dtype, plan, generator,
                          keep_alive=(fns, state, mask, discount, generator))


def _layout_needs_bins(api: Optional[str]) -> bool:
    return api in _API_LAYOUT and _API_LAYOUT[api][1] == "two-hot"


__all__ = [
    "MPPIPlanner",
    "MPPISettings",
    "Planner",
    "RolloutFunctions",
    "API_CHOICES",
    "mppi_plan",
    "bootstrap_value",
    "policy_rollout",
    "rollout_return",
    "trajectory_value",
    "warm_start",
]
