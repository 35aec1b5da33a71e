"""The task registry and :func:`make`.

Every task has a :class:`TaskSpec`: its suite, the simulator's name for it, the
action repeat, the episode length in agent steps (after the repeat) and its
scripted expert, if it has one (:func:`scripted_policy`). The
paper's settings (SPEC section 5): DMControl 500 steps, Meta-World and ManiSkill2
100 steps, all with action repeat 2.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from ..config import OBS_CHOICES
from .wrappers import (
    ActionRepeat,
    Float32Observation,
    FrameStack,
    PixelObservation,
    TimeLimit,
    TremblingHand,
    ValidateAction,
)

__all__ = [
    "TaskSpec",
    "TASKS",
    "PAPER_TASKS",
    "known_tasks",
    "task_spec",
    "make",
    "has_scripted_policy",
    "scripted_policy",
]


@dataclass(frozen=True)
class TaskSpec:
    """How to build one task.

    Attributes:
        name: the registered name, e.g. ``"cheetah-run"``, ``"mw-reach-wall"`` or ``"ms2-pick-cube"``.
        suite: ``"dmcontrol"``, ``"metaworld"`` or ``"maniskill2"``.
        sim_name: the simulator's identifier: ``(domain, task)`` for dm_control,
            the ``<name>-v3`` environment name for Meta-World, ``(env id, control mode)``
            for ManiSkill2.
        action_repeat: simulator steps per agent step.
        episode_length: agent steps per episode (after the repeat).
        paper: whether the CDRED paper reports this task.
        expert: the module of this package whose ``scripted_policy(task)`` is the task's
            scripted expert (``"metaworld"``: Meta-World's own; ``"stick_pull"`` /
            ``"door_open"``: ours for stick-pull / door-open; ``"maniskill2"``), or None when it has none.
        expert_holds: the expert stops moving once the task reports success (:class:`HoldOnSuccess`),
            for tasks whose scripted expert succeeds and then pushes past the goal.
    """

    name: str
    suite: str
    sim_name: tuple[str, str] | str
    action_repeat: int
    episode_length: int
    paper: bool = False
    expert: str | None = None
    expert_holds: bool = False

    @property
    def sim_steps(self) -> int:
        """Simulator steps per episode."""
        return self.action_repeat * self.episode_length


def _dmc(name: str, domain: str, task: str, paper: bool = False) -> TaskSpec:
    return TaskSpec(name, "dmcontrol", (domain, task), action_repeat=2, episode_length=500, paper=paper)


def _mw(name: str, paper: bool = False, expert_holds: bool = False, expert: str = "metaworld") -> TaskSpec:
    return TaskSpec(
        f"mw-{name}",
        "metaworld",
        f"{name}-v3",
        action_repeat=2,
        episode_length=100,
        paper=paper,
        expert=expert,
        expert_holds=expert_holds,
    )


def _ms2(name: str, env_id: str, control_mode: str, paper: bool = False, expert: str | None = None) -> TaskSpec:
    return TaskSpec(
        f"ms2-{name}",
        "maniskill2",
        (env_id, control_mode),
        action_repeat=2,
        episode_length=100,
        paper=paper,
        expert=expert,
    )


_SPECS = [
    # DMControl, the paper's state-based tasks
    _dmc("cheetah-run", "cheetah", "run", paper=True),
    _dmc("walker-run", "walker", "run", paper=True),
    _dmc("hopper-hop", "hopper", "hop", paper=True),
    _dmc("reacher-hard", "reacher", "hard", paper=True),
    _dmc("humanoid-walk", "humanoid", "walk", paper=True),
    _dmc("dog-stand", "dog", "stand", paper=True),
    # DMControl, easier tasks for quick experiments
    _dmc("cartpole-swingup", "cartpole", "swingup"),
    _dmc("walker-walk", "walker", "walk"),
    _dmc("walker-stand", "walker", "stand"),
    _dmc("reacher-easy", "reacher", "easy"),
    _dmc("finger-spin", "finger", "spin"),
    _dmc("cup-catch", "ball_in_cup", "catch"),
    # Meta-World v3, the paper's tasks
    _mw("box-close", paper=True, expert_holds=True),
    _mw("bin-picking", paper=True),
    _mw("reach-wall", paper=True),
    _mw("stick-pull", paper=True, expert="stick_pull"),  # Meta-World's succeeds at the last step in 0.32
    _mw("stick-push", paper=True, expert_holds=True),
    _mw("soccer", paper=True),
    # Meta-World v3, easy tasks with reliable scripted experts
    _mw("reach"),
    _mw("push"),
    _mw("button-press"),
    _mw("drawer-open"),
    _mw("door-open", expert="door_open"),  # Meta-World's pushes the door past the goal (0.0 at the last step)
    _mw("door-close", expert_holds=True),  # Meta-World's ends solved in 0.80 of episodes without the hold
    # ManiSkill2 0.5.3, the paper's tasks (TD-MPC2's controllers)
    _ms2("pick-cube", "PickCube-v0", "pd_ee_delta_pos", paper=True, expert="maniskill2"),
    _ms2("lift-cube", "LiftCube-v0", "pd_ee_delta_pos", paper=True, expert="maniskill2"),
    _ms2("turn-faucet", "TurnFaucet-v0", "pd_ee_delta_pose", paper=True),
]

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
PAPER_TASKS: tuple[str, ...] = tuple(spec.name for spec in _SPECS if spec.paper)


def known_tasks(suite: str | None = None) -> list[str]:
    """Registered task names (of one suite when ``suite`` is given), in registry order."""
    return [name for name, spec in TASKS.items() if suite is None or spec.suite == suite]


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``; ``ValueError`` naming the closest known task otherwise."""
    spec = TASKS.get(task)
    if spec is None:
        close = difflib.get_close_matches(str(task), list(TASKS), n=1, cutoff=0.0)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown task {task!r}.{hint} Known tasks: {', '.join(TASKS)}")
    return spec


