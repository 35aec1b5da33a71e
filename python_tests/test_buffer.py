"""EpisodeBuffer: boundary-respecting sampling, uniformity, FIFO eviction, checkpoints."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch

from cdred_fast.buffer import EpisodeBuffer
from cdred_fast.data import Demonstrations

OBS_DIM, ACT_DIM = 3, 2


def _episode(ep_id: int, length: int):
    """obs[t] = (ep_id, t, -ep_id), action[t] = (ep_id, t): every entry tells where it came from."""
    t = np.arange(length + 1, dtype=np.float32)
    obs = np.stack([np.full_like(t, ep_id), t, np.full_like(t, -ep_id)], axis=1)
    action = obs[:-1, :2].copy()
    return obs, action


def _filled(capacity, lengths):
    buf = EpisodeBuffer(capacity, OBS_DIM, ACT_DIM)
    for i, n in enumerate(lengths):
        buf.add_episode(*_episode(i + 1, n))
    return buf


def _check_contiguous(batch, horizon):
    obs, action = batch["obs"], batch["action"]
    assert obs.shape[0] == horizon + 1 and action.shape[0] == horizon
    ep, t = obs[..., 0], obs[..., 1]
    assert torch.all(ep == ep[0]), "a sub-trajectory crossed an episode boundary"
    assert torch.all(obs[..., 2] == -ep)
    assert torch.all(t == t[0] + torch.arange(horizon + 1, dtype=torch.float32)[:, None]), "steps are not consecutive"
    assert torch.all(action[..., 0] == ep[:-1]) and torch.all(action[..., 1] == t[:-1]), "actions misaligned with obs"
    return ep[0].long(), t[0].long()


def test_samples_never_cross_episode_boundaries():
    buf = _filled(1000, [5, 3, 12, 1, 8, 3])
    batch = buf.sample(4096, horizon=3, generator=torch.Generator().manual_seed(0))
    assert batch["obs"].shape == (4, 4096, OBS_DIM) and batch["action"].shape == (3, 4096, ACT_DIM)
    assert batch["obs"].dtype == torch.float32 and batch["action"].dtype == torch.float32
    ep, t0 = _check_contiguous(batch, 3)
    lengths = dict(enumerate([5, 3, 12, 1, 8, 3], start=1))
    assert torch.all(t0 + 3 <= torch.tensor([lengths[int(e)] for e in ep]))
    assert 4 not in ep.tolist()  # the 1-step episode is too short for horizon 3


def test_sampling_is_uniform_over_valid_starts():
    lengths = [4, 10, 2, 6]
    buf = _filled(100, lengths)
    horizon, n = 2, 60_000
    batch = buf.sample(n, horizon, generator=torch.Generator().manual_seed(1))
    ep, t0 = _check_contiguous(batch, horizon)
    counts = Counter(zip(ep.tolist(), t0.tolist()))
    valid = {(e, t) for e, length in enumerate(lengths, start=1) for t in range(length - horizon + 1)}
    assert set(counts) == valid  # every valid start occurs, nothing else
    expected = n / len(valid)
    assert all(abs(c - expected) < 5 * expected**0.5 for c in counts.values()), counts


def test_fifo_eviction_of_whole_episodes():
    buf = _filled(20, [6, 5, 4])
    assert (buf.num_transitions, buf.num_episodes) == (15, 3)
    buf.add_episode(*_episode(4, 5))  # 20: exactly full, nothing evicted
    assert buf.episode_lengths == [6, 5, 4, 5]
    buf.add_episode(*_episode(5, 7))  # 27 > 20: the two oldest go (27 -> 21 -> 16)
    assert buf.episode_lengths == [4, 5, 7] and buf.num_transitions == 16 and buf.num_episodes == 3
    ep, _ = _check_contiguous(buf.sample(2000, 1, generator=torch.Generator().manual_seed(0)), 1)
    assert set(ep.tolist()) == {3, 4, 5}
    # many more episodes: the ring wraps around many times and stays consistent
    for i in range(6, 60):
        buf.add_episode(*_episode(i, 1 + i % 9))
        assert buf.num_transitions <= 20
        _check_contiguous(buf.sample(64, 1, generator=torch.Generator().manual_seed(i)), 1)
    kept = buf.episode_lengths
    assert kept == [1 + i % 9 for i in range(60 - len(kept), 60)]


def test_many_short_episodes_grow_the_ring():
    buf = _filled(40, [1] * 40)  # 40 transitions need 80 slots
    assert buf.num_transitions == 40 and buf.num_episodes == 40
    ep, _ = _check_contiguous(buf.sample(4000, 1, generator=torch.Generator().manual_seed(0)), 1)
    assert set(ep.tolist()) == set(range(1, 41))
    buf.add_episode(*_episode(99, 30))  # evicts the 30 oldest
    assert buf.num_episodes == 11 and buf.episode_lengths[-1] == 30
    _check_contiguous(buf.sample(500, 5, generator=torch.Generator().manual_seed(0)), 5)


def test_errors():
    buf = EpisodeBuffer(10, OBS_DIM, ACT_DIM)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(4, 3)
    buf.add_episode(*_episode(1, 2))
    with pytest.raises(RuntimeError, match="horizon=3.*longest has 2"):
        buf.sample(4, 3)
    obs, action = _episode(2, 4)
    with pytest.raises(ValueError, match="needs 5 observations"):
        buf.add_episode(obs[:-1], action)
    with pytest.raises(ValueError, match=r"\[T\+1, 3\]"):
        buf.add_episode(obs[:, :2], action)
    with pytest.raises(ValueError, match="does not fit"):
        buf.add_episode(*_episode(3, 11))
    bad = obs.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        buf.add_episode(bad, action)
    assert buf.num_episodes == 1  # failed adds change nothing


def test_generator_makes_sampling_reproducible():
    buf = _filled(100, [7, 9, 4])
    a = buf.sample(32, 3, generator=torch.Generator().manual_seed(5))
    b = buf.sample(32, 3, generator=torch.Generator().manual_seed(5))
    c = buf.sample(32, 3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["obs"], b["obs"]) and not torch.equal(a["obs"], c["obs"])


def test_from_demonstrations_rebuilds_final_observation():
    rng = np.random.default_rng(0)
    episodes = []
    for length in (5, 8):
        states = rng.normal(size=(length + 1, 4)).astype(np.float32)
        episodes.append(
            {
                "obs": states[:-1],
                "next_obs": states[1:],
                "reward": np.zeros(length, np.float32),
                "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
            }
        )
    demos = Demonstrations.from_episodes(episodes, task="mw-reach")
    buf = EpisodeBuffer.from_demonstrations(demos)
    assert buf.capacity == 13 and buf.num_episodes == 2 and buf.episode_lengths == [5, 8]
    # the 5-step episode sampled at horizon 5 must end with its final next_obs
    batch = buf.sample(200, 5, generator=torch.Generator().manual_seed(0))
    final = torch.from_numpy(episodes[0]["next_obs"][-1])
    first = torch.from_numpy(episodes[0]["obs"][0])
    from_first = torch.all(batch["obs"][0] == first, dim=-1)
    assert from_first.any()
    assert torch.all(batch["obs"][5][from_first] == final)
    np.testing.assert_array_equal(batch["action"][:, from_first][:, 0].numpy(), episodes[0]["action"])
    with pytest.raises(ValueError, match="obs_dim 4"):
        EpisodeBuffer(100, 5, 2).add_demonstrations(demos)


def test_state_dict_round_trip_with_weights_only_load():
    buf = _filled(30, [6, 9, 5, 8, 7])  # evicts, wraps
    state = buf.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    loaded = torch.load(blob, weights_only=True)
    other = EpisodeBuffer(30, OBS_DIM, ACT_DIM)
    other.add_episode(*_episode(42, 3))  # replaced by the loaded contents
    other.load_state_dict(loaded)
    assert other.episode_lengths == buf.episode_lengths and other.num_transitions == buf.num_transitions
    for h in (1, 4):
        a = buf.sample(256, h, generator=torch.Generator().manual_seed(3))
        b = other.sample(256, h, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a["obs"], b["obs"]) and torch.equal(a["action"], b["action"])
    with pytest.raises(ValueError, match="obs_dim 3"):
        EpisodeBuffer(30, 4, ACT_DIM).load_state_dict(loaded)
