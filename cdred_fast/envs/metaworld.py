"""Meta-World v3 adapter (state observations) and scripted experts.

Tasks are named ``mw-<name>`` after Meta-World's ``<name>-v3``. Choices made,
following the paper (which used TD-MPC2's Meta-World setup on v2):

* **Environment**: the *goal-observable* v3 class
  (``metaworld.env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE``), as TD-MPC2 and
  IQ-MPC use: the 39-d observation is hand position (3), gripper opening (1),
  object poses (14), the same 18 numbers of the previous simulator step, and the
  goal position (3). The goal must be visible: the policy has no other way to
  know it, and Meta-World's scripted experts read it from ``obs[-3:]``.
  (``gymnasium.make("Meta-World/MT1", ...)`` gives a goal-observable env too,
  but one that samples each episode's goal from a fixed set of 50 pre-drawn
  goals; we want a fresh goal every episode, as in the paper's setup.)
* **Task randomisation and seeding**: every ``reset()`` draws a new random
  vector (object and/or goal positions, depending on the task; in
  ``bin-picking`` only the object moves, the goal bin is fixed) from the
  environment's own seeded generator (``_freeze_rand_vec=False``,
  ``seeded_rand_vec=True``), so an episode sequence is reproducible from the
  seed given to :func:`cdred_fast.envs.make` and never touches the global numpy
  RNG. ``reset(seed=s)`` re-seeds that generator. (Meta-World's own
  ``reset(seed=...)`` ignores its argument; this adapter does not.)
* **Episode length**: **100 agent steps with action repeat 2 = 200 simulator
  steps**, as in the paper. Meta-World's own ``max_path_length`` (500 by
  default, after which its ``step`` raises) is set to 200, so its truncation
  coincides with ours instead of firing at another time.
* **Success**: ``info["success"]`` is Meta-World's success flag of the *last*
  simulator step of each repeated action (TD-MPC2's convention).
  :func:`cdred_fast.collect.collect` calls an episode successful when any agent
  step reported success.
* Meta-World never terminates an episode; only truncation ends it. A simulator
  instability is reported by Meta-World as reward 0 / no success with the last
  stable observation; it is passed through unchanged.
* **Rendering** (videos, :mod:`cdred_fast.video`): observations never render, but
  videos render headless from :attr:`MetaWorldEnv.mujoco_env`'s ``model`` and ``data``.
  Like :mod:`.dmcontrol`, this module sets ``MUJOCO_GL=egl`` when it is imported and the
  variable is not set already: mujoco picks its OpenGL backend once, when it is first
  imported (here, by ``metaworld``), and without the variable it would pick GLFW, which
  needs an X display.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .dmcontrol import DEFAULT_MUJOCO_GL

__all__ = ["MetaWorldEnv", "scripted_policy"]

# Headless rendering backend for videos, chosen only when the user has not chosen one
# (before `metaworld` imports mujoco; see the module docstring).
if not os.environ.get("MUJOCO_GL"):
    os.environ["MUJOCO_GL"] = DEFAULT_MUJOCO_GL

OBS_DIM = 39
ACTION_DIM = 4


def _v3_name(task: str) -> str:
    """``"mw-reach-wall"`` or ``"reach-wall"`` or ``"reach-wall-v3"`` -> ``"reach-wall-v3"``."""
    name = task[3:] if task.startswith("mw-") else task
    return name if name.endswith("-v3") else f"{name}-v3"


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task (goal observable, random goal per episode) as a
    gymnasium environment, one simulator step per ``step``.

    Args:
        name: the task, ``"reach-wall"`` (``"mw-"`` prefix and ``"-v3"`` suffix allowed).
        seed: seeds the task randomisation and the action space.
        max_path_length: simulator steps per episode (Meta-World raises after it).
    """

    metadata = {"render_modes": []}

    def __init__(self, name: str, seed: int | None = 0, max_path_length: int = 200):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self.env_name = _v3_name(name)
        key = f"{self.env_name}-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            raise ValueError(f"Meta-World has no v3 environment {self.env_name!r}")
        # The constructor seeds and restores the global numpy RNG itself.
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=seed)
        self._env._freeze_rand_vec = False  # new object/goal positions at every reset
        self._env.seeded_rand_vec = True  # ... drawn from the env's seeded np_random
        self._env.max_path_length = int(max_path_length)
        self.max_path_length = int(max_path_length)

        self.observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        if seed is not None:
            self.action_space.seed(int(seed))
        self._needs_reset = True

    @property
    def mujoco_env(self):
        """Meta-World's own environment (a gymnasium ``MujocoEnv``: ``.model``, ``.data``)."""
        return self._env

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(int(seed))
            self.action_space.seed(int(seed))
        obs, _ = self._env.reset()
        self._needs_reset = False
        return np.asarray(obs, dtype=np.float64), {"success": False}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        info = dict(info)
        info["success"] = bool(info.get("success", False))
        if terminated or truncated:
            self._needs_reset = True
        return np.asarray(obs, dtype=np.float64), float(reward), bool(terminated), bool(truncated), info

    def close(self):
        self._env.close()


def scripted_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's scripted expert for ``task`` as a callable ``obs -> action``.

    ``task`` is a registered name such as ``"mw-reach-wall"``. The returned
    callable takes the 39-d observation (float32 or float64) and returns a
    ``float32`` action in [-1, 1]^4. Meta-World's "constants may be too high"
    warnings (the experts rely on clipping) are silenced.

    Raises:
        ValueError: ``task`` names no Meta-World environment with a scripted expert.
    """
    from metaworld.policies import ENV_POLICY_MAP

    env_name = _v3_name(task)
    policy_cls = ENV_POLICY_MAP.get(env_name)
    if policy_cls is None:
        raise ValueError(f"Meta-World (metaworld.policies) has no scripted expert for {env_name!r} (task {task!r})")
    policy = policy_cls()

    def act(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (OBS_DIM,):
            raise ValueError(f"expected a ({OBS_DIM},) Meta-World observation, got shape {obs.shape}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action = policy.get_action(obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    act.__name__ = f"scripted_{env_name.replace('-', '_')}"
    act.__doc__ = f"Meta-World scripted expert {policy_cls.__name__} for {task}."
    return act
