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
      videos/            with cfg.save_video: eval_<step>.gif, the first episode of each evaluation
                         (<step> zero-padded to 8 digits, e.g. eval_00003000.gif)

Every file is written with :func:`cdred_fast.checkpoint.atomic_write` (logs: :mod:`cdred_fast.logger`),
so a run killed at any moment leaves the previous complete version of each file in place. ``resume=True``
continues from ``checkpoint.pt``: the interrupted episode is discarded (its steps are
counted), the CSV rows written after the checkpoint are dropped, and every later
training episode is reset with a seed derived from its index, so a resumed run sees the
same episode initialisations as an uninterrupted one.

Checkpoints and interruptions. A checkpoint is written when the run starts (step 0),
at the first episode boundary after every evaluation, every ``save_freq`` steps (at an
episode boundary) and every ``save_interval_s`` seconds (default 600, at an episode
boundary), and at the end. Each records where in the loop it was taken (its
``progress``: the statistics of the current log interval, the next log / evaluation /
checkpoint steps, the updates still due after the episode that just ended, the number
of CSV rows written), so a resumed run repeats exactly what the uninterrupted run does.
SIGINT and SIGTERM stop the run at a consistent point (:mod:`cdred_fast.interrupts`)
and write a checkpoint there: between the updates of the burst at the end of seeding
(the remaining updates run on resume), before an evaluation that was interrupted (it
runs again with the same random state), or, inside an episode, the state at the
start of that episode (agent, random state and counters are kept in memory for this;
the buffer only changes when an episode ends). A second signal stops at once without
writing. ``--resume`` with ``steps`` below the checkpoint's step is refused.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .agent import CDREDAgent
from .buffer import EpisodeBuffer
from .checkpoint import (
    check_agent_state,
    check_writable_dir,
    checkpoint_state,
    load_checkpoint,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from .collect import AgentPolicy, collect
from .config import CDREDConfig
from .data import Demonstrations, first_episodes, same_demonstrations
from .envs import has_scripted_policy, make, scripted_policy
from .errors import CheckpointError, ConfigError, NoCheckpointError, RunDirError
from .interrupts import ForcedStop, StopSignals
from .logger import RunLogger, write_config
from .methods import get as get_method
from .video import FrameRenderer, record_episode, save_gif, video_unsupported_reason

# The files of a run directory that atomic_write replaces (stale temporaries are removed at start).
RUN_FILES = ("checkpoint.pt", "config.yaml", "demos.npz", "train.csv", "eval.csv", "learning_curve.png")
VIDEO_DIR = "videos"  # cfg.save_video: videos/eval_<step>.gif (VIDEO_FILES, a glob pattern)
VIDEO_FILES = "eval_*.gif"
# Fields that may change on resume: the length of the run, where it lives, whether it records videos.
RESUME_MAY_CHANGE = ("steps", "work_dir", "save_video")

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


def evaluate(
    agent: CDREDAgent, env, episodes: int, seed: int, video: Optional[str | os.PathLike] = None
) -> dict[str, float]:
    """Mean return and success over ``episodes`` episodes acting with ``eval_mode=True``.

    Episode ``i`` is reset with ``seed + i``, so every evaluation of a run uses the same
    initial states and goals. ``success`` is the success flag of the last step (the
    TD-MPC2 convention); ``success_any`` counts an episode that succeeded at any step.

    ``video``: a path where the first episode is written as an animated GIF
    (:mod:`cdred_fast.video`: the reset frame, then one frame per step, 160 x 160). Recording
    only reads the simulator, so the results (and every random state) are those of the same
    evaluation without it.

    Evaluation leaves training as it found it, so that evaluating in the middle of a training
    episode does not change what the training does next: the planner's warm start is restored
    afterwards (:meth:`CDREDAgent.preserve_plan_state`), and the draws of the evaluation (MPPI
    noise, policy samples and Q heads, from torch's global RNG) come from a fork of the global RNG
    (:func:`rng_untouched`), so the evaluation acts on a copy of the training's random stream
    and training continues from the same state.
    """
    with agent.preserve_plan_state(), rng_untouched(agent.device):
        return _evaluate(agent, env, episodes, seed, video)


def evaluate_episodes(agent: CDREDAgent, env, episodes: int, seed: int) -> list[tuple[float, bool, bool]]:
    """The episodes of :func:`evaluate` one by one: ``(return, success at the last step, at any
    step)`` of each, the same episodes with the same draws (``evaluate``'s values are their
    means). For comparisons that pair episodes across agents: episode ``i`` starts from the
    same initial state for every agent evaluated with the same ``seed``."""
    with agent.preserve_plan_state(), rng_untouched(agent.device):
        return _episodes(agent, env, episodes, seed)


def _episodes(
    agent: CDREDAgent, env, episodes: int, seed: int, video: Optional[str | os.PathLike] = None
) -> list[tuple[float, bool, bool]]:
    if episodes < 1:
        raise ValueError(f"an evaluation needs at least one episode, got episodes={episodes}")
    out = []
    for i in range(episodes):
        if video is not None and i == 0:  # recorded: the same actions, the simulator only read
            episode = record_episode(env, AgentPolicy(agent, eval_mode=True), seed + i)
            save_gif(episode.frames, video)
            out.append((episode.episode_return, episode.success, episode.success_any))
        else:
            out.append(_play(agent, env, seed + i))
    return out


def _evaluate(
    agent: CDREDAgent, env, episodes: int, seed: int, video: Optional[str | os.PathLike] = None
) -> dict[str, float]:
    returns, final, anywhere = zip(*_episodes(agent, env, episodes, seed, video))
    return {
        "episode_return": float(np.mean(returns)),
        "success": float(np.mean(np.asarray(final, dtype=float))),
        "success_any": float(np.mean(np.asarray(anywhere, dtype=float))),
    }


def _play(agent: CDREDAgent, env, seed: int) -> tuple[float, bool, bool]:
    """One evaluation episode reset with ``seed``: (return, success at the last step, at any step)."""
    obs, _ = env.reset(seed=seed)
    done, t, ep_return, succeeded, info = False, 0, 0.0, False, {}
    while not done:
        action = agent.act(obs, t0=t == 0, eval_mode=True)
        obs, reward, terminated, truncated, info = env.step(action.numpy())
        ep_return += float(reward)
        succeeded = succeeded or bool(info.get("success", False))
        done = terminated or truncated
        t += 1
    return ep_return, bool(info.get("success", False)), succeeded


# --------------------------------------------------------------------------- demonstrations


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


def check_episode_fit(cfg: CDREDConfig, episode_length: int) -> None:
    """Refuse a config that could only fail once training starts: sub-trajectories of
    ``horizon`` transitions must fit in an episode, and a whole episode in the buffer."""
    if cfg.horizon > episode_length:
        raise ConfigError(
            f"horizon={cfg.horizon} is longer than the episodes of {cfg.task} ({episode_length} steps): "
            f"no sub-trajectory of {cfg.horizon} transitions fits; use horizon <= {episode_length}"
        )
    if cfg.buffer_size is not None and cfg.buffer_size < episode_length:  # None: the method's default
        raise ConfigError(
            f"buffer_size={cfg.buffer_size} is below the episode length of {cfg.task} ({episode_length}): "
            f"an episode does not fit the buffer; use buffer_size >= {episode_length}"
        )


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Runs Algorithm 1 for one config in one work directory.

    Args:
        cfg: the run's configuration (``episode_length`` is filled in from the task).
        work_dir: where the run's files live (created if needed, once the config and task are checked).
        demos: a demonstrations file or object; None collects scripted experts (Meta-World,
            ManiSkill2 pick-cube / lift-cube). On resume the run's ``demos.npz`` is used; a
            ``demos`` that differs from it is refused.
        device: torch device of the agent.
        resume: continue from ``work_dir/checkpoint.pt``. Without it, a work dir that already
            holds a checkpoint is refused rather than overwritten.
        progress: show a tqdm progress bar.
        tensorboard: also write TensorBoard event files.
        log_freq: environment steps between rows of train.csv (default: one episode).
        save_interval_s: seconds between periodic checkpoints (written at an episode boundary);
            None disables the timer (checkpoints after evaluations and every ``save_freq`` steps stay).
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
        save_interval_s: Optional[float] = 600.0,
    ):
        self.work_dir = Path(work_dir)
        self.ckpt_path = self.work_dir / "checkpoint.pt"
        if self.ckpt_path.exists() and not resume:
            raise RunDirError(
                f"{self.work_dir} already holds a run ({self.ckpt_path.name}): resume it (--resume) "
                "or choose another work directory"
            )
        if resume and not self.ckpt_path.exists():
            raise NoCheckpointError(f"cannot resume: no checkpoint at {self.ckpt_path}")
        check_writable_dir(self.work_dir)
        if cfg.save_video and video_unsupported_reason(cfg.task):
            raise ConfigError(f"save_video=True: {video_unsupported_reason(cfg.task)}")
        state = load_checkpoint(self.ckpt_path) if resume else None

        self.env = make_env(cfg, seed=cfg.seed)
        self.eval_env = make_env(cfg, seed=cfg.seed + EVAL_SEED_OFFSET)
        if cfg.save_video:  # fail now, not at the first evaluation, where no frame can be rendered
            FrameRenderer(self.eval_env).close()
        T = self.env.get_wrapper_attr("max_episode_steps")
        if cfg.episode_length is None:
            cfg = dataclasses.replace(cfg, episode_length=T)
        check_episode_fit(cfg, T)

        if state is not None:  # only the length of the run (and save_video) may change on resume
            # Fields added after a checkpoint was written count as their defaults.
            saved = {**CDREDConfig().to_dict(), "episode_length": None, **state["config"]}
            current = cfg.to_dict()
            changed = sorted(k for k in current if k not in RESUME_MAY_CHANGE and saved.get(k) != current[k])
            if changed:
                raise ConfigError(
                    f"cannot resume {self.work_dir} with a different config: {changed} differ from the checkpoint"
                )
            if cfg.steps < state["step"]:
                raise ConfigError(
                    f"cannot resume {self.work_dir} with steps={cfg.steps}: the run is at step {state['step']} "
                    f"(its checkpoint and replay buffer are kept; give steps >= {state['step']})"
                )
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create work directory {self.work_dir}: {exc.strerror or exc}") from exc
        remove_stale_temporaries(self.work_dir, RUN_FILES)
        remove_stale_temporaries(self.work_dir / VIDEO_DIR, (VIDEO_FILES,))
        self.cfg = cfg
        self.device = device
        self.episode_length = T
        # Methods that learn from the demonstrations alone (BC): no seeding, no collection, `steps`
        # counts updates
        self.offline = not get_method(cfg.method).interacts
        self.seed_steps = 0 if self.offline else cfg.seed_steps_for(T)
        self.log_freq = log_freq or T
        self.progress = progress
        self.save_interval_s = save_interval_s

        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
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
                raise ConfigError("method='tdmpc2' learns from the environment reward: it uses no demonstrations")
        else:
            self.demos = self._demonstrations(cfg, demos, resume)
            self.expert_buffer = EpisodeBuffer.from_demonstrations(self.demos, device=device, frame_stack=frame_stack)
        write_config(self.work_dir / "config.yaml", cfg)
        capacity = 1 if self.offline else cfg.buffer_capacity  # offline: the behavioural buffer stays empty
        self.buffer = EpisodeBuffer(capacity, buffer_obs, action_dim, device=device, frame_stack=frame_stack)
        self.agent = CDREDAgent(cfg, action_dim=action_dim, device=device, obs_shape=obs_shape)

        self.step, self.episode = 0, 0
        self._init_progress()
        self._fresh = state is None
        if state is not None:
            rows = state.get("progress", {}).get("log_rows")
            purge = state["step"] + 1 if (rows is None or rows.get("eval", 1) > 0) else state["step"]
            self.logger = RunLogger(self.work_dir, tensorboard=tensorboard, purge_step=purge)
            self._restore(state)
        else:
            self.logger = RunLogger(self.work_dir, tensorboard=tensorboard, fresh=True)
            self.logger.truncate_after(-1)

    def _demonstrations(self, cfg: CDREDConfig, demos, resume: bool) -> Demonstrations:
        """The run's demonstrations; a fresh run writes them to ``demos.npz`` (replacing a file
        left by an earlier run without a checkpoint), a resumed run reads them from there."""
        demos_path = self.work_dir / "demos.npz"
        if resume and demos_path.exists():  # the run's own demonstrations, already num_demos of them
            saved = obtain_demonstrations(dataclasses.replace(cfg, num_demos=None), demos_path, self.env)
            if demos is not None and not same_demonstrations(saved, obtain_demonstrations(cfg, demos, self.env)):
                raise ConfigError(
                    f"cannot resume {self.work_dir} with other demonstrations: the run trains on its {demos_path.name}, "
                    f"which differs from {demos}; resume without --demos"
                )
            return saved
        obtained = obtain_demonstrations(cfg, demos, self.env)
        obtained.save(demos_path)
        return obtained

    # ------------------------------------------------------------------ checkpoints
    def _init_progress(self) -> None:
        """The loop's bookkeeping, which a checkpoint records (see :meth:`_progress`)."""
        cfg = self.cfg
        self._stats: dict[str, list[float]] = defaultdict(list)
        self._ep_returns: list[float] = []
        self._next_log = self.step + self.log_freq
        self._next_eval = (self.step // cfg.eval_freq + 1) * cfg.eval_freq
        self._next_save = (self.step // cfg.save_freq + 1) * cfg.save_freq if cfg.save_freq else None
        self._pending = 0  # updates still due for the step self.step
        self._resume_pending: Optional[int] = None  # a resumed run starts with these updates
        self._evals_since_save = 0
        self._last_save = time.monotonic()
        self._in_episode = False  # between an episode's reset and its end
        self._start: Optional[dict] = None  # the state at the start of the current episode
        self._rng_before_eval: Optional[dict] = None

    def _progress(self, pending: Optional[int] = None) -> dict:
        return {
            "pending_updates": int(self._pending if pending is None else pending),
            "stats": {k: [float(x) for x in v] for k, v in self._stats.items()},
            "episode_returns": [float(x) for x in self._ep_returns],
            "next_log": int(self._next_log),
            "next_eval": int(self._next_eval),
            "next_save": None if self._next_save is None else int(self._next_save),
            "log_rows": self.logger.row_counts(),
        }

    def _state(self) -> dict:
        """The checkpoint of the current state (an evaluation under way: the random state before it)."""
        rng = self._rng_before_eval or rng_state(self.rng)
        return checkpoint_state(
            self.cfg,
            self.agent.state_dict(),
            self.buffer.state_dict(),
            self.step,
            self.episode,
            rng,
            self._progress(),
        )

    def save(self) -> None:
        """Write ``checkpoint.pt`` (see :mod:`cdred_fast.checkpoint`)."""
        write_checkpoint(self.ckpt_path, self._state())
        self._evals_since_save = 0
        self._last_save = time.monotonic()

    def _interrupt_state(self) -> dict:
        """The checkpoint an interruption writes: inside an episode, the state at its start
        (the buffer has not changed since); otherwise the current state."""
        if not self._in_episode or self._start is None:
            return self._state()
        start = self._start
        agent_state = start["agent"] if start["agent"] is not None else self.agent.state_dict()
        return checkpoint_state(
            self.cfg,
            agent_state,
            self.buffer.state_dict(),
            start["step"],
            start["episode"],
            start["rng"],
            start["progress"],
        )

    def _mark_episode_start(self) -> None:
        """Keep what :meth:`_interrupt_state` needs; the agent is copied only when it can be
        updated during this episode."""
        updates_possible = self.step + self.episode_length >= self.seed_steps
        self._start = {
            "agent": copy.deepcopy(self.agent.state_dict()) if updates_possible else None,
            "rng": copy.deepcopy(rng_state(self.rng)),
            "step": self.step,
            "episode": self.episode,
            "progress": self._progress(),
        }

    def _save_due(self) -> bool:
        due = self._evals_since_save > 0
        if self._next_save is not None and self.step >= self._next_save:
            while self._next_save <= self.step:
                self._next_save += self.cfg.save_freq
            due = True
        if self.save_interval_s is not None and time.monotonic() - self._last_save >= self.save_interval_s:
            due = True
        return due

    def _restore(self, state: dict) -> None:
        check_agent_state(self.agent, state["agent"], where=str(self.ckpt_path))
        try:
            self.agent.load_state_dict(state["agent"])
            self.buffer.load_state_dict(state["buffer"])
            self.step, self.episode = int(state["step"]), int(state["episode"])
            set_rng_state(state["rng"], self.rng)
        except Exception as exc:  # any malformed part: KeyError, ValueError, RuntimeError, IndexError, ...
            raise CheckpointError(f"{self.ckpt_path} does not load into this run: {exc}") from exc
        self._init_progress()
        progress = state.get("progress") or {}
        if "log_rows" in progress:
            try:
                rows = (int(progress["log_rows"]["train"]), int(progress["log_rows"]["eval"]))
                self._stats = defaultdict(list, {k: [float(x) for x in v] for k, v in progress["stats"].items()})
                self._ep_returns = [float(x) for x in progress["episode_returns"]]
                self._next_log, self._next_eval = int(progress["next_log"]), int(progress["next_eval"])
                if self.cfg.save_freq and progress["next_save"] is not None:
                    self._next_save = int(progress["next_save"])
                self._resume_pending = int(progress["pending_updates"])
            except Exception as exc:
                raise CheckpointError(f"{self.ckpt_path} has a malformed 'progress' record: {exc!r}") from exc
            self.logger.keep_rows(*rows)
        else:  # a checkpoint of format 1: taken at an episode boundary
            self.logger.truncate_after(self.step)

    # ------------------------------------------------------------------ main loop
    def evaluate(self) -> dict[str, float]:
        """Evaluate and log a row of eval.csv. A signal stops the evaluation at once; the
        checkpoint then keeps the random state of before it, so it runs again the same way."""
        seed = self.cfg.seed + EVAL_SEED_OFFSET
        self._rng_before_eval = copy.deepcopy(rng_state(self.rng))
        stop = getattr(self, "_signals", None)
        video = self.video_path(self.step) if self.cfg.save_video else None
        with stop.immediate() if stop is not None else contextlib.nullcontext():
            result = evaluate(self.agent, self.eval_env, self.cfg.eval_episodes, seed=seed, video=video)
        self.logger.log_eval(self.step, result)
        self._rng_before_eval = None
        self._evals_since_save += 1
        return result

    def video_path(self, step: int) -> Path:
        """Where the evaluation at ``step`` writes its video (``cfg.save_video``):
        ``work_dir/videos/eval_<step>.gif``, the step zero-padded to 8 digits."""
        return self.work_dir / VIDEO_DIR / f"eval_{int(step):08d}.gif"

    def _update(self) -> dict[str, float]:
        cfg = self.cfg
        if self.offline:  # BC: batch_size (state, action) pairs of the demonstrations
            return self.agent.update(None, self.expert_buffer.sample(cfg.batch_size, 1))
        behavioral = self.buffer.sample(cfg.batch_size, cfg.horizon)
        if self.expert_buffer is None:  # tdmpc2: the environment reward, no demonstrations
            return self.agent.update(behavioral)
        expert = self.expert_buffer.sample(cfg.batch_size, cfg.horizon)
        return self.agent.update(behavioral, expert)

    def _after_step(self, updates: int, bar) -> None:
        """The work after an environment step (offline methods: after counting an update):
        ``updates`` updates (a signal stops between two), then the train.csv row and the
        evaluation when they are due."""
        self._pending = updates
        while self._pending > 0:
            for k, v in self._update().items():
                self._stats[k].append(v)
            self._pending -= 1
            self._signals.check()
        if self.step >= self._next_log:
            steps_per_s = (self.step - self._interval_step0) / max(time.time() - self._interval_start, 1e-9)
            self.logger.log_train(self.step, self.episode, self._stats, self._ep_returns, steps_per_s)
            self._stats, self._ep_returns = defaultdict(list), []
            self._interval_start, self._interval_step0 = time.time(), self.step
            self._next_log = self.step + self.log_freq
        if self.step >= self._next_eval:
            result = self.evaluate()
            bar.set_postfix(success=result["success"], ret=round(result["episode_return"], 1))
            self._next_eval += self.cfg.eval_freq
        self._signals.check()

    def _run_offline(self, bar) -> None:
        """Offline methods (BC): ``steps`` counts updates, and the logging, evaluation and
        checkpoint intervals count them too (``steps_per_s`` of train.csv: updates per second).
        Every point between two updates is a resume point."""
        while self.step < self.cfg.steps:
            if self._save_due():
                self.save()
            self._signals.check()
            self.step += 1
            bar.update(1)
            self._after_step(1, bar)

    def _run(self, bar) -> None:
        cfg = self.cfg
        if self._fresh:
            self.save()  # step 0: a run killed from here on can be resumed
            self._fresh = False
        if not self.logger.eval.rows:
            self.evaluate()  # "before": the untrained agent
        if self._resume_pending is not None:  # resumed inside the work that follows an episode's end
            pending, self._resume_pending = self._resume_pending, None
            self._after_step(pending, bar)
        if self.offline:
            self._run_offline(bar)
        while not self.offline and self.step < cfg.steps:
            if self._save_due():
                self.save()
            self._signals.check()
            self._mark_episode_start()
            self._in_episode = True
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
                    self._ep_returns.append(ep_return)
                    self._in_episode = False  # from here the current state is a resume point
                # Updates: a burst of seed_steps at the end of seeding, then one per step.
                n = 0
                if self.step >= self.seed_steps and self.buffer.num_episodes > 0:
                    n = self.seed_steps if self.step == self.seed_steps else 1
                self._after_step(n, bar)
        if not self.logger.eval.rows or float(self.logger.eval.rows[-1]["step"]) < self.step:
            self.evaluate()  # "after"
        self.save()

    def train(self) -> dict[str, Any]:
        """Run until ``cfg.steps`` environment steps (offline methods: updates); returns the first and
        last evaluations.

        SIGINT / SIGTERM write a checkpoint at a consistent point (see the module docstring)
        and raise ``KeyboardInterrupt``; :attr:`stopped_by` is then the signal number.
        """
        from tqdm import tqdm

        cfg = self.cfg
        self.stopped_by: Optional[int] = None
        unit = "update" if self.offline else "step"
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, unit=unit, dynamic_ncols=True)
        self._interval_start, self._interval_step0 = time.time(), self.step
        with StopSignals() as self._signals:
            try:
                self._run(bar)
            except KeyboardInterrupt as exc:
                bar.close()
                self.stopped_by = self._signals.signum or 2
                if isinstance(exc, ForcedStop):
                    print(f"\nstopped at step {self.step} without writing a checkpoint (the last one stays)")
                    raise
                state = self._interrupt_state()
                write_checkpoint(self.ckpt_path, state)
                self.logger.flush()
                print(
                    f"\ninterrupted at step {self.step}: checkpoint of step {state['step']} saved to "
                    f"{self.ckpt_path} (resume with --resume)"
                )
                raise
            finally:
                self._signals = None
        bar.close()
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
    "RESUME_MAY_CHANGE",
    "RUN_FILES",
    "VIDEO_DIR",
    "check_episode_fit",
    "EVAL_SEED_OFFSET",
    "Trainer",
    "evaluate",
    "make_env",
    "obtain_demonstrations",
]
