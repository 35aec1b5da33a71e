"""Online imitation training: SPEC section 3 / paper Algorithm 1.

The same loop trains RL experts: with ``cfg.method == "tdmpc2"`` the world model
learns from the environment reward (TD-MPC2) and no demonstrations or expert
buffer are used (``cdred-fast expert train TASK``). With ``cfg.method == "bc"`` (behaviour
cloning) it runs updates on the demonstrations alone: no seeding, no training episodes, and
``cfg.steps``, ``eval_freq`` and ``save_freq`` count updates.

Observations are state vectors or, with ``cfg.obs == "rgb"``, stacked 64x64 RGB
frames (DMControl; then the demonstrations must be pixels too, see
:func:`cdred_fast.collect.render_pixels`). With ``cfg.trembling_hand = p > 0`` both
the training and the evaluation environment replace the agent's action by a
uniformly random one with probability ``p``: in the paper's robustness experiment
(appendix D.5, following HyPE) the noise is part of the environment's dynamics and
the reported returns are those reached in the noisy environment. (``cdred-fast
eval --trembling-hand 0`` evaluates a checkpoint without the noise.)

One run lives in one work directory::

    work_dir/
      config.yaml        the full CDREDConfig of the run
      demos.npz          the expert demonstrations used (collected or copied in; not for tdmpc2)
      checkpoint.pt      latest checkpoint (agent, behavioural buffer, counters, RNG)
      train.csv          per-interval training statistics
      eval.csv           evaluation return and success over training
      tb/                TensorBoard event files
      learning_curve.png written at the end of the run (and when it is interrupted)

Every file is written with :func:`cdred_fast.checkpoint.atomic_write` (logs: :mod:`cdred_fast.logger`),
so a run killed at any moment leaves the previous complete version of each file in place. ``resume=True``
continues from ``checkpoint.pt``: the interrupted episode is discarded (its steps are
counted), the CSV rows written after the checkpoint are dropped, and every later
training episode is reset with a seed derived from its index, so a resumed run sees the
same episode initialisations as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .agent import CDREDAgent
from .buffer import EpisodeBuffer
from .checkpoint import load_checkpoint, save_checkpoint
from .collect import collect
from .config import CDREDConfig
from .data import Demonstrations
from .envs import has_scripted_policy, make, scripted_policy
from .logger import RunLogger, write_config
from .methods import get as get_method

# Offsets of the seeds of a run's other environments from cfg.seed.
EVAL_SEED_OFFSET = 10_000  # the evaluation environment; evaluation episode i is reset with cfg.seed + offset + i
COLLECT_SEED_OFFSET = 20_000  # scripted demonstrations collected for a run
SCRIPTED_DEMOS = 100  # demonstrations collected with a scripted expert when cfg.num_demos is None


# --------------------------------------------------------------------------- environments
def make_env(cfg: CDREDConfig, seed: int, trembling_hand: Optional[float] = None):
    """The environment of a run: ``cfg.task`` with ``cfg.obs`` (and its frame stack and image size)
    and ``cfg.trembling_hand`` unless ``trembling_hand`` overrides it."""
    p = cfg.trembling_hand if trembling_hand is None else trembling_hand
    return make(cfg.task, cfg.obs, seed=seed, trembling_hand=p, frame_stack=cfg.frame_stack, image_size=cfg.image_size)


# --------------------------------------------------------------------------- evaluation
@contextlib.contextmanager
def rng_untouched(device):
    """Context after which torch's global RNG (CPU, and ``device``'s when it is a CUDA device) is in
    the state it had on entry: the draws made inside do not change those made after."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        yield


def evaluate(agent: CDREDAgent, env, episodes: int, seed: int) -> dict[str, float]:
    """Mean return and success over ``episodes`` episodes acting with ``eval_mode=True``.

    Episode ``i`` is reset with ``seed + i``, so every evaluation of a run uses the same
    initial states and goals. ``success`` is the success flag of the last step (the
    TD-MPC2 convention); ``success_any`` counts an episode that succeeded at any step.

    Evaluation leaves training as it found it, so that evaluating in the middle of a training
    episode does not change what the training does next: the planner's warm start is restored
    afterwards (:meth:`CDREDAgent.preserve_plan_state`), and the draws of the evaluation (MPPI
    noise, policy samples and Q heads, from torch's global RNG) come from a fork of the global RNG
    (:func:`rng_untouched`), so the evaluation acts on a copy of the training's random stream
    and training continues from the same state.
    """
    with agent.preserve_plan_state(), rng_untouched(agent.device):
        return _evaluate(agent, env, episodes, seed)


