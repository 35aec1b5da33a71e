"""Suite-independent environment wrappers.

Every environment built by :func:`cdred_fast.envs.make` is a thin suite adapter
(:mod:`.dmcontrol`, :mod:`.metaworld`) wrapped, innermost first, in

1. :class:`ValidateAction` - the action must have the right shape and be finite;
   it is clipped to ``[-1, 1]`` (what is clipped is what the simulator gets);
2. :class:`ActionRepeat` - the same action for ``repeat`` simulator steps,
   rewards summed;
3. :class:`Float32Observation` - flat ``float32`` observations (state), or, for
   pixel observations (``obs="rgb"``), :class:`PixelObservation` - the rendered
   ``(3, S, S)`` uint8 frame after each agent step, the state in ``info["state"]`` -
   followed by :class:`FrameStack` - the last ``k`` frames stacked on the channel
   axis, ``(3k, S, S)`` uint8;
4. :class:`TremblingHand` (only when ``p > 0``) - a uniformly random action
   instead of the agent's with probability ``p``, decided once per agent step;
5. :class:`TimeLimit` (outermost) - ``truncated=True`` after a fixed number of
   agent steps; it carries ``max_episode_steps``.

Conventions shared by all wrappers: ``info["success"]`` is always present and a
plain ``bool``; an episode that has ended must be reset before it is stepped
again (a :class:`RuntimeError` says so instead of silently continuing).
"""

from __future__ import annotations

from collections import deque
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "ActionRepeat",
    "Float32Observation",
    "FrameStack",
    "PixelObservation",
    "TimeLimit",
    "TremblingHand",
    "ValidateAction",
]


class ValidateAction(gym.ActionWrapper):
    """Check an action's shape and finiteness, then clip it to the action bounds.

    A wrong shape or a NaN/inf is a bug in the caller and raises ``ValueError``;
    values outside the bounds (e.g. a policy mean plus exploration noise) are
    clipped, which is also what MuJoCo would do with a control range.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Box):
            raise TypeError(f"ValidateAction needs a Box action space, got {space!r}")
        self._low = space.low.astype(np.float32)
        self._high = space.high.astype(np.float32)

    def action(self, action: Any) -> np.ndarray:
        arr = np.asarray(action, dtype=np.float32)
        if arr.shape != self.action_space.shape:
            raise ValueError(f"action has shape {arr.shape}, the environment expects {self.action_space.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"action contains NaN or inf: {arr}")
        return np.clip(arr, self._low, self._high)


class ActionRepeat(gym.Wrapper):
    """Apply each action for ``repeat`` consecutive simulator steps.

    The reward is the sum over the repeated steps. The observation and ``info``
    are those of the last simulator step that ran (``info["success"]`` is
    therefore the success flag of the *last* simulator step of the repeat, as in
    TD-MPC2's Meta-World wrapper). If the inner environment terminates or
    truncates part-way, the repeat stops there.
    """

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        if int(repeat) != repeat or repeat < 1:
            raise ValueError(f"action repeat must be a positive integer, got {repeat!r}")
        self.repeat = int(repeat)

    def step(self, action):
        total = 0.0
        obs, terminated, truncated, info = None, False, False, {}
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class Float32Observation(gym.ObservationWrapper):
    """Cast flat observations to ``float32`` (the simulators return ``float64``)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"Float32Observation needs a flat Box observation space, got {space!r}")
        # Bounds are kept only where they are representable; most are +-inf anyway.
        with np.errstate(over="ignore"):
            low = space.low.astype(np.float32)
            high = space.high.astype(np.float32)
        self.observation_space = spaces.Box(low=low, high=high, shape=space.shape, dtype=np.float32)

    def observation(self, observation) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