def has_scripted_policy(task: str) -> bool:
    """Whether the registry names a scripted expert for ``task`` (every Meta-World task,
    ManiSkill2 pick-cube and lift-cube)."""
    return task_spec(task).expert is not None


def scripted_policy(task: str):
    """The scripted expert the registry names for ``task``, an ``obs -> action`` callable:
    Meta-World's (:func:`.metaworld.scripted_policy`), except for ``mw-stick-pull`` and
    ``mw-door-open``, whose experts are ours (:class:`.stick_pull.StickPullExpert`,
    :class:`.door_open.DoorOpenExpert`, each with a ``reset()`` to call at every episode start,
    as :func:`cdred_fast.collect.collect` does) or, for ``ms2-pick-cube`` /
    ``ms2-lift-cube``, a grasp-and-carry rule (:func:`.maniskill2.scripted_policy`).

    Raises:
        ValueError: an unknown task, or one without a scripted expert.
    """
    spec = task_spec(task)
    if spec.expert is None:
        with_expert = ", ".join(name for name, s in TASKS.items() if s.expert is not None and s.suite != "metaworld")
        raise ValueError(
            f"task {task!r} has no scripted expert (scripted experts: every Meta-World task, {with_expert})"
        )
    policy = importlib.import_module(f"{__package__}.{spec.expert}").scripted_policy(task)
    return HoldOnSuccess(policy) if spec.expert_holds else policy


class HoldOnSuccess:
    """A scripted expert that holds still once the task succeeds.

    Until :meth:`observe` sees ``info["success"]``, actions are the wrapped policy's; from
    then until :meth:`reset`, every action is zero except the last dimension (the gripper
    command, in both Meta-World's and ManiSkill2's end-effector controllers), which keeps its
    value at the moment of success. :func:`cdred_fast.collect.collect` calls ``reset`` at each
    episode start and ``observe`` after each step.
    """

    def __init__(self, policy):
        self.policy = policy
        self._last_action = None
        self._hold = None

    def reset(self) -> None:
        self._last_action, self._hold = None, None
        reset = getattr(self.policy, "reset", None)
        if callable(reset):
            reset()

    def observe(self, info: dict) -> None:
        if self._hold is None and self._last_action is not None and bool(info.get("success", False)):
            self._hold = np.zeros_like(self._last_action)
            self._hold[-1] = self._last_action[-1]

    def __call__(self, obs):
        if self._hold is not None:
            return self._hold.copy()
        self._last_action = np.asarray(self.policy(obs), dtype=np.float32)
        return self._last_action


