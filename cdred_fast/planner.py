"""MPPI planning in the latent space of a world model (SPEC.md section 4, paper Algorithm 2).

:func:`mppi_plan` is the loop, batched over ``B`` independent planning problems; every MPPI
step goes through the ops of :mod:`cdred_fast.ops` (``mppi_sample`` -> sequence values from the
model -> ``mppi_elite_update``, ``J`` times, then ``mppi_select``) with ``impl="fused"`` or
``"reference"``. The model is seen only through :class:`RolloutFunctions` (policy, dynamics,
reward, value, optional termination). :class:`MPPIPlanner` adds what lives between plans (the
warm start, the CUDA-graph replay of a whole plan); the CDRED agent and the drop-in
:class:`cdred_fast.Planner` (:mod:`cdred_fast.tdmpc2_planner`) both plan through it.

Semantics (SPEC section 4, TD-MPC2's planner): policy-prior sequences first, warm start from the
previous mean shifted one step, ``G = sum_t gamma^t R + gamma^H Q(z_H, pi(z_H))``, NaN values
count as 0, top-k with ties in candidate order, ``w = softmax(tau (G - max G))``, mean and std
from ``w`` with std clamped to ``[min_std, max_std]``, the final elite drawn with probability
``w`` on the device, plus ``std_0 * eps`` unless ``eval_mode``. The weights' sum is not offset by
1e-9 (the released TD-MPC2 code adds 1e-9 to a sum that is 1 after the softmax; SPEC has no such
term and the ops follow SPEC). Only NaN values are replaced; +-inf values are kept (see
:func:`cdred_fast.reference.mppi_elite_update` for how the weights stay finite).

When reward and dynamics are deterministic functions of ``(z, a)`` (``RolloutFunctions.deterministic``,
as TD-MPC2's and CDRED's in eval mode), the ``N_pi`` policy sequences keep their actions through
the ``J`` iterations, so their rewards and last latents are computed once per plan, and only
their bootstrap ``Q(z_H, pi(z_H))`` is redrawn in every iteration, like every other row's.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor

from . import ops
from .config import mppi_iterations
from .ops import resolve_impl
from .ops._checks import FLOAT_DTYPES

# With capture_graph, the CUDA graphs an MPPIPlanner keeps (each has its own memory pool): one per
# batch size, eval_mode, generator, graph_key and parameter storage seen, the least recently
# replayed dropped first.
MAX_GRAPHS = 16


def module_tensors(module: torch.nn.Module) -> Iterable[Tensor]:
    """The parameters and buffers of ``module``, lazily: the ``graph_tensors`` of
    :meth:`MPPIPlanner.plan` for a model that is a module (read only when capturing graphs)."""
    return itertools.chain(module.parameters(), module.buffers())


# =============================================================================== settings and the model
@dataclass(frozen=True)
class MPPISettings:
    """The sizes and constants of one MPPI plan (SPEC section 4 names in brackets).

    ``iterations`` is the final count (any ``+2 when A >= 20`` already applied, see :meth:`from_config`).
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
        need(
            0 <= self.num_pi_trajs < self.num_samples,
            "num_pi_trajs",
            f"in [0, num_samples) = [0, {self.num_samples}) (at least one sampled sequence)",
        )
        need(1 <= self.num_elites <= self.num_samples, "num_elites", f"in [1, num_samples] = [1, {self.num_samples}]")
        need(self.iterations >= 1, "iterations", ">= 1")
        need(self.action_dim >= 1, "action_dim", ">= 1")
        need(float(self.temperature) > 0, "temperature", "> 0")
        need(float(self.min_std) > 0, "min_std", "> 0")
        need(float(self.max_std) >= float(self.min_std), "max_std", f">= min_std = {self.min_std}")

    @classmethod
    def from_config(
        cls, cfg: Any, action_dim: int, iterations: Optional[int] = None, get: Callable[[Any, str], Any] = getattr
    ) -> "MPPISettings":
        """Settings from a config with TD-MPC2's field names (``horizon``, ``num_samples``,
        ``num_elites``, ``num_pi_trajs``, ``iterations``, ``temperature``, ``min_std``,
        ``max_std``), read with ``get(cfg, name)``. ``iterations`` is the total count; by default
        ``cfg.iterations`` plus 2 when ``action_dim >= 20`` (:func:`cdred_fast.config.mppi_iterations`)."""
        A = int(action_dim)
        return cls(
            horizon=int(get(cfg, "horizon")),
            num_samples=int(get(cfg, "num_samples")),
            num_elites=int(get(cfg, "num_elites")),
            num_pi_trajs=int(get(cfg, "num_pi_trajs")),
            iterations=mppi_iterations(int(get(cfg, "iterations")), A) if iterations is None else iterations,
            temperature=float(get(cfg, "temperature")),
            min_std=float(get(cfg, "min_std")),
            max_std=float(get(cfg, "max_std")),
            action_dim=A,
        )


