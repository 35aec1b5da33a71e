"""The drop-in fused MPPI planner for TD-MPC2 codebases: :class:`Planner` (``cdred_fast.Planner``).

It reads a TD-MPC2 world model and config as they are (both API generations, detected on a dry
run), turns them into :class:`cdred_fast.planner.RolloutFunctions` (task embeddings, action masks,
per-task discounts, two-hot reward decoding, episodic termination) and plans through
:class:`cdred_fast.planner.MPPIPlanner`, the loop of SPEC section 4 that the CDRED agent uses too.
:meth:`Planner.from_functions` takes any model as functions, :meth:`Planner.from_agent` a
:class:`cdred_fast.CDREDAgent`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .config import discount_heuristic
from .layers import symexp, two_hot_inv
from .ops._checks import FLOAT_DTYPES
from .planner import MPPIPlanner, MPPISettings, RolloutFunctions, module_tensors

_MISSING = object()
API_CHOICES = ("tdmpc2", "tdmpc2-2023", "scalar-reward")
# (how pi's action is read, how reward is decoded) for each API generation
_API_LAYOUT = {
    "tdmpc2": ("(action, info)", "two-hot"),
    "tdmpc2-2023": ("(mu, pi, log_pi, log_std)", "two-hot"),
    "scalar-reward": ("(mu, pi, log_pi, log_std)", "scalar"),
}
_REQUIRED_FIELDS = (
    "horizon",
    "num_samples",
    "num_elites",
    "num_pi_trajs",
    "iterations",
    "temperature",
    "min_std",
    "max_std",
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
        self.cfg = cfg
        self.model = model
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
        settings = MPPISettings.from_config(cfg, int(_cfg_get(cfg, "action_dim")), iterations, get=_cfg_get)
        self._discounts = self._resolve_discount(discount)  # [gamma] or one per task
        self._gamma_table = None  # ((device, dtype, discounts), the per-task discounts on the device)
        self._mppi = MPPIPlanner(settings, self._discounts[0], kernels=kernels, capture_graph=capture_graph)

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
        given = {"dynamics": dynamics, "reward": reward, "value": value, "policy": policy}
        absent = [name for name, f in given.items() if not callable(f)]
        if absent:
            raise TypeError(f"Planner.from_functions needs callables for: {', '.join(absent)}")
        if termination is not None and not callable(termination):
            raise TypeError("termination must be a callable or None")
        if bool(_cfg_get(cfg, "multitask", False)):
            raise ValueError("Planner.from_functions does not support cfg.multitask; fold the task into the functions")
        fns = RolloutFunctions(policy=policy, dynamics=dynamics, reward=reward, value=value, termination=termination)
        return cls._from_rollout_functions(fns, cfg, kernels, iterations, discount, capture_graph)

    @classmethod
    def _from_rollout_functions(
        cls, fns: RolloutFunctions, cfg, kernels, iterations, discount, capture_graph
    ) -> "Planner":
        self = cls(None, cfg, None, kernels, iterations=iterations, discount=discount, capture_graph=capture_graph)
        self._user_fns = fns
        self._api, self._detected = "functions", True
        return self

    @classmethod
    def from_agent(cls, agent, capture_graph: bool = False) -> "Planner":
        """The drop-in planner around a :class:`cdred_fast.CDREDAgent`: the agent's rollout
        functions (its method's planning return), MPPI settings, kernels and discount, so it plans
        exactly like :meth:`cdred_fast.CDREDAgent.plan` (same draws from the same state of the
        default generator), with this class's options on top, e.g. ``capture_graph=True``. The
        agent's warm start is not shared (this planner keeps its own ``prev_mean``)."""
        settings = agent.planner.settings
        cfg = {name: getattr(settings, name) for name in _REQUIRED_FIELDS}
        return cls._from_rollout_functions(
            agent.rollout_functions(None), cfg, agent.cfg.kernels, settings.iterations, agent.discount, capture_graph
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
    def settings(self) -> MPPISettings:
        return self._mppi.settings

    @property
    def kernels(self) -> str:
        return self._mppi.kernels

    @property
    def capture_graph(self) -> bool:
        return self._mppi.capture_graph

    @property
    def prev_mean(self) -> Optional[Tensor]:
        """The last plan's mean ``[B, H, A]`` (the next warm start), or None."""
        return self._mppi.prev_mean

    @property
    def iterations(self) -> int:
        return self.settings.iterations

    def reset(self) -> None:
        """Forget the warm start: the next plan starts from mean 0 for every problem."""
        self._mppi.reset()

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
        values = tuple(ids.tolist())  # the one read of the ids on the host
        if min(values) < 0 or max(values) >= n_tasks:
            raise ValueError(f"task ids must be in [0, {n_tasks}), got {list(values)}")
        per_row = ids.numel() > 1
        ids_dev = ids.to(device) if per_row else None
        return {"given": task, "ids": ids, "values": values, "per_row": per_row, "B": B, "ids_dev": ids_dev}

    def _model_task(self, state: Optional[dict], rows: int):
        """The task argument of a model call on ``rows`` rows (problem-major)."""
        if state is None:
            return None
        if state["per_row"]:
            return state["ids_dev"].repeat_interleave(rows // state["B"])
        return state["given"]

    def _mask_and_discount(self, state: Optional[dict], B: int, device, dtype):
        """The action mask ``[B, A]`` and the discount (a number, or ``[B]`` for per-row task
        ids), found without reading device task ids on the host again."""
        if state is None or state["ids"] is None:
            return None, self._discounts[0]
        masks = self.model._action_masks
        if len(self._discounts) == 1:
            gammas = self._discounts * masks.shape[0]
        else:
            gammas = self._discounts
            if len(gammas) != masks.shape[0]:
                raise ValueError(f"{len(gammas)} discounts for {masks.shape[0]} tasks (model._action_masks)")
        if not state["per_row"]:
            task = state["values"][0]
            return masks[task].to(device=device, dtype=dtype).expand(B, -1), gammas[task]
        ids = state["ids_dev"]
        mask = masks[ids.to(masks.device)].to(device=device, dtype=dtype)
        key = (device, dtype, tuple(gammas))
        if self._gamma_table is None or self._gamma_table[0] != key:  # copied to the device once
            self._gamma_table = (key, torch.tensor(gammas, device=device, dtype=dtype))
        return mask, self._gamma_table[1][ids]

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
                shared_reward=None
                if u.shared_reward is None
                else lambda z, a: _rows(u.shared_reward(z, a), a.shape[0], "shared_reward(z, a)"),
                deterministic=u.deterministic,
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
            if self.episodic
            else None,
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
        dtype = z.dtype if z.dtype in FLOAT_DTYPES else torch.float32
        if not isinstance(eval_mode, bool):
            raise TypeError(f"eval_mode must be a bool, got {type(eval_mode).__name__}")
        if not self._detected:
            self.detect(z, task)
        state = self._task_state(task, B, device)
        mask, discount = self._mask_and_discount(state, B, device, dtype)
        # a graph per task assignment: the task ids are read when the functions are built
        task_key = None if state is None or state["ids"] is None else state["values"]
        action = self._mppi.plan(
            self._functions(state, dtype),
            z,
            self._t0(t0, B),
            eval_mode=eval_mode,
            generator=generator,
            mask=mask,
            discount=discount,
            graph_key=task_key,
            graph_tensors=module_tensors(self.model) if isinstance(self.model, torch.nn.Module) else None,
        )
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


def _layout_needs_bins(api: Optional[str]) -> bool:
    return api in _API_LAYOUT and _API_LAYOUT[api][1] == "two-hot"


__all__ = ["API_CHOICES", "Planner"]
