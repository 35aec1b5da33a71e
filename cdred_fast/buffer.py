"""Episode replay buffers (behavioural and expert).

:class:`EpisodeBuffer` stores whole episodes and samples sub-trajectories
``(s_0, a_0, s_1, ..., a_{H-1}, s_H)`` that never cross an episode boundary
(SPEC section 3). The same class serves as the behavioural buffer (the agent's
own episodes, FIFO) and the expert buffer (demonstrations, usually never full).

Storage: one ring of *slots* on ``device``. An episode of ``T`` transitions
takes ``T + 1`` consecutive slots (modulo the ring size): slot ``k`` holds
observation ``s_k`` and action ``a_k`` (the last slot's action is unused).
Episodes are evicted oldest first, whole, as soon as the number of stored
transitions would exceed ``capacity``; the ring grows (rarely) when short
episodes need more slots than it has.

Sampling is uniform over all valid start indices, i.e. over every
``(episode, t)`` with ``t + H <= T``; episodes shorter than ``H`` are never
sampled. Indices are drawn on the CPU (with ``generator`` when given) and the
gather happens on ``device``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .data import Demonstrations

__all__ = ["EpisodeBuffer"]


def _as_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    return t.to(device=device, dtype=torch.float32)


class EpisodeBuffer:
    """FIFO replay of whole episodes with boundary-respecting sub-trajectory sampling.

    Args:
        capacity: the most transitions kept (whole episodes are evicted, oldest first).
        obs_dim: observation size.
        action_dim: action size.
        device: where the storage lives and where samples are returned.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: str | torch.device = "cpu"):
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if obs_dim < 1 or action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be positive, got {obs_dim}, {action_dim}")
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self._clear()

    def _clear(self) -> None:
        """Empty the buffer and reallocate the ring at its initial size."""
        # Slots: room for `capacity` transitions plus one extra slot per episode;
        # 1/64 extra covers episodes of >= 64 transitions, shorter ones make it grow.
        self._slots = self.capacity + max(1, self.capacity // 64) + 1
        self._obs = torch.zeros(self._slots, self.obs_dim, dtype=torch.float32, device=self.device)
        self._action = torch.zeros(self._slots, self.action_dim, dtype=torch.float32, device=self.device)
        self._episodes: deque[tuple[int, int]] = deque()  # (first slot, T), oldest first
        self._head = 0  # next free slot
        self._used_slots = 0
        self._num_transitions = 0
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
        return [length for _, length in self._episodes]

    def __len__(self) -> int:
        return self._num_transitions

    def __repr__(self) -> str:
        return (
            f"EpisodeBuffer(episodes={self.num_episodes}, transitions={self.num_transitions}/"
            f"{self.capacity}, obs_dim={self.obs_dim}, action_dim={self.action_dim}, device={self.device})"
        )

    # ------------------------------------------------------------------- add
    def add_episode(self, obs, action) -> None:
        """Store one episode: ``obs [T+1, obs_dim]`` (including the final
        observation) and ``action [T, action_dim]``. numpy arrays or tensors."""
        obs = _as_tensor(obs, "obs", self.device)
        action = _as_tensor(action, "action", self.device)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape [T+1, {self.obs_dim}], got {tuple(obs.shape)}")
        if action.ndim != 2 or action.shape[1] != self.action_dim:
            raise ValueError(f"action must have shape [T, {self.action_dim}], got {tuple(action.shape)}")
        length = action.shape[0]
        if obs.shape[0] != length + 1:
            raise ValueError(
                f"an episode of {length} actions needs {length + 1} observations, got {obs.shape[0]}"
            )
        if length < 1:
            raise ValueError("an episode needs at least one transition")
        if length > self.capacity:
            raise ValueError(f"an episode of {length} transitions does not fit a buffer of capacity {self.capacity}")
        if not (torch.isfinite(obs).all() and torch.isfinite(action).all()):
            raise ValueError("episode contains NaN or inf")

        while self._episodes and self._num_transitions + length > self.capacity:
            self._evict_oldest()
        if self._used_slots + length + 1 > self._slots:
            self._grow(self._used_slots + length + 1)

        slots = (self._head + torch.arange(length + 1, device=self.device)) % self._slots
        self._obs[slots] = obs
        self._action[slots[:-1]] = action
        self._action[slots[-1]] = 0.0
        self._episodes.append((self._head, length))
        self._head = (self._head + length + 1) % self._slots
        self._used_slots += length + 1
        self._num_transitions += length
        self._index_cache = None

    def add_demonstrations(self, demos: "Demonstrations") -> None:
        """Store every episode of a :class:`~cdred_fast.data.Demonstrations`; each
        episode's ``T + 1`` observations are its ``obs`` followed by its last ``next_obs``."""
        if demos.obs_dim != self.obs_dim or demos.action_dim != self.action_dim:
            raise ValueError(
                f"demonstrations for {demos.task!r} have obs_dim {demos.obs_dim} and action_dim "
                f"{demos.action_dim}, the buffer has {self.obs_dim} and {self.action_dim}"
            )
        if demos.num_transitions > self.capacity:
            raise ValueError(
                f"{demos.num_transitions} demonstration transitions do not fit a buffer of capacity "
                f"{self.capacity}: the oldest would be evicted"
            )
        for ep in demos.episodes():
            self.add_episode(np.concatenate([ep["obs"], ep["next_obs"][-1:]], axis=0), ep["action"])

    @classmethod
    def from_demonstrations(
        cls, demos: "Demonstrations", capacity: int | None = None, device: str | torch.device = "cpu"
    ) -> "EpisodeBuffer":
        """A buffer holding exactly ``demos`` (capacity defaults to their size)."""
        buffer = cls(capacity or demos.num_transitions, demos.obs_dim, demos.action_dim, device=device)
        buffer.add_demonstrations(demos)
        return buffer

    def _evict_oldest(self) -> None:
        _, length = self._episodes.popleft()
        self._used_slots -= length + 1
        self._num_transitions -= length

    def _grow(self, needed: int) -> None:
        """Reallocate the ring (oldest episode first at slot 0) with room for ``needed`` slots."""
        new_slots = max(needed, self._slots + self._slots // 2)
        obs = torch.zeros(new_slots, self.obs_dim, dtype=torch.float32, device=self.device)
        action = torch.zeros(new_slots, self.action_dim, dtype=torch.float32, device=self.device)
        episodes: deque[tuple[int, int]] = deque()
        pos = 0
        for start, length in self._episodes:
            old = (start + torch.arange(length + 1, device=self.device)) % self._slots
            obs[pos : pos + length + 1] = self._obs[old]
            action[pos : pos + length + 1] = self._action[old]
            episodes.append((pos, length))
            pos += length + 1
        self._obs, self._action, self._slots = obs, action, new_slots
        self._episodes, self._head = episodes, pos

    # ---------------------------------------------------------------- sample
    def _start_index(self, horizon: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``horizon``: the number of valid starts, and per episode the inclusive and
        exclusive cumulative counts of valid starts and the episode's first slot (CPU)."""
        if self._index_cache is not None and self._index_cache[0] == horizon:
            return self._index_cache[1:]  # type: ignore[return-value]
        starts = torch.tensor([s for s, _ in self._episodes], dtype=torch.int64)
        counts = torch.tensor([max(0, length - horizon + 1) for _, length in self._episodes], dtype=torch.int64)
        cumulative = torch.cumsum(counts, 0)
        total = int(cumulative[-1]) if len(cumulative) else 0
        self._index_cache = (horizon, total, cumulative, cumulative - counts, starts)
        return total, cumulative, cumulative - counts, starts

    def sample(self, batch_size: int, horizon: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``batch_size`` sub-trajectories of ``horizon`` transitions, uniformly over valid starts.

        Returns:
            ``{"obs": Tensor[H+1, B, obs_dim], "action": Tensor[H, B, action_dim]}`` on ``device``.

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
        return {"obs": self._obs[slots], "action": self._action[slots[:-1]]}

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stored episodes, oldest first, as CPU tensors only (``torch.load(weights_only=True)`` safe)."""
        lengths = self.episode_lengths
        obs = torch.empty(sum(lengths) + len(lengths), self.obs_dim, dtype=torch.float32)
        action = torch.empty(sum(lengths), self.action_dim, dtype=torch.float32)
        o = a = 0
        for start, length in self._episodes:
            slots = (start + torch.arange(length + 1, device=self.device)) % self._slots
            obs[o : o + length + 1] = self._obs[slots].cpu()
            action[a : a + length] = self._action[slots[:-1]].cpu()
            o += length + 1
            a += length
        return {
            "capacity": torch.tensor(self.capacity, dtype=torch.int64),
            "obs_dim": torch.tensor(self.obs_dim, dtype=torch.int64),
            "action_dim": torch.tensor(self.action_dim, dtype=torch.int64),
            "episode_lengths": torch.tensor(lengths, dtype=torch.int64),
            "obs": obs,
            "action": action,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the contents with those of :meth:`state_dict` (dims must match;
        the capacity in effect is this buffer's, evicting the oldest if needed)."""
        required = ("obs_dim", "action_dim", "episode_lengths", "obs", "action")
        missing = [k for k in required if k not in state]
        if missing:
            raise KeyError(f"EpisodeBuffer state lacks {missing}")
        obs_dim, action_dim = int(state["obs_dim"]), int(state["action_dim"])
        if (obs_dim, action_dim) != (self.obs_dim, self.action_dim):
            raise ValueError(
                f"state is for obs_dim {obs_dim}, action_dim {action_dim}; "
                f"this buffer has {self.obs_dim}, {self.action_dim}"
            )
        lengths = [int(x) for x in state["episode_lengths"].tolist()]
        obs, action = state["obs"], state["action"]
        if obs.shape[0] != sum(lengths) + len(lengths) or action.shape[0] != sum(lengths):
            raise ValueError("EpisodeBuffer state is inconsistent: obs/action rows do not match episode_lengths")
        self._clear()
        o = a = 0
        for length in lengths:
            self.add_episode(obs[o : o + length + 1], action[a : a + length])
            o += length + 1
            a += length