@dataclass(frozen=True)
class RolloutFunctions:
    """The world model as the MPPI loop sees it. Every function maps ``R`` rows to ``R`` rows.

    * ``policy(z [R, L]) -> a [R, A]``: an action sampled from the policy prior.
    * ``dynamics(z [R, L], a [R, A]) -> z' [R, L]``.
    * ``reward(z, a) -> [R]`` and ``value(z, a) -> [R]`` (``Q`` of the last latent and ``pi``'s action).
    * ``termination(z) -> [R]`` in {0, 1} (1: the episode has ended before ``z``'s step), or None.
    * ``shared_reward(z [L], a [R, A]) -> [R]``: the reward of rows that all start from the one
      latent ``z`` (the first step of a plan), computing ``z``'s part once (SPEC section 4, last
      paragraph); None: ``reward`` on the expanded rows.
    * ``deterministic``: reward and dynamics are deterministic functions of ``(z, a)``; False for
      a random return, whose policy-prior sequences are then rolled out again in every iteration.
    * ``transition(z [R, L], a [R, A]) -> (r [R], z' [R, L])``: reward and next latent in one call,
      for a reward that needs the next latent (IQ-MPC's soft return, SPEC section 6); when given it
      replaces ``reward``, ``shared_reward`` and ``dynamics`` in the sequences' roll-outs (step 3).
    """

    policy: Callable[[Tensor], Tensor]
    dynamics: Callable[[Tensor, Tensor], Tensor]
    reward: Callable[[Tensor, Tensor], Tensor]
    value: Callable[[Tensor, Tensor], Tensor]
    termination: Optional[Callable[[Tensor], Tensor]] = None
    shared_reward: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    deterministic: bool = True
    transition: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = None


