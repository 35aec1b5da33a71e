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


def test_holding_expert_keeps_stick_push_solved_until_the_last_step():
    """Meta-World's stick-push expert pushes the thermos past the goal after succeeding; the
    registry's expert for it holds still once the task reports success, so the episode ends
    solved. Checked on real episodes: success at the last step, and every action after the
    first success zero except the gripper command."""
    env = envs.make("mw-stick-push", seed=0)
    policy = envs.scripted_policy("mw-stick-push")
    assert isinstance(policy, envs.registry.HoldOnSuccess)
    for seed in (3, 4):
        obs, _ = env.reset(seed=seed)
        policy.reset()
        done, successes, actions = False, [], []
        while not done:
            action = policy(obs)
            obs, _, terminated, truncated, info = env.step(action)
            policy.observe(info)
            successes.append(bool(info["success"]))
            actions.append(action)
            done = terminated or truncated
        assert successes[-1], f"seed {seed}: not solved at the last step"
        first = successes.index(True)
        held = np.stack(actions[first + 1 :])
        assert len(held) > 0 and np.all(held[:, :3] == 0) and np.all(held[:, 3] == actions[first][3])
    # the plain Meta-World expert for the same task keeps pushing (no hold)
    assert not isinstance(envs.scripted_policy("mw-reach"), envs.registry.HoldOnSuccess)