def _evaluate(agent: CDREDAgent, env, episodes: int, seed: int) -> dict[str, float]:
    returns, final, anywhere = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, t, ep_return, succeeded, info = False, 0, 0.0, False, {}
        while not done:
            action = agent.act(obs, t0=t == 0, eval_mode=True)
            obs, reward, terminated, truncated, info = env.step(action.numpy())
            ep_return += float(reward)
            succeeded = succeeded or bool(info.get("success", False))
            done = terminated or truncated
            t += 1
        returns.append(ep_return)
        final.append(float(bool(info.get("success", False))))
        anywhere.append(float(succeeded))
    return {
        "episode_return": float(np.mean(returns)),
        "success": float(np.mean(final)),
        "success_any": float(np.mean(anywhere)),
    }


# --------------------------------------------------------------------------- demonstrations
def first_episodes(demos: Demonstrations, n: Optional[int], source: str = "the demonstration set") -> Demonstrations:
    """The first ``n`` episodes of ``demos`` (all of them when ``n`` is None): the paper's ablation
    with fewer demonstrations takes the first N episodes of a file (SPEC section 7)."""
    if n is None or n == demos.num_episodes:
        return demos
    if n > demos.num_episodes:
        raise ValueError(f"num_demos={n} asks for more episodes than {source} holds ({demos.num_episodes})")
    return Demonstrations.from_episodes(list(itertools.islice(demos.episodes(), n)), task=demos.task)