# =============================================================================== the loop, step by step
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
    """The model-rollout part of a sequence's value, ``sum_t gamma^t R(z_t, a_t)``, for
    ``actions [H, R, A]`` from ``z [R, L]``, or from one latent ``z [L]`` shared by the ``R`` rows
    (its first reward through ``fns.shared_reward`` when there is one). ``discount`` is a number or
    a per-row tensor ``[R]``.

    With a termination function, TD-MPC2's episodic rule: a row stops collecting reward (and the
    bootstrap) after a step whose next latent is terminal. Returns ``(G [R], z_H [R, L], gamma^H,
    done)`` with ``gamma^H`` a number or ``[R]`` and ``done`` ``[R]`` or None (no termination).
    """
    G, gamma_t, done = 0.0, 1.0, None
    for t in range(actions.shape[0]):
        if fns.transition is not None:
            r, z = fns.transition(z.expand(actions.shape[1], -1), actions[t])
        elif z.dim() == 1:  # the shared start latent
            shared, z = z, z.expand(actions.shape[1], -1)
            r = fns.reward(z, actions[t]) if fns.shared_reward is None else fns.shared_reward(shared, actions[t])
            z = fns.dynamics(z, actions[t])
        else:
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
    """``G = sum_t gamma^t R(z_t, a_t) + gamma^H Q(z_H, pi(z_H))`` for ``z [R, L]`` (or ``[L]``
    shared), ``actions [H, R, A]``; ``discount`` and termination as in :func:`rollout_return`.
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


def _start_rows(z: Tensor, n: int) -> Tensor:
    """The start latents of ``n`` sequences per problem, problem-major: ``z [B, L]`` -> ``[B * n, L]``,
    or, for one problem, its latent ``[L]`` shared by the ``n`` rows (see :func:`rollout_return`)."""
    B, L = z.shape
    return z[0] if B == 1 else z.unsqueeze(1).expand(B, n, L).reshape(B * n, L)


def _per_row(discount: Union[float, Tensor], n: int) -> Union[float, Tensor]:
    """A number, or the per-problem discounts ``[B]`` repeated for ``n`` rows of each problem."""
    return discount if isinstance(discount, (int, float)) else discount.repeat_interleave(n)


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
    B = z.shape[0]
    H, N, n_pi, A = s.horizon, s.num_samples, s.num_pi_trajs, s.action_dim
    dtype, device = mean.dtype, mean.device
    std = torch.full((B, H, A), float(s.max_std), dtype=dtype, device=device)
    mask3 = None if mask is None else mask.to(dtype).view(B, 1, A)
    n_s = N - n_pi  # sampled sequences per problem (>= 1)
    fixed = n_pi > 0 and fns.deterministic  # the policy sequences' rollouts are the same every iteration

    pi_actions, pi_rollout = None, None
    if n_pi > 0:  # step 1: the N_pi policy sequences, candidates 0 .. N_pi - 1 of every problem
        z_pi = _start_rows(z, n_pi)  # [B * N_pi, L], or [L] for one problem
        pi_actions = policy_rollout(fns, z_pi.expand(B * n_pi, -1), H).to(dtype)
        if mask3 is not None:
            pi_actions = pi_actions * mask.to(dtype).repeat_interleave(n_pi, dim=0)
        if fixed:  # rewards and last latents once per plan, not J times (the bootstrap is redrawn)
            pi_rollout = rollout_return(fns, z_pi, pi_actions, _per_row(discount, n_pi))
        pi_actions = pi_actions.reshape(H, B, n_pi, A).permute(1, 0, 2, 3)  # [B, H, N_pi, A]
    # the rows rolled out in every iteration: the sampled sequences (and the policy's, if not fixed)
    n_rows = n_s if fixed else N
    z_rows, discount_rows = _start_rows(z, n_rows), _per_row(discount, n_rows)

    for _ in range(s.iterations):  # step 3
        sampled = ops.mppi_sample(mean, std, n_s, generator, impl=impl)  # [B, H, N - N_pi, A]
        if mask3 is not None:
            sampled = sampled * mask3.unsqueeze(2)
        actions = sampled if pi_actions is None else torch.cat([pi_actions, sampled], dim=2)  # [B, H, N, A]
        rows = sampled if fixed else actions
        rollout = rollout_return(fns, z_rows, rows.permute(1, 0, 2, 3).reshape(H, B * n_rows, A), discount_rows)
        if fixed:
            rollout = tuple(_merge_rows(p, r, B) for p, r in zip(pi_rollout, rollout))
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


def _record_plan_graph(
    body: Callable[[], tuple[Tensor, Tensor]], device: torch.device, generator: Optional[torch.Generator]
) -> tuple["torch.cuda.CUDAGraph", Tensor, Tensor]:
    """Record ``body() -> (action, mean)`` in a CUDA graph: two warm-up runs on a side stream
    (lazy initialisation, cuBLAS workspaces), then the capture, all with ``device`` current.
    ``generator`` (None: the default CUDA generator of ``device``, which graphs track by
    themselves) is registered with the graph, so each replay draws from its state at that
    moment and advances it. The warm-up runs draw from it like any plan; its state is put back
    afterwards, so recording consumes no random numbers and the first replay is the plan the
    eager planner makes from the same state. Returns ``(graph, action, mean)``: the outputs are
    the graph's static tensors, overwritten by every replay."""
    with torch.cuda.device(device):
        state = torch.cuda.get_rng_state(device) if generator is None else generator.get_state()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                body()
        torch.cuda.current_stream(device).wait_stream(side)
        if generator is None:
            torch.cuda.set_rng_state(state, device)
        else:
            generator.set_state(state)
        return _capture(body, device, generator)


