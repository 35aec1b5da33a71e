"""Collecting demonstrations and rendering pixel demonstrations.

* :func:`collect` rolls a policy (a scripted expert from :func:`cdred_fast.envs.scripted_policy`,
  a trained agent wrapped in :class:`AgentPolicy`, any ``obs -> action`` callable) in an
  environment and records the episodes (with their reset seeds when given a ``seed``) as
  :class:`~cdred_fast.data.Demonstrations`.
* :func:`render_pixels` re-simulates recorded state demonstrations in a pixel environment
  and records the frames of the same episodes.

The file format, its validation and loading are in :mod:`cdred_fast.data`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .data import DemonstrationError, Demonstrations
from .envs import make

__all__ = ["AgentPolicy", "collect", "render_pixels"]


def collect(
    env,
    policy: Callable[[np.ndarray], Any],
    episodes: int,
    successful_only: bool = False,
    max_attempts: int | None = None,
    seed: int | None = None,
    task: str | None = None,
) -> Demonstrations:
    """Roll ``policy`` (``obs -> action``) in ``env`` and record ``episodes`` episodes.

    Args:
        env: an environment from :func:`cdred_fast.envs.make` (any gymnasium env
            with ``info["success"]`` works; ``task`` names it if it has no ``task``).
            State or pixel observations (then the demonstrations hold pixels).
        policy: maps an observation to an action; the action is clipped to the
            action space, and the clipped action is what is recorded. If it has a
            ``reset()`` method (e.g. :class:`AgentPolicy`), that is called at the
            start of every episode; if it has an ``observe(info)`` method (e.g.
            :class:`cdred_fast.envs.registry.HoldOnSuccess`), that is called after every step.
        episodes: how many episodes to keep.
        successful_only: keep only episodes in which some step reported
            ``info["success"]``.
        max_attempts: give up after this many episodes (default ``episodes``,
            or ``10 * episodes`` with ``successful_only``).
        seed: attempt ``i`` is reset with ``seed + i`` and the kept episodes
            record their seeds (``Demonstrations.seeds``), so each can be replayed
            (:func:`render_pixels`). None: continue the environment's own stream;
            no seeds are recorded.

    Raises:
        RuntimeError: fewer than ``episodes`` episodes qualified within ``max_attempts``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_attempts is None:
        max_attempts = 10 * episodes if successful_only else episodes
    if max_attempts < episodes:
        raise ValueError(f"max_attempts ({max_attempts}) < episodes ({episodes})")
    if task is None:
        try:
            task = env.get_wrapper_attr("task")
        except AttributeError:
            raise ValueError("the environment has no 'task' attribute: pass task=...") from None
    low, high = env.action_space.low, env.action_space.high
    reset_policy = getattr(policy, "reset", None)
    observe = getattr(policy, "observe", None)

    kept: list[dict[str, Any]] = []
    attempts = 0
    while len(kept) < episodes and attempts < max_attempts:
        episode_seed = None if seed is None else int(seed) + attempts
        obs, _ = env.reset(seed=episode_seed)
        attempts += 1
        if callable(reset_policy):
            reset_policy()
        rec = {"obs": [], "action": [], "reward": [], "next_obs": []}
        success, done = False, False
        while not done:
            action = np.clip(np.asarray(policy(obs), dtype=np.float32), low, high)
            next_obs, reward, terminated, truncated, info = env.step(action)
            if callable(observe):
                observe(info)
            rec["obs"].append(obs)
            rec["action"].append(action)
            rec["reward"].append(reward)
            rec["next_obs"].append(next_obs)
            success = success or bool(info.get("success", False))
            done = terminated or truncated
            obs = next_obs
        if successful_only and not success:
            continue
        kept.append(
            {
                "obs": np.stack(rec["obs"]),
                "action": np.stack(rec["action"]),
                "reward": np.asarray(rec["reward"], dtype=np.float32),
                "next_obs": np.stack(rec["next_obs"]),
                "success": success,
                "success_last": bool(info.get("success", False)),
                "seed": episode_seed,
            }
        )
    if len(kept) < episodes:
        raise RuntimeError(
            f"collected only {len(kept)} of {episodes} {'successful ' if successful_only else ''}episodes "
            f"in {attempts} attempts on {task!r}"
        )
    return Demonstrations.from_episodes(kept, task=task)


class AgentPolicy:
    """A trained agent as a :func:`collect` policy: ``agent.act(obs, t0, eval_mode=True)``.

    ``reset()`` (called by :func:`collect` at each episode start) marks the next
    action as the first of an episode (the planner's warm start is reset).
    """

    def __init__(self, agent, eval_mode: bool = True):
        self.agent = agent
        self.eval_mode = bool(eval_mode)
        self._t0 = True

    def reset(self) -> None:
        self._t0 = True

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = self.agent.act(obs, t0=self._t0, eval_mode=self.eval_mode)
        self._t0 = False
        return np.asarray(action, dtype=np.float32)


