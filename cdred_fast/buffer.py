"""Episode replay buffers (behavioural and expert).

:class:`EpisodeBuffer` stores whole episodes and samples sub-trajectories
``(s_0, a_0, r_0, s_1, ..., a_{H-1}, r_{H-1}, s_H)`` that never cross an episode
boundary (SPEC section 3). The same class serves as the behavioural buffer (the
agent's own episodes, FIFO) and the expert buffer (demonstrations, usually never
full).

Observations are either flat ``float32`` state vectors (``obs_dim`` an int) or
``uint8`` images (``obs_dim`` a shape ``(C, H, W)``), kept as ``uint8`` in
storage and in samples (the pixel encoder converts them), 4x less memory than
``float32``. Pixel observations made by :class:`~cdred_fast.envs.wrappers.FrameStack`
overlap: consecutive observations share ``k - 1`` of their ``k`` frames. With
``frame_stack=k`` the buffer stores every frame once and rebuilds the stacks
when sampling, another ``k``-fold saving (paper scale, 200 000 transitions of
``9 x 64 x 64``: 2.5 GB instead of 7.4 GB, instead of 29 GB as float32).

Storage: one ring of *slots* on ``device``. An episode of ``T`` transitions
takes ``T + k`` consecutive slots (modulo the ring size; ``k = 1`` for state
and for unstacked images): slot ``first + j`` holds frame ``j`` of the episode
(for ``k = 1``: observation ``s_j``), and action ``a_t`` / reward ``r_t`` live
in slot ``first + t``. Observation ``s_t`` is the concatenation of frames
``t .. t + k - 1``. Episodes are evicted oldest first, whole, as soon as the
number of stored transitions would exceed ``capacity``; the ring grows (rarely)
when short episodes need more slots than it has.

Rewards are optional per episode (CDRED never uses them; TD-MPC2 mode trains
on them): :meth:`EpisodeBuffer.sample` returns ``"reward"`` when every stored
episode has rewards.

Sampling is uniform over all valid start indices, i.e. over every
``(episode, t)`` with ``t + H <= T``; episodes shorter than ``H`` are never
sampled. Indices are drawn on the CPU (with ``generator`` when given) and the
gather happens on ``device``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .data import Demonstrations

__all__ = ["EpisodeBuffer"]

ObsDim = Union[int, Sequence[int]]


def _as_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    return t.to(device=device, dtype=torch.float32)


def _as_image_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 images, got {t.dtype}")
    return t.to(device=device)


class EpisodeBuffer:
    """FIFO replay of whole episodes with boundary-respecting sub-trajectory sampling.

    Args:
        capacity: the most transitions kept (whole episodes are evicted, oldest first).
        obs_dim: observation size (int: float32 state vectors) or shape ``(C, H, W)``
            (uint8 images).
        action_dim: action size.
        device: where the storage lives and where samples are returned.
        frame_stack: images only: observations are ``frame_stack`` frames stacked on
            the channel axis, consecutive observations sharing ``frame_stack - 1`` of
            them (what :class:`~cdred_fast.envs.wrappers.FrameStack` makes); each
            frame is stored once. 1 (default) stores every observation whole.
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: ObsDim,
        action_dim: int,
        device: str | torch.device = "cpu",
        *,
        frame_stack: int = 1,
    ):
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        shape = (int(obs_dim),) if isinstance(obs_dim, (int, np.integer)) else tuple(int(d) for d in obs_dim)
        if len(shape) not in (1, 3) or min(shape) < 1 or action_dim < 1:
            raise ValueError(
                f"obs_dim must be a positive int or a (C, H, W) shape and action_dim positive, got {obs_dim}, {action_dim}"
            )
        if int(frame_stack) != frame_stack or frame_stack < 1:
            raise ValueError(f"frame_stack must be a positive integer, got {frame_stack!r}")
        self.images = len(shape) == 3
        self.frame_stack = int(frame_stack)
        if self.frame_stack > 1 and (not self.images or shape[0] % self.frame_stack):
            raise ValueError(
                f"frame_stack={frame_stack} needs image observations whose channels it divides, got shape {shape}"
            )
        self.capacity = int(capacity)
        self.obs_shape: tuple[int, ...] = shape
        self.obs_dim: ObsDim = shape if self.images else shape[0]
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self._frame_shape = (shape[0] // self.frame_stack, *shape[1:])
        self._obs_dtype = torch.uint8 if self.images else torch.float32
        self._clear()

    def _alloc(self, slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Images: torch.empty (slots are always written before they are read), so a large
        # ring does not cost memory until it fills up.
        alloc = torch.empty if self.images else torch.zeros
        return (
            alloc(slots, *self._frame_shape, dtype=self._obs_dtype, device=self.device),
            torch.zeros(slots, self.action_dim, dtype=torch.float32, device=self.device),
            torch.zeros(slots, dtype=torch.float32, device=self.device),
        )

    def _clear(self) -> None:
        """Empty the buffer and reallocate the ring at its initial size."""
        # Slots: room for `capacity` transitions plus k extra slots per episode;
        # 1/64 extra covers episodes of >= 64 transitions, shorter ones make it grow.
        self._slots = self.capacity + self.frame_stack * (max(1, self.capacity // 64) + 1)
        self._obs, self._action, self._reward = self._alloc(self._slots)
        self._episodes: deque[tuple[int, int, bool]] = deque()  # (first slot, T, has reward), oldest first
        self._head = 0  # next free slot
        self._used_slots = 0
        self._num_transitions = 0
        self._without_reward = 0  # stored episodes that have no rewards
        self._index_cache: tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ info
    @property
    def num_transitions(self) -> int:
        """Transitions currently stored."""
        return self._num_transitions

    @property
    def num_episodes(self) -> int:
        """Episodes currently stored."""
        return len(self._episodes)

    @property
    def episode_lengths(self) -> list[int]:
        """Transitions per stored episode, oldest first."""
        return [length for _, length, _ in self._episodes]

    @property
    def has_rewards(self) -> bool:
        """Whether every stored episode has rewards (then :meth:`sample` returns them)."""
        return bool(self._episodes) and self._without_reward == 0

    def __len__(self) -> int:
        return self._num_transitions

    def __repr__(self) -> str:
        stack = f", frame_stack={self.frame_stack}" if self.frame_stack > 1 else ""
        return (
            f"EpisodeBuffer(episodes={self.num_episodes}, transitions={self.num_transitions}/"
            f"{self.capacity}, obs_dim={self.obs_dim}, action_dim={self.action_dim}{stack}, device={self.device})"
        )

    # ------------------------------------------------------------------- add
    def add_episode(self, obs, action, reward=None) -> None:
        """Store one episode: ``obs [T+1, *obs_shape]`` (including the final observation;
        float for state, uint8 for images), ``action [T, action_dim]`` and optionally
        ``reward [T]``. numpy arrays or tensors."""
        if self.images:
            obs = _as_image_tensor(obs, "obs", self.device)
        else:
            obs = _as_tensor(obs, "obs", self.device)
        action = _as_tensor(action, "action", self.device)
        if obs.ndim != 1 + len(self.obs_shape) or tuple(obs.shape[1:]) != self.obs_shape:
            raise ValueError(
                f"obs must have shape [T+1, {', '.join(map(str, self.obs_shape))}], got {tuple(obs.shape)}"
            )
        if action.ndim != 2 or action.shape[1] != self.action_dim:
            raise ValueError(f"action must have shape [T, {self.action_dim}], got {tuple(action.shape)}")
        length = action.shape[0]
        if obs.shape[0] != length + 1:
            raise ValueError(f"an episode of {length} actions needs {length + 1} observations, got {obs.shape[0]}")
        if length < 1:
            raise ValueError("an episode needs at least one transition")
        if length > self.capacity:
            raise ValueError(f"an episode of {length} transitions does not fit a buffer of capacity {self.capacity}")
        if reward is not None:
            reward = _as_tensor(reward, "reward", self.device).reshape(-1)
            if reward.shape[0] != length:
                raise ValueError(f"reward must have shape [{length}], got {tuple(reward.shape)}")
        finite = torch.isfinite(action).all() and (reward is None or torch.isfinite(reward).all())
        if not (finite and (self.images or torch.isfinite(obs).all())):
            raise ValueError("episode contains NaN or inf")
        self._write(self._to_frames(obs), action, reward)

    def _to_frames(self, obs: torch.Tensor) -> torch.Tensor:
        """``[T+1, k c, H, W]`` stacked observations -> ``[T+k, c, H, W]`` distinct frames."""
        k = self.frame_stack
        if k == 1:
            return obs
        c = self._frame_shape[0]
        if not torch.equal(obs[1:, :-c], obs[:-1, c:]):
            t = int(torch.nonzero((obs[1:, :-c] != obs[:-1, c:]).flatten(1).any(1))[0])
            raise ValueError(
                f"observations {t} and {t + 1} do not share {k - 1} frames: not a frame-stacked episode "
                f"(k={k}, oldest frame first, as FrameStack makes); use frame_stack=1 to store whole observations"
            )
        return torch.cat([obs[0].reshape(k, *self._frame_shape), obs[1:, -c:]], dim=0)

    def _write(self, frames: torch.Tensor, action: torch.Tensor, reward: Optional[torch.Tensor]) -> None:
        """Append one episode given as ``frames [T+k, *frame_shape]``, ``action [T, A]``, ``reward [T] | None``."""
        length, k = action.shape[0], self.frame_stack
        while self._episodes and self._num_transitions + length > self.capacity:
            self._evict_oldest()
        if self._used_slots + length + k > self._slots:
            self._grow(self._used_slots + length + k)

        slots = (self._head + torch.arange(length + k, device=self.device)) % self._slots
        self._obs[slots] = frames.to(self._obs_dtype)
        self._action[slots[:length]] = action
        self._action[slots[length:]] = 0.0
        self._reward[slots[:length]] = 0.0 if reward is None else reward
        self._reward[slots[length:]] = 0.0
        self._episodes.append((self._head, length, reward is not None))
        self._without_reward += reward is None
        self._head = (self._head + length + k) % self._slots
        self._used_slots += length + k
        self._num_transitions += length
        self._index_cache = None

    def _dims(self) -> str:
        return f"obs_dim {self.obs_dim} and action_dim {self.action_dim}"

    def add_demonstrations(self, demos: "Demonstrations") -> None:
        """Store every episode of a :class:`~cdred_fast.data.Demonstrations` (with its
        rewards); each episode's ``T + 1`` observations are its ``obs`` followed by its
        last ``next_obs``."""
        demo_dim = demos.obs_shape if len(demos.obs_shape) > 1 else demos.obs_dim
        if tuple(demos.obs_shape) != self.obs_shape or demos.action_dim != self.action_dim:
            raise ValueError(
                f"demonstrations for {demos.task!r} have obs_dim {demo_dim} and action_dim "
                f"{demos.action_dim}, the buffer has {self.obs_dim} and {self.action_dim}"
            )
        if demos.num_transitions > self.capacity:
            raise ValueError(
                f"{demos.num_transitions} demonstration transitions do not fit a buffer of capacity "
                f"{self.capacity}: the oldest would be evicted"
            )
        for ep in demos.episodes():
            self.add_episode(np.concatenate([ep["obs"], ep["next_obs"][-1:]], axis=0), ep["action"], ep["reward"])

    @classmethod
    def from_demonstrations(
        cls,
        demos: "Demonstrations",
        capacity: int | None = None,
        device: str | torch.device = "cpu",
        *,
        frame_stack: int = 1,
    ) -> "EpisodeBuffer":
        """A buffer holding exactly ``demos`` (capacity defaults to their size)."""
        obs_dim = demos.obs_shape if len(demos.obs_shape) > 1 else demos.obs_dim
        buffer = cls(
            capacity or demos.num_transitions, obs_dim, demos.action_dim, device=device, frame_stack=frame_stack
        )
        buffer.add_demonstrations(demos)
        return buffer

    def _evict_oldest(self) -> None:
        _, length, has_reward = self._episodes.popleft()
        self._used_slots -= length + self.frame_stack
        self._num_transitions -= length
        self._without_reward -= not has_reward

    def _episode_slots(self, start: int, length: int) -> torch.Tensor:
        return (start + torch.arange(length + self.frame_stack, device=self.device)) % self._slots

    def _grow(self, needed: int) -> None:
        """Reallocate the ring (oldest episode first at slot 0) with room for ``needed`` slots."""
        new_slots = max(needed, self._slots + self._slots // 2)
        obs, action, reward = self._alloc(new_slots)
        episodes: deque[tuple[int, int, bool]] = deque()
        pos = 0
        for start, length, has_reward in self._episodes:
            old = self._episode_slots(start, length)
            n = length + self.frame_stack
            obs[pos : pos + n] = self._obs[old]
            action[pos : pos + n] = self._action[old]
            reward[pos : pos + n] = self._reward[old]
            episodes.append((pos, length, has_reward))
            pos += n
        self._obs, self._action, self._reward, self._slots = obs, action, reward, new_slots
        self._episodes, self._head = episodes, pos

    # ---------------------------------------------------------------- sample
    def _start_index(self, horizon: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``horizon``: the number of valid starts, and per episode the inclusive and
        exclusive cumulative counts of valid starts and the episode's first slot (CPU)."""
        if self._index_cache is not None and self._index_cache[0] == horizon:
            return self._index_cache[1:]  # type: ignore[return-value]
        starts = torch.tensor([s for s, _, _ in self._episodes], dtype=torch.int64)
        counts = torch.tensor([max(0, length - horizon + 1) for _, length, _ in self._episodes], dtype=torch.int64)
        cumulative = torch.cumsum(counts, 0)
        total = int(cumulative[-1]) if len(cumulative) else 0
        self._index_cache = (horizon, total, cumulative, cumulative - counts, starts)
        return total, cumulative, cumulative - counts, starts

    def sample(
        self, batch_size: int, horizon: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``batch_size`` sub-trajectories of ``horizon`` transitions, uniformly over valid starts.

        Returns:
            ``{"obs": Tensor[H+1, B, *obs_shape], "action": Tensor[H, B, action_dim]}`` on
            ``device`` (obs float32 for state, uint8 for images), plus ``"reward":
            Tensor[H, B]`` when every stored episode has rewards (:attr:`has_rewards`).

        Raises:
            RuntimeError: the buffer is empty, or no stored episode has ``horizon`` transitions.
        """
        if batch_size < 1 or horizon < 1:
            raise ValueError(f"batch_size and horizon must be >= 1, got {batch_size}, {horizon}")
        if not self._episodes:
            raise RuntimeError("cannot sample from an empty EpisodeBuffer: add episodes first")
        total, cumulative, before, starts = self._start_index(horizon)
        if total == 0:
            raise RuntimeError(
                f"no stored episode has at least horizon={horizon} transitions "
                f"(the longest has {max(self.episode_lengths)})"
            )
        gen_device = generator.device if generator is not None else torch.device("cpu")
        draw = torch.randint(total, (batch_size,), generator=generator, device=gen_device).cpu()
        episode = torch.searchsorted(cumulative, draw, right=True)  # cumulative[e-1] <= draw < cumulative[e]
        first = starts[episode] + (draw - before[episode])  # first slot of each sub-trajectory
        slots = (first.unsqueeze(0) + torch.arange(horizon + 1).unsqueeze(1)) % self._slots  # [H+1, B]
        slots = slots.to(self.device, non_blocking=True)
        if self.frame_stack == 1:
            obs = self._obs[slots]
        else:
            k = self.frame_stack
            frame_slots = (slots.unsqueeze(-1) + torch.arange(k, device=self.device)) % self._slots  # [H+1, B, k]
            obs = self._obs[frame_slots].reshape(horizon + 1, batch_size, *self.obs_shape)
        batch = {"obs": obs, "action": self._action[slots[:-1]]}
        if self._without_reward == 0:
            batch["reward"] = self._reward[slots[:-1]]
        return batch

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stored episodes, oldest first, as CPU tensors only (``torch.load(weights_only=True)`` safe).

        ``obs`` holds each episode's ``T + frame_stack`` stored frames (``T + 1``
        observations for ``frame_stack = 1``), back to back.
        """
        lengths = self.episode_lengths
        k = self.frame_stack
        obs = torch.empty(sum(lengths) + k * len(lengths), *self._frame_shape, dtype=self._obs_dtype)
        action = torch.empty(sum(lengths), self.action_dim, dtype=torch.float32)
        reward = torch.empty(sum(lengths), dtype=torch.float32)
        o = a = 0
        for start, length, _ in self._episodes:
            slots = self._episode_slots(start, length)
            obs[o : o + length + k] = self._obs[slots].cpu()
            action[a : a + length] = self._action[slots[:length]].cpu()
            reward[a : a + length] = self._reward[slots[:length]].cpu()
            o += length + k
            a += length
        return {
            "capacity": torch.tensor(self.capacity, dtype=torch.int64),
            "obs_dim": torch.tensor(self.obs_shape[0], dtype=torch.int64),
            "obs_shape": torch.tensor(self.obs_shape, dtype=torch.int64),
            "frame_stack": torch.tensor(k, dtype=torch.int64),
            "action_dim": torch.tensor(self.action_dim, dtype=torch.int64),
            "episode_lengths": torch.tensor(lengths, dtype=torch.int64),
            "has_reward": torch.tensor([r for _, _, r in self._episodes], dtype=torch.bool),
            "obs": obs,
            "action": action,
            "reward": reward,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the contents with those of :meth:`state_dict` (dims must match;
        the capacity in effect is this buffer's, evicting the oldest if needed).
        States written before rewards and images were supported load as episodes without rewards."""
        required = ("obs_dim", "action_dim", "episode_lengths", "obs", "action")
        missing = [k for k in required if k not in state]
        if missing:
            raise KeyError(f"EpisodeBuffer state lacks {missing}")
        shape = tuple(int(d) for d in state["obs_shape"].tolist()) if "obs_shape" in state else (int(state["obs_dim"]),)
        frame_stack = int(state["frame_stack"]) if "frame_stack" in state else 1
        action_dim = int(state["action_dim"])
        if (shape, action_dim) != (self.obs_shape, self.action_dim):
            obs_dim = shape if len(shape) > 1 else shape[0]
            raise ValueError(
                f"state is for obs_dim {obs_dim}, action_dim {action_dim}; "
                f"this buffer has {self.obs_dim}, {self.action_dim}"
            )
        if frame_stack != self.frame_stack:
            raise ValueError(f"state stores frame_stack={frame_stack}, this buffer has {self.frame_stack}")
        lengths = [int(x) for x in state["episode_lengths"].tolist()]
        obs, action = state["obs"], state["action"]
        reward = state.get("reward")
        has_reward = state["has_reward"].tolist() if "has_reward" in state else [False] * len(lengths)
        k = frame_stack
        if (
            obs.shape[0] != sum(lengths) + k * len(lengths)
            or action.shape[0] != sum(lengths)
            or len(has_reward) != len(lengths)
            or (reward is not None and reward.shape[0] != sum(lengths))
        ):
            raise ValueError("EpisodeBuffer state is inconsistent: obs/action rows do not match episode_lengths")
        self._clear()
        o = a = 0
        for length, with_reward in zip(lengths, has_reward):
            if length > self.capacity:
                raise ValueError(
                    f"an episode of {length} transitions does not fit a buffer of capacity {self.capacity}"
                )
            self._write(
                obs[o : o + length + k].to(self.device),
                action[a : a + length].to(self.device, torch.float32),
                reward[a : a + length].to(self.device, torch.float32) if with_reward and reward is not None else None,
            )
            o += length + k
            a += length