def _capture(body, device: torch.device, generator: Optional[torch.Generator]):
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
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(device=device)):
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
        if isinstance(t0, (bool, int)):  # a fill, not a host-to-device copy (which waits for the GPU)
            self.t0.fill_(bool(t0))
        else:
            self.t0.copy_(torch.as_tensor(t0, dtype=torch.bool, device=self.t0.device).expand_as(self.t0))
        with torch.cuda.device(self.t0.device):
            self.graph.replay()
        return self.action.clone(), self.mean.clone()


# =============================================================================== the planner between plans
class MPPIPlanner:
    """Plans with :func:`mppi_plan` and keeps what lives between plans: the warm start (each
    problem's last mean) and, with ``capture_graph``, the CUDA graphs of whole plans.

    Args:
        settings: :class:`MPPISettings`.
        discount: ``gamma`` (a number) used when :meth:`plan` is given none.
        kernels: ``"fused"`` or ``"reference"``; mapped to the ops' ``impl`` for the plan's device by
            :func:`cdred_fast.ops.resolve_impl`.
        capture_graph: replay each plan from a CUDA graph recorded on the first plan with the same
            signature (batch size, dtype, device, ``eval_mode``, generator object, ``graph_key``); later
            plans copy ``z`` and the warm start into the graph's inputs. Same actions as the eager
            plan from the same generator state. Needs CUDA and the fused CUDA ops.
        device: where the plans run, if known now (then ``capture_graph`` is checked against it here).
    """

    def __init__(
        self,
        settings: MPPISettings,
        discount: float,
        *,
        kernels: str = "fused",
        capture_graph: bool = False,
        device=None,
    ):
        if not isinstance(capture_graph, bool):
            raise TypeError(f"capture_graph must be a bool, got {type(capture_graph).__name__}")
        self.settings = settings
        self.discount = discount
        self.kernels = kernels
        self.device = None if device is None else torch.device(device)
        resolve_impl(kernels)  # validates the choice now
        if capture_graph:
            if self.device is not None and (self.device.type != "cuda" or not torch.cuda.is_available()):
                no_cuda = "" if torch.cuda.is_available() else " and torch.cuda.is_available() is False"
                raise RuntimeError(
                    f"capture_graph=True replays plans from a CUDA graph and needs a CUDA device, but the planner is "
                    f"on {self.device}{no_cuda}; use capture_graph=False"
                )
            if not torch.cuda.is_available():
                raise RuntimeError(
                    "capture_graph=True needs CUDA (it records the plan in a CUDA graph), but "
                    "torch.cuda.is_available() is False; use capture_graph=False on CPU"
                )
            if self.device is not None:
                _check_capturable_impl(self.impl, "MPPIPlanner")
        self.capture_graph = capture_graph
        self._graphs: collections.OrderedDict = collections.OrderedDict()
        self._prev_mean: Optional[Tensor] = None  # the last plan's mean [B, H, A]

    @property
    def impl(self) -> str:
        """The ops' ``impl`` on the planner's device (``device`` must be known)."""
        return resolve_impl(self.kernels, self.device)

    @property
    def iterations(self) -> int:
        return self.settings.iterations

    @property
    def prev_mean(self) -> Optional[Tensor]:
        """The last plan's mean ``[B, H, A]`` (the next warm start), or None after :meth:`reset`."""
        return self._prev_mean

    def reset(self) -> None:
        """Forget the warm start: the next plan starts from mean 0 for every problem."""
        self._prev_mean = None

    def warm_start_state(self) -> Optional[Tensor]:
        """A copy of the warm start (the last plan's mean, or None), for :meth:`restore_warm_start`."""
        return None if self._prev_mean is None else self._prev_mean.clone()

    def restore_warm_start(self, state: Optional[Tensor]) -> None:
        """Make ``state`` (from :meth:`warm_start_state`) the warm start of the next plan."""
        self._prev_mean = None if state is None else state.clone()

    @contextlib.contextmanager
    def preserved(self):
        """Context whose plans leave the warm start as it was on entry: what is planned inside
        (an evaluation episode, say) does not change the next plan after it."""
        state = self.warm_start_state()
        try:
            yield self
        finally:
            self.restore_warm_start(state)

    def initial_mean(self, t0: Union[bool, Tensor], B: int = 1, dtype=torch.float32, device=None) -> Tensor:
        """Step 2 for ``B`` problems: :func:`warm_start` from the last plan's mean."""
        device = self.device if device is None else device
        return warm_start(self._prev_mean, t0, B, self.settings.horizon, self.settings.action_dim, dtype, device)

    @torch.no_grad()
    def plan(
        self,
        fns: RolloutFunctions,
        z: Tensor,
        t0: Union[bool, Tensor] = False,
        *,
        eval_mode: bool = False,
        generator: Optional[torch.Generator] = None,
        mask: Optional[Tensor] = None,
        discount: Union[None, float, Tensor] = None,
        graph_key: Any = None,
        graph_tensors: Optional[Iterable[Tensor]] = None,
    ) -> Tensor:
        """Plan for the latents ``z [B, L]`` and return the actions ``[B, A]``.

        ``t0``: episode start(s), a bool or a bool ``[B]``; a problem not at its start warm-starts
        from its previous mean shifted one step. ``mask`` and ``discount`` as in :func:`mppi_plan`
        (``discount`` defaults to the planner's). ``generator``: every MPPI draw, and whatever
        draws ``fns`` takes from it. With ``capture_graph``, ``graph_key`` tells apart plans whose
        ``fns``, ``mask`` or ``discount`` differ (those of the first plan with a key are recorded),
        and ``graph_tensors`` are the tensors the plan reads besides its arguments (the model's
        parameters: :func:`module_tensors`; iterated only with ``capture_graph``). A graph reads
        their memory, so a plan after one of them got other storage (``model.double()``,
        ``load_state_dict(..., assign=True)``; not in-place updates such as optimiser steps)
        records a new graph instead of replaying one that reads freed memory.
        The planner keeps the last :data:`MAX_GRAPHS` graphs.
        """
        B, device = z.shape[0], z.device
        dtype = z.dtype if z.dtype in FLOAT_DTYPES else torch.float32
        _check_generator_device(generator, device)
        prev = self._prev_mean
        if prev is not None and (prev.shape[0] != B or prev.device != device):
            if not (t0 is True or (isinstance(t0, Tensor) and bool(t0.all()))):
                raise ValueError(
                    f"the previous plan was for {prev.shape[0]} problem(s) on {prev.device}, this one is for {B} on "
                    f"{device}: pass t0=True or call reset() first"
                )
            self._prev_mean = None
        discount = self.discount if discount is None else discount
        impl = resolve_impl(self.kernels, device)

        def plan(z: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
            return mppi_plan(
                fns,
                z,
                mean,
                self.settings,
                discount=discount,
                mask=mask,
                eval_mode=eval_mode,
                generator=generator,
                impl=impl,
            )

        if self.capture_graph:
            if device.type != "cuda":
                raise RuntimeError(
                    f"capture_graph=True records the plan in a CUDA graph and needs CUDA tensors; z is on {device}"
                )
            storage = () if graph_tensors is None else tuple(t.data_ptr() for t in graph_tensors)
            gen = None if generator is None else id(generator)  # the graph keeps the generator alive
            key = (B, dtype, str(device), bool(eval_mode), gen, graph_key, storage)
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
            else:
                _check_capturable_impl(impl, "MPPIPlanner")
                graph = _PlanGraph(
                    z,
                    self.settings.horizon,
                    self.settings.action_dim,
                    dtype,
                    plan,
                    generator,
                    keep_alive=(fns, mask, discount, generator),
                )
                self._graphs[key] = graph
                while len(self._graphs) > MAX_GRAPHS:  # the least recently replayed goes
                    self._graphs.popitem(last=False)
            action, mean = graph.replay(z, self._prev_mean, t0)
        else:
            action, mean = plan(z, self.initial_mean(t0, B, dtype, device))
        self._prev_mean = mean
        return action


__all__ = [
    "MPPIPlanner",
    "MPPISettings",
    "RolloutFunctions",
    "bootstrap_value",
    "module_tensors",
    "mppi_plan",
    "policy_rollout",
    "rollout_return",
    "trajectory_value",
    "warm_start",
]