def make(
    task: str,
    obs: str = "state",
    seed: int = 0,
    *,
    trembling_hand: float = 0.0,
    frame_stack: int = 3,
    image_size: int = 64,
    renderer: str | None = None,
    asset_dir: str | os.PathLike | None = None,
) -> gym.Env:
    """Build a registered task with the paper's settings.

    Args:
        task: a registered name (:func:`known_tasks`).
        obs: ``"state"`` (flat float32 vector) or ``"rgb"`` (DMControl only):
            ``frame_stack`` stacked ``image_size`` x ``image_size`` RGB frames,
            ``uint8`` of shape ``(3 * frame_stack, image_size, image_size)``,
            rendered headless after every agent step (see :mod:`.dmcontrol`); the
            state observation is then in ``info["state"]``.
        seed: seeds the simulator's initial-state/goal randomisation, the action
            space and the trembling-hand noise. ``reset(seed=s)`` re-seeds them.
        trembling_hand: probability of replacing an agent action by a uniformly
            random one (the paper's robustness experiment); 0 disables it.
        frame_stack, image_size: pixel observations only (SPEC section 1: 3 and 64).
        renderer: ManiSkill2 only: ``"auto"`` (default), ``"none"`` (state-only: the
            physics without a renderer) or ``"sapien"``; ``None`` reads
            ``$CDRED_FAST_MS2_RENDERER``. See :mod:`.maniskill2`.
        asset_dir: ManiSkill2 only: the asset folder (``ms2-turn-faucet`` needs the
            PartNet-Mobility faucets there); ``None`` reads ``$MS2_ASSET_DIR``, else ``data``.

    Returns:
        A gymnasium environment with action space ``Box(-1, 1, (A,), float32)``,
        ``info["success"]`` (bool, always False for DMControl), and episodes of
        exactly ``env.max_episode_steps`` agent steps that end with
        ``truncated=True``. ``env.task``, ``env.suite``, ``env.obs_type`` and
        ``env.action_repeat`` are set as well. (If you add your own wrappers
        on top, use ``env.get_wrapper_attr("max_episode_steps")``.)

    Raises:
        ValueError: unknown task or observation type; ``renderer``/``asset_dir`` for a
            task that is not a ManiSkill2 task.
        NotImplementedError: ``obs="rgb"`` for a Meta-World or ManiSkill2 task.
        FileNotFoundError: ``ms2-turn-faucet`` without its assets (says what to download).
        ManiSkill2Unavailable: a ManiSkill2 task without the ManiSkill2 interpreter.
    """
    spec = task_spec(task)
    if obs not in OBS_CHOICES:
        raise ValueError(f"unknown observation type {obs!r}: expected {' or '.join(map(repr, OBS_CHOICES))}")
    if obs == "rgb" and spec.suite != "dmcontrol":
        raise NotImplementedError(
            f"obs='rgb' (pixel observations) is implemented for DMControl tasks only, not for the "
            f"{spec.suite} task {task!r} (the paper's pixel experiments are DMControl); use obs='state'"
        )
    if spec.suite != "maniskill2" and (renderer is not None or asset_dir is not None):
        raise ValueError(
            f"renderer= and asset_dir= are options of ManiSkill2 tasks, not of the {spec.suite} task {task!r}"
        )

    if spec.suite == "dmcontrol":
        from .dmcontrol import DMControlEnv

        domain, name = spec.sim_name
        env: gym.Env = DMControlEnv(domain, name, seed=seed, render_size=image_size if obs == "rgb" else None)
    elif spec.suite == "metaworld":
        from .metaworld import MetaWorldEnv

        env = MetaWorldEnv(spec.sim_name, seed=seed, max_path_length=spec.sim_steps)
    elif spec.suite == "maniskill2":
        from .maniskill2 import ManiSkill2Env

        env_id, control_mode = spec.sim_name
        env = ManiSkill2Env(env_id, control_mode, seed=seed, renderer=renderer, asset_dir=asset_dir)
    else:  # pragma: no cover - the registry only holds the suites above
        raise AssertionError(f"no adapter for suite {spec.suite!r}")

    env = ValidateAction(env)
    env = ActionRepeat(env, spec.action_repeat)
    if obs == "rgb":
        env = FrameStack(PixelObservation(env), frame_stack)
    else:
        env = Float32Observation(env)
    if trembling_hand > 0.0:
        env = TremblingHand(env, trembling_hand, seed=seed)
    elif not trembling_hand == 0.0:  # negative or NaN
        raise ValueError(f"trembling-hand probability must be in [0, 1], got {trembling_hand!r}")
    env = TimeLimit(env, spec.episode_length)
    env.task = spec.name
    env.suite = spec.suite
    env.obs_type = obs
    env.action_repeat = spec.action_repeat
    return env