class PixelObservation(gym.Wrapper):
    """Replace the observation by the frame the simulator renders after the step.

    The wrapped environment's ``unwrapped`` must provide ``render_rgb() -> (3, S, S)
    uint8`` and ``render_size`` (:class:`~.dmcontrol.DMControlEnv` built with
    ``render_size``). Placed outside :class:`ActionRepeat`, it renders once per
    agent step. The replaced (state) observation is kept, as ``float32``, in
    ``info["state"]``: it lets :func:`cdred_fast.collect.render_pixels` check that a
    replay follows the recorded states, and costs nothing.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        base = env.unwrapped
        size = getattr(base, "render_size", None)
        if size is None or not hasattr(base, "render_rgb"):
            raise TypeError(f"{type(base).__name__} cannot render frames (no render_rgb / render_size)")
        self._render = base.render_rgb
        self.observation_space = spaces.Box(0, 255, (3, int(size), int(size)), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        state, info = self.env.reset(seed=seed, options=options)
        return self._render(), _with_state(info, state)

    def step(self, action):
        state, reward, terminated, truncated, info = self.env.step(action)
        return self._render(), reward, terminated, truncated, _with_state(info, state)


class FrameStack(gym.Wrapper):
    """Stack the last ``k`` observations ``(C, H, W)`` on the channel axis: ``(k C, H, W)``.

    Oldest frame first. At ``reset`` the stack is filled with ``k`` copies of the
    first frame (TD-MPC2's convention), so every observation of an episode has
    the same shape and consecutive observations overlap in ``k - 1`` frames.
    """

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        if int(k) != k or k < 1:
            raise ValueError(f"frame stack must be a positive integer, got {k!r}")
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 3:
            raise TypeError(f"FrameStack needs a (C, H, W) Box observation space, got {space!r}")
        self.k = int(k)
        c, h, w = space.shape
        self.observation_space = spaces.Box(
            np.concatenate([space.low] * self.k, axis=0),
            np.concatenate([space.high] * self.k, axis=0),
            (self.k * c, h, w),
            space.dtype,
        )
        self._frames: deque = deque(maxlen=self.k)

    def _observation(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        frame, info = self.env.reset(seed=seed, options=options)
        for _ in range(self.k):
            self._frames.append(frame)
        return self._observation(), info

    def step(self, action):
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(frame)
        return self._observation(), reward, terminated, truncated, info


class TremblingHand(gym.ActionWrapper):
    """ "Trembling hand" noise: with probability ``p`` replace the agent's action
    by one drawn uniformly from the action space.

    The choice is made once per step of this wrapper (i.e. per agent step when
    it sits outside :class:`ActionRepeat`, as :func:`~cdred_fast.envs.make`
    places it). Its random stream is private, seeded by ``seed``, and re-seeded
    by ``reset(seed=...)``. ``info["trembled"]`` tells whether the last step's
    action was replaced.
    """

    def __init__(self, env: gym.Env, p: float, seed: int | None = None):
        super().__init__(env)
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"trembling-hand probability must be in [0, 1], got {p!r}")
        self.p = float(p)
        self._rng = np.random.default_rng(_derived_seed(seed, 0x7E3B))
        self._trembled = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(_derived_seed(seed, 0x7E3B))
        return self.env.reset(seed=seed, options=options)

    def action(self, action):
        # the agent's action is checked like ValidateAction does, also when it is replaced
        arr = np.asarray(action, dtype=np.float32)
        if arr.shape != self.action_space.shape:
            raise ValueError(f"action has shape {arr.shape}, the environment expects {self.action_space.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"action contains NaN or inf: {arr}")
        self._trembled = bool(self._rng.random() < self.p)
        if not self._trembled:
            return action
        space = self.action_space
        return self._rng.uniform(space.low, space.high).astype(space.dtype)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        info = dict(info)
        info["trembled"] = self._trembled
        return obs, reward, terminated, truncated, info


class TimeLimit(gym.Wrapper):
    """End every episode with ``truncated=True`` after ``max_episode_steps`` steps.

    ``max_episode_steps`` is a public attribute (the trainer derives the discount
    from it). Stepping an episode that has already ended raises ``RuntimeError``.
    """

    def __init__(self, env: gym.Env, max_episode_steps: int):
        super().__init__(env)
        if int(max_episode_steps) != max_episode_steps or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be a positive integer, got {max_episode_steps!r}")
        self.max_episode_steps = int(max_episode_steps)
        self.elapsed_steps: int | None = None  # None: reset() has not been called yet
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.elapsed_steps = 0
        self._done = False
        return obs, _with_success(info)

    def step(self, action) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("step() called on an episode that has ended (or was never started): call reset() first")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.elapsed_steps += 1
        if self.elapsed_steps >= self.max_episode_steps:
            truncated = True
        terminated, truncated = bool(terminated), bool(truncated)
        self._done = terminated or truncated
        return obs, float(reward), terminated, truncated, _with_success(info)


def _with_state(info: dict, state) -> dict:
    info = dict(info)
    info["state"] = np.asarray(state, dtype=np.float32)
    return info


def _with_success(info: dict) -> dict:
    """Return ``info`` with ``info["success"]`` present as a plain bool."""
    info = dict(info)
    info["success"] = bool(info.get("success", False))
    return info


def _derived_seed(seed: int | None, salt: int) -> list[int] | None:
    """A seed for an auxiliary stream, independent of the simulator's own stream."""
    return None if seed is None else [int(seed), salt]
