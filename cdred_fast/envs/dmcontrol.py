"""DeepMind Control Suite adapter (state observations, and frames for pixel observations).

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

Pixels (``make(task, obs="rgb")``)
----------------------------------
The adapter always returns the flat state; with ``render_size`` set it can also
render a frame, :meth:`DMControlEnv.render_rgb` (``(3, S, S)`` uint8), and
:class:`~.wrappers.PixelObservation` / :class:`~.wrappers.FrameStack` turn
those frames into the observation **once per agent step** (after the action
repeat, never for the intermediate simulator step), as TD-MPC2 does. Camera:
TD-MPC2's choice, camera 2 for ``quadruped`` and 0 otherwise.

* **Headless backend.** This module sets ``MUJOCO_GL=egl`` when it is imported
  *and the variable is not set already* (a value you set always wins; set it
  before anything imports ``dm_control``, since dm_control reads it once at
  import). EGL was chosen over OSMesa: both work headless on the CPU-only
  development machines through Mesa (llvmpipe / libosmesa6) at the same speed,
  but EGL uses the GPU's driver on a CUDA machine (software OSMesa never does),
  and OSMesa contexts printed ``RuntimeError: cannot schedule new futures after
  shutdown`` at interpreter exit. Left unset, dm_control would first probe GLFW,
  which needs an X display and warns without one. ``MUJOCO_GL=osmesa`` works too.
* **Fast settings.** The offscreen framebuffer is ``S x S`` (instead of
  640x480), multisampling is off (``vis.quality.offsamples = 0``), shadows are
  off, and one :class:`dm_control.mujoco.Camera` (and its ``mjvScene``) is kept
  for the episode's life instead of being rebuilt per frame as
  ``physics.render`` does. Floor reflections and the skybox stay on (the look of
  TD-MPC2's frames apart from the shadows). Measured here (2 shared CPU cores,
  EGL on Mesa llvmpipe, one 64x64 frame per physics step, cartpole / cheetah):
  ``physics.render`` with defaults 59 / 44 fps; 64x64 buffer 65 / 49; + no
  multisampling 77 / 73; + no shadows 328 / 246; + persistent camera
  **950 / 495 fps** (what this adapter does; shadows cost 3-4x on llvmpipe).
  The physics alone runs at 8 400 / 16 500 steps/s.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["DMControlEnv", "DEFAULT_MUJOCO_GL", "default_camera"]

# Headless rendering backend, chosen only when the user has not chosen one (see the module docstring).
DEFAULT_MUJOCO_GL = "egl"
if not os.environ.get("MUJOCO_GL"):
    os.environ["MUJOCO_GL"] = DEFAULT_MUJOCO_GL


def default_camera(domain: str) -> int:
    """TD-MPC2's camera for pixel observations: 2 for ``quadruped``, 0 otherwise."""
    return 2 if domain == "quadruped" else 0


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

    Args:
        domain, task: dm_control's names.
        seed: seeds the initial-state randomisation and the action space.
        render_size: when set, :meth:`render_rgb` renders ``render_size`` square
            frames with the fast settings of the module docstring.
        camera_id: the camera to render (default :func:`default_camera`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        domain: str,
        task: str,
        seed: int | None = 0,
        *,
        render_size: int | None = None,
        camera_id: int | None = None,
    ):
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

        self.render_size = None if render_size is None else int(render_size)
        self.camera_id = default_camera(domain) if camera_id is None else int(camera_id)
        self._camera = None
        if self.render_size is not None:
            if self.render_size < 1:
                raise ValueError(f"render_size must be positive, got {render_size!r}")
            # Must happen before the first render: the GL context sizes its framebuffer from these.
            vis = self._env.physics.model.vis
            vis.global_.offwidth = self.render_size
            vis.global_.offheight = self.render_size
            vis.quality.offsamples = 0

    @property
    def physics(self):
        """dm_control's ``Physics`` of the task."""
        return self._env.physics

    def render_rgb(self) -> np.ndarray:
        """The current frame, ``(3, S, S)`` uint8 (channels first), ``S = render_size``."""
        if self.render_size is None:
            raise RuntimeError("this DMControlEnv was built without render_size: it cannot render")
        if self._camera is None:
            import mujoco
            from dm_control.mujoco.engine import Camera

            self._camera = Camera(self._env.physics, self.render_size, self.render_size, self.camera_id)
            self._camera.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        image = self._camera.render()  # [S, S, 3], a view of a buffer reused by the next render
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def _flatten(self, observation) -> np.ndarray:
        return np.concatenate([np.asarray(observation[key], dtype=np.float64).reshape(-1) for key in self.obs_keys])

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
        if self._camera is not None:
            self._camera._scene.free()  # pylint: disable=protected-access
            self._camera = None
        self._env.close()
