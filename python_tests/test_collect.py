"""Collecting demonstrations: scripted experts, failures, clipping, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from cdred_fast import data, envs
from cdred_fast.collect import collect
from cdred_fast.envs.metaworld import scripted_policy


def test_collect_scripted_expert(tmp_path):
    env = envs.make("mw-reach", seed=0)
    demos = collect(env, scripted_policy("mw-reach"), episodes=3, successful_only=True)
    assert demos.task == "mw-reach" and demos.num_episodes == 3
    assert demos.episode_lengths.tolist() == [100, 100, 100] and demos.success.all()
    assert demos.obs_dim == 39 and demos.action_dim == 4 and np.all(np.abs(demos.action) <= 1)
    path = demos.save(tmp_path / "reach.npz")
    back = data.load(path, task="mw-reach", obs_dim=39, action_dim=4)
    np.testing.assert_array_equal(back.obs, demos.obs)


def test_collect_records_failures_and_gives_up():
    env = envs.make("mw-reach", seed=0)
    idle = lambda obs: np.zeros(4, np.float32)  # never reaches the goal
    demos = collect(env, idle, episodes=2)
    assert demos.num_episodes == 2 and not demos.success.any()
    with pytest.raises(RuntimeError, match="only 0 of 1 successful episodes in 2 attempts"):
        collect(env, idle, episodes=1, successful_only=True, max_attempts=2)


def test_collect_clips_actions_and_is_seeded():
    run = lambda: collect(envs.make("reacher-hard", seed=0), lambda o: np.array([3.0, -3.0]), episodes=1, seed=11)
    a, b = run(), run()
    assert np.all(a.action == np.array([1.0, -1.0], np.float32))
    np.testing.assert_array_equal(a.obs, b.obs)
    assert a.num_transitions == 500 and not a.success.any()