def obtain_demonstrations(cfg: CDREDConfig, demos: Optional[str | os.PathLike | Demonstrations], env) -> Demonstrations:
    """The expert data of a run: the first ``cfg.num_demos`` episodes (all when None) of a given
    file/object, or ``cfg.num_demos`` (default :data:`SCRIPTED_DEMOS`) successful episodes of a scripted
    expert collected now (Meta-World, ManiSkill2 pick-cube / lift-cube:
    :func:`cdred_fast.envs.has_scripted_policy`).

    Files are validated against the environment (task name, observation shape and action size).
    """
    obs_shape, action_dim = tuple(env.observation_space.shape), env.action_space.shape[0]
    if isinstance(demos, Demonstrations):
        demos.check_compatible(task=cfg.task, obs_shape=obs_shape, action_dim=action_dim)
        return first_episodes(demos, cfg.num_demos)
    if demos is not None:
        loaded = Demonstrations.load(demos, task=cfg.task, obs_shape=obs_shape, action_dim=action_dim)
        return first_episodes(loaded, cfg.num_demos, f"the file {os.fspath(demos)!r}")
    if not has_scripted_policy(cfg.task):
        raise ValueError(
            f"task {cfg.task!r} has no scripted expert: pass expert demonstrations (demos=PATH / --demos PATH)"
        )

    seed = cfg.seed + COLLECT_SEED_OFFSET
    collect_env = make(cfg.task, cfg.obs, seed=seed)  # the expert acts without trembling
    try:
        n = SCRIPTED_DEMOS if cfg.num_demos is None else cfg.num_demos
        return collect(collect_env, scripted_policy(cfg.task), n, successful_only=True, seed=seed)
    finally:
        collect_env.close()


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Runs Algorithm 1 for one config in one work directory.

    Args:
        cfg: the run's configuration (``episode_length`` is filled in from the task).
        work_dir: where the run's files live (created if needed).
        demos: a demonstrations file or object; None collects scripted experts (Meta-World,
            ManiSkill2 pick-cube / lift-cube).
        device: torch device of the agent.
        resume: continue from ``work_dir/checkpoint.pt``. Without it, a work dir that already
            holds a checkpoint is refused rather than overwritten.
        progress: show a tqdm progress bar.
        tensorboard: also write TensorBoard event files.
        log_freq: environment steps between rows of train.csv (default: one episode).
    """

    def __init__(
        self,
        cfg: CDREDConfig,
        work_dir: str | os.PathLike,
        demos=None,
        device: str = "cpu",
        resume: bool = False,
        progress: bool = True,
        tensorboard: bool = True,
        log_freq: Optional[int] = None,
    ):
        self.work_dir = Path(work_dir)
        self.ckpt_path = self.work_dir / "checkpoint.pt"
        if self.ckpt_path.exists() and not resume:
            raise FileExistsError(
                f"{self.work_dir} already holds a run ({self.ckpt_path.name}): resume it (--resume) "
                "or choose another work directory"
            )
        if resume and not self.ckpt_path.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {self.ckpt_path}")
        self.work_dir.mkdir(parents=True, exist_ok=True)

        self.env = make_env(cfg, seed=cfg.seed)
        self.eval_env = make_env(cfg, seed=cfg.seed + EVAL_SEED_OFFSET)
        T = self.env.get_wrapper_attr("max_episode_steps")
        if cfg.episode_length is None:
            cfg = dataclasses.replace(cfg, episode_length=T)

        state = load_checkpoint(self.ckpt_path) if resume else None
        if state is not None:  # only the length of the run may change on resume
            # Fields added after a checkpoint was written count as their defaults.
            saved = {**CDREDConfig().to_dict(), "episode_length": None, **state["config"]}
            current = cfg.to_dict()
            changed = sorted(k for k in current if k not in ("steps", "work_dir") and saved.get(k) != current[k])
            if changed:
                raise ValueError(
                    f"cannot resume {self.work_dir} with a different config: {changed} differ from the checkpoint"
                )
        self.cfg = cfg
        self.episode_length = T
        # Methods that learn from the demonstrations alone (BC): no seeding, no collection, `steps`
        # counts updates
        self.offline = not get_method(cfg.method).interacts
        self.seed_steps = 0 if self.offline else cfg.seed_steps_for(T)
        self.log_freq = log_freq or T
        self.progress = progress
        write_config(self.work_dir / "config.yaml", cfg)

        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        obs_shape, action_dim = tuple(self.env.observation_space.shape), self.env.action_space.shape[0]
        # Pixel buffers store each stacked frame once (see EpisodeBuffer).
        frame_stack = cfg.frame_stack if cfg.obs == "rgb" else 1
        buffer_obs = obs_shape if cfg.obs == "rgb" else obs_shape[0]

        self.demos: Optional[Demonstrations] = None
        self.expert_buffer: Optional[EpisodeBuffer] = None
        if cfg.method == "tdmpc2":
            if demos is not None:
                raise ValueError("method='tdmpc2' learns from the environment reward: it uses no demonstrations")
        else:
            demos_path = self.work_dir / "demos.npz"
            demos_cfg = cfg
            if resume and demos_path.exists():  # the run's own demonstrations, already num_demos of them
                demos, demos_cfg = demos_path, dataclasses.replace(cfg, num_demos=None)
            self.demos = obtain_demonstrations(demos_cfg, demos, self.env)
            if not demos_path.exists():
                self.demos.save(demos_path)
            self.expert_buffer = EpisodeBuffer.from_demonstrations(self.demos, device=device, frame_stack=frame_stack)
        capacity = 1 if self.offline else cfg.buffer_capacity  # offline: the behavioural buffer stays empty
        self.buffer = EpisodeBuffer(capacity, buffer_obs, action_dim, device=device, frame_stack=frame_stack)
        self.agent = CDREDAgent(cfg, action_dim=action_dim, device=device, obs_shape=obs_shape)

        self.step, self.episode = 0, 0
        self.logger = RunLogger(self.work_dir, tensorboard=tensorboard)
        if state is not None:
            self._restore(state)
        else:
            self.logger.truncate_after(-1)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write ``checkpoint.pt`` (see :mod:`cdred_fast.checkpoint`)."""
        save_checkpoint(self.ckpt_path, self.cfg, self.agent, self.buffer, self.step, self.episode, self.rng)

    def _restore(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.step, self.episode = int(state["step"]), int(state["episode"])
        torch.set_rng_state(state["rng"]["torch"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        self.logger.truncate_after(self.step)

    # ------------------------------------------------------------------ main loop
    def evaluate(self) -> dict[str, float]:
        seed = self.cfg.seed + EVAL_SEED_OFFSET
        result = evaluate(self.agent, self.eval_env, self.cfg.eval_episodes, seed=seed)
        self.logger.log_eval(self.step, result)
        return result

    def _update(self) -> dict[str, float]:
        cfg = self.cfg
        if self.offline:  # BC: batch_size (state, action) pairs of the demonstrations
            return self.agent.update(None, self.expert_buffer.sample(cfg.batch_size, 1))
        behavioral = self.buffer.sample(cfg.batch_size, cfg.horizon)
        if self.expert_buffer is None:  # tdmpc2: the environment reward, no demonstrations
            return self.agent.update(behavioral)
        expert = self.expert_buffer.sample(cfg.batch_size, cfg.horizon)
        return self.agent.update(behavioral, expert)

    def _train_offline(self, bar) -> None:
        """Updates until ``cfg.steps`` updates, with the logging, evaluation and checkpoint
        intervals counted in updates (``steps_per_s`` of train.csv: updates per second)."""
        cfg = self.cfg
        stats: dict[str, list[float]] = defaultdict(list)
        next_eval = (self.step // cfg.eval_freq + 1) * cfg.eval_freq
        next_save = (self.step // cfg.save_freq + 1) * cfg.save_freq if cfg.save_freq else math.inf
        next_log = self.step + self.log_freq
        interval_start, interval_step0 = time.time(), self.step
        while self.step < cfg.steps:
            for k, v in self._update().items():
                stats[k].append(v)
            self.step += 1
            bar.update(1)
            if self.step >= next_log:
                rate = (self.step - interval_step0) / max(time.time() - interval_start, 1e-9)
                self.logger.log_train(self.step, self.episode, stats, [], rate)
                stats = defaultdict(list)
                interval_start, interval_step0 = time.time(), self.step
                next_log = self.step + self.log_freq
            if self.step >= next_eval:
                result = self.evaluate()
                bar.set_postfix(success=result["success"], ret=round(result["episode_return"], 1))
                next_eval += cfg.eval_freq
            if self.step >= next_save:
                self.save()
                next_save += cfg.save_freq

    def train(self) -> dict[str, Any]:
        """Run until ``cfg.steps`` environment steps (offline methods: updates); returns the first and
        last evaluations."""
        from tqdm import tqdm

        cfg = self.cfg
        if not self.logger.eval.rows:
            self.evaluate()  # "before": the untrained agent
        stats: dict[str, list[float]] = defaultdict(list)
        ep_returns: list[float] = []
        next_eval = (self.step // cfg.eval_freq + 1) * cfg.eval_freq
        next_save = (self.step // cfg.save_freq + 1) * cfg.save_freq if cfg.save_freq else math.inf
        next_log = self.step + self.log_freq
        unit = "update" if self.offline else "step"
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, unit=unit, dynamic_ncols=True)
        interval_start = time.time()
        interval_step0 = self.step
        try:
            if self.offline:
                self._train_offline(bar)
            while not self.offline and self.step < cfg.steps:
                # One episode. Each is reset with a seed derived from its index (deterministic resume).
                obs, _ = self.env.reset(seed=cfg.seed * 1_000_003 + self.episode)
                ep_obs, ep_act, ep_rew, ep_return, done, t = [obs], [], [], 0.0, False, 0
                while not done and self.step < cfg.steps:
                    if self.step < self.seed_steps:
                        action = self.rng.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)
                    else:
                        action = self.agent.act(obs, t0=t == 0).numpy()
                    obs, reward, terminated, truncated, info = self.env.step(action)
                    ep_obs.append(obs)
                    ep_act.append(action)
                    ep_rew.append(float(reward))
                    ep_return += float(reward)
                    done = terminated or truncated
                    t += 1
                    self.step += 1
                    bar.update(1)
                    if done:
                        self.buffer.add_episode(np.stack(ep_obs), np.stack(ep_act), np.asarray(ep_rew, np.float32))
                        self.episode += 1
                        ep_returns.append(ep_return)
                    # Updates: a burst of seed_steps at the end of seeding, then one per step.
                    if self.step >= self.seed_steps and self.buffer.num_episodes > 0:
                        n = self.seed_steps if self.step == self.seed_steps else 1
                        for _ in range(n):
                            for k, v in self._update().items():
                                stats[k].append(v)
                    if self.step >= next_log:
                        steps_per_s = (self.step - interval_step0) / max(time.time() - interval_start, 1e-9)
                        self.logger.log_train(self.step, self.episode, stats, ep_returns, steps_per_s)
                        stats, ep_returns = defaultdict(list), []
                        interval_start, interval_step0 = time.time(), self.step
                        next_log = self.step + self.log_freq
                    if self.step >= next_eval:
                        result = self.evaluate()
                        bar.set_postfix(success=result["success"], ret=round(result["episode_return"], 1))
                        next_eval += cfg.eval_freq
                    if self.step >= next_save and done:
                        self.save()
                        next_save += cfg.save_freq
        except KeyboardInterrupt:
            bar.close()
            self.save()
            self.logger.plot(self.cfg)
            print(f"\ninterrupted at step {self.step}: checkpoint saved to {self.ckpt_path} (resume with --resume)")
            raise
        bar.close()
        if not self.logger.eval.rows or float(self.logger.eval.rows[-1]["step"]) < self.step:
            self.evaluate()  # "after"
        self.save()
        png = self.logger.plot(self.cfg)
        first, last = self.logger.eval.rows[0], self.logger.eval.rows[-1]
        self.logger.flush()
        return {
            "work_dir": str(self.work_dir),
            "steps": self.step,
            "before": {k: float(v) for k, v in first.items()},
            "after": {k: float(v) for k, v in last.items()},
            "learning_curve": str(png),
        }


__all__ = [
    "COLLECT_SEED_OFFSET",
    "EVAL_SEED_OFFSET",
    "Trainer",
    "evaluate",
    "make_env",
    "obtain_demonstrations",
]
