"""DeepMind Control Suite adapter (state observations).

Tasks use TD-MPC2's names (``cheetah-run``, ``cup-catch`` = dm_control's
``ball_in_cup``/``catch``, ...). What :func:`cdred_fast.envs.make` builds from
this adapter, and why:

* **Observation**: the observation dict flattened and concatenated in the order
  of the task's ``observation_spec()`` (the order dm_control defines, which is
  also the order TD-MPC2 used to produce the paper's expert data). The key order
  is available as ``env.unwrapped.obs_keys``. Scalars (e.g. walker ``height``)
  become one entry. Cast to ``float32`` by the wrappers.
* **Actions**: ``Box(-1, 1, (A,), float32)``. All registered tasks already have
  the actuator range [-1, 1]; the adapter maps [-1, 1] linearly onto the spec's
  bounds anyway, so a task with other bounds would still be correct.
* **Episodes**: dm_control's own time limit is switched off
  (``time_limit=inf``); the episode is 1000 control steps = **500 agent steps
  after action repeat 2**, ended by the :class:`~.wrappers.TimeLimit` wrapper
  with ``truncated=True``. The reward is summed over the repeat (each
  dm_control reward is in [0, 1], so an episode return is in [0, 1000]).
  None of the registered tasks terminates early; if a task ever signals
  ``last()`` with discount 0 it is reported as ``terminated=True``.
* **Seeding**: ``task_kwargs={"random": seed}``; every ``reset()`` draws the
  initial state from that stream, ``reset(seed=s)`` restarts it from ``s``.
* ``info["success"]`` is always ``False`` (the suite has no success notion).
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["DMControlEnv"]


def _import_suite():
    # Importing dm_control probes for a GLFW display and warns when there is none;
    # state observations never render, so that warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DISPLAY.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="glfw")
        from dm_control import suite
    return suite


class DMControlEnv(gym.Env):
    """One dm_control task as a gymnasium environment, one simulator step per ``step``.

    Flat ``float64`` observations, actions in [-1, 1]. Action repeat, the episode
    length and the float32 cast are added by :func:`cdred_fast.envs.make`.
    """

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, seed: int | None = 0):
        suite = _import_suite()
        self.domain, self.task_name = domain, task
        self._env = suite.load(
            domain,
            task,
            task_kwargs={"random": seed, "time_limit": float("inf")},
        )
        obs_spec = self._env.observation_spec()
        self.obs_keys: tuple[str, ...] = tuple(obs_spec.keys())
        obs_dim = sum(int(np.prod(spec.shape)) for spec in obs_spec.values())
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)

        act_spec = self._env.action_spec()
        self._act_low = np.asarray(act_spec.minimum, dtype=np.float64).reshape(act_spec.shape)
        self._act_high = np.asarray(act_spec.maximum, dtype=np.float64).reshape(act_spec.shape)
        self.action_space = spaces.Box(-1.0, 1.0, act_spec.shape, np.float32)
        if seed is not None:
            self.action_space.seed(int(seed))
        self._needs_reset = True

    def _flatten(self, observation) -> np.ndarray:
        return np.concatenate(
            [np.asarray(observation[key], dtype=np.float64).reshape(-1) for key in self.obs_keys]
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # The task draws its initial states from this RandomState.
            self._env.task._random = np.random.RandomState(int(seed))
            self.action_space.seed(int(seed))
        time_step = self._env.reset()
        self._needs_reset = False
        return self._flatten(time_step.observation), {"success": False}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        scaled = self._act_low + (action + 1.0) * 0.5 * (self._act_high - self._act_low)
        time_step = self._env.step(scaled)
        terminated = truncated = False
        if time_step.last():
            self._needs_reset = True
            terminated = time_step.discount == 0.0
            truncated = not terminated
        reward = 0.0 if time_step.reward is None else float(time_step.reward)
        return self._flatten(time_step.observation), reward, terminated, truncated, {"success": False}

    def close(self):
        self._env.close()