# --------------------------------------------------------------------------- pixels from state
def render_pixels(
    demos: Demonstrations,
    task: str | None = None,
    seed: int | None = None,
    *,
    atol: float = 1e-4,
    frame_stack: int = 3,
    image_size: int = 64,
) -> Demonstrations:
    """Pixel demonstrations of the same episodes as state demonstrations ``demos``.

    Observations alone cannot restore a simulator's full state (DMControl state
    observations omit e.g. the cheetah's x position, and are not the physics
    state ``qpos, qvel`` in general), so pixels cannot be rendered from the
    stored observations. Instead each episode is **re-simulated**: a pixel
    environment (:func:`cdred_fast.envs.make` with ``obs="rgb"``) is reset with
    the episode's recorded reset seed, the recorded actions are replayed, and
    the frames are recorded. The simulators are deterministic, so the replay
    reproduces the episode; this is *checked*: at every step the replay's state
    observation (``info["state"]``) and reward must match the recorded ones
    within ``atol``, otherwise :class:`DemonstrationError` names the episode and
    step (a diverged replay would pair expert actions with wrong frames).

    Args:
        demos: state demonstrations with reset seeds (``demos.seeds``, recorded by
            :func:`collect` with ``seed=...``, ``cdred-fast collect``).
        task: the task (default ``demos.task``; must agree with it).
        seed: for demonstrations *without* recorded seeds: assume episode ``i`` was
            reset with ``seed + i`` (the convention of :func:`collect`); the check
            above still guards against a wrong assumption.
        atol: tolerance of the state/reward check.
        frame_stack, image_size: the pixel observation (SPEC section 1: 3 and 64).

    Returns:
        :class:`Demonstrations` with ``obs``/``next_obs`` ``uint8 [N, 3 frame_stack,
        image_size, image_size]``, the same actions, episode lengths, success
        flags and seeds, and the replay's rewards.

    Raises:
        DemonstrationError: no seeds and no ``seed``, pixel or mismatched input,
            or a replay that diverges from the recording.
        NotImplementedError: a task without pixel observations (Meta-World).
    """
    task = demos.task if task is None else str(task)
    if task != demos.task:
        raise DemonstrationError(f"the demonstrations are for task {demos.task!r}, not {task!r}")
    if demos.is_pixels:
        raise DemonstrationError("the demonstrations already have pixel observations")
    if demos.seeds is not None:
        seeds = demos.seeds.tolist()
    elif seed is not None:
        seeds = [int(seed) + i for i in range(demos.num_episodes)]
    else:
        raise DemonstrationError(
            "these demonstrations record no reset seeds, so their episodes cannot be re-simulated (observations "
            "alone do not determine the physics state). Collect state demonstrations with seeds "
            "(`cdred-fast collect TASK --policy CHECKPOINT --seed S ...` or collect.collect(..., seed=S)), or pass "
            "seed= if episode i is known to have been reset with seed + i."
        )
    env = make(task, "rgb", seed=int(seeds[0]), frame_stack=frame_stack, image_size=image_size)
    try:
        if env.observation_space.shape[0] != 3 * frame_stack or env.get_wrapper_attr("suite") != "dmcontrol":
            raise AssertionError("unexpected pixel environment")  # pragma: no cover
        state_dim = env.unwrapped.observation_space.shape[0]
        if demos.obs_dim != state_dim or demos.action_dim != env.action_space.shape[0]:
            raise DemonstrationError(
                f"the demonstrations have obs_dim {demos.obs_dim} and action_dim {demos.action_dim}; "
                f"{task!r} has {state_dim} and {env.action_space.shape[0]}"
            )
        episodes = []
        for i, (ep, ep_seed) in enumerate(zip(demos.episodes(), seeds)):
            frame, info = env.reset(seed=int(ep_seed))
            _check_replay(info["state"], ep["obs"][0], i, -1, "initial observation", atol, ep_seed)
            frames = [frame]
            rewards = []
            for t, action in enumerate(ep["action"]):
                frame, reward, terminated, truncated, info = env.step(action)
                _check_replay(info["state"], ep["next_obs"][t], i, t, "observation", atol, ep_seed)
                _check_replay(np.float32(reward), ep["reward"][t], i, t, "reward", atol, ep_seed)
                ended = terminated or truncated
                if ended != (t == len(ep["action"]) - 1):
                    raise DemonstrationError(
                        f"episode {i} (seed {ep_seed}): the replay {'ended' if ended else 'did not end'} at step {t} "
                        f"but the recorded episode has {len(ep['action'])} steps"
                    )
                frames.append(frame)
                rewards.append(reward)
            frames = np.stack(frames)
            episodes.append(
                {
                    "obs": frames[:-1],
                    "action": ep["action"],
                    "reward": np.asarray(rewards, np.float32),
                    "next_obs": frames[1:],
                    "success": ep["success"],
                    "success_last": ep["success_last"],
                    "seed": int(ep_seed),
                }
            )
    finally:
        env.close()
    return Demonstrations.from_episodes(episodes, task=task)


def _check_replay(got, expected, episode: int, step: int, what: str, atol: float, seed) -> None:
    err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))))
    if not err <= atol:
        where = "at reset" if step < 0 else f"after step {step}"
        raise DemonstrationError(
            f"episode {episode} (reset seed {seed}): the replay diverged from the recording {where}: {what} differs by "
            f"{err:.3g} > atol {atol:g}. The recorded seed or actions do not reproduce the episode (wrong seed, "
            "a trembling-hand or otherwise perturbed recording, or another simulator version)."
        )
