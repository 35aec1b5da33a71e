"""`cdred-fast data info / convert / render` on files made from real simulator episodes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from cdred_fast import data, envs
from cdred_fast.collect import collect
from cdred_fast.data import Demonstrations
from cdred_fast.envs.metaworld import scripted_policy


def _cli(*args):
    from click.testing import CliRunner

    from cdred_fast.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def reach_demos():
    """3 scripted mw-reach episodes, one of them cut short by an idle policy so lengths and successes differ."""
    env = envs.make("mw-reach", seed=0)
    good = collect(env, scripted_policy("mw-reach"), episodes=2, seed=10)
    idle = collect(env, lambda o: np.zeros(4, np.float32), episodes=1, seed=30)
    eps = list(good.episodes()) + [
        dict(ep, obs=ep["obs"][:40], action=ep["action"][:40], reward=ep["reward"][:40], next_obs=ep["next_obs"][:40])
        for ep in idle.episodes()
    ]
    return Demonstrations.from_episodes(eps, task="mw-reach")


def test_summary_statistics(reach_demos):
    info = data.summary(reach_demos)
    returns = [ep["reward"].astype(np.float64).sum() for ep in reach_demos.episodes()]
    assert info["episodes"] == 3 and info["transitions"] == 240 and info["task"] == "mw-reach"
    assert (info["length_min"], info["length_mean"], info["length_max"]) == (40, 80.0, 100)
    assert info["return_mean"] == pytest.approx(np.mean(returns)) and info["return_std"] == pytest.approx(
        np.std(returns)
    )
    assert info["return_min"] == pytest.approx(min(returns)) and info["return_max"] == pytest.approx(max(returns))
    assert info["success_rate"] == info["success_any"] == pytest.approx(2 / 3)
    assert reach_demos.success_last.tolist() == [True, True, False] and info["success_last"] == pytest.approx(2 / 3)
    assert reach_demos.success.tolist()[:2] == [True, True] and not reach_demos.success[2]
    assert info["obs_shape"] == [39] and info["action_dim"] == 4 and info["seeds"] is True
    json.dumps(info)  # plain types


def test_data_info(tmp_path, reach_demos):
    path = reach_demos.save(tmp_path / "reach.npz")
    code, out, err = _cli("data", "info", path, "--json")
    assert code == 0, err
    assert json.loads(out) == {"file": str(path), **data.summary(reach_demos)}
    code, out, err = _cli("data", "info", path)
    assert code == 0, err
    for text in (
        "mw-reach",
        "3 (240 transitions)",
        "min 40  mean 80.0  max 100",
        "success_last: 0.67",
        "success_any: 0.67",
        "observation   39 float32",
        "action dim    4",
        "reset seeds   recorded",
    ):
        assert text in out, text
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    code, out, err = _cli("data", "info", tmp_path / "junk.npz")
    assert code == 1 and "not a readable .npz" in err


def test_data_convert_a_released_pickle(tmp_path):
    """A file in the authors' released layout (list of (obs, actions, rewards[T, 1], next_obs)),
    made from real reacher-easy episodes, converted and checked against the task."""
    env = envs.make("reacher-easy", seed=0)
    rng = np.random.default_rng(0)
    demos = collect(env, lambda o: rng.uniform(-1, 1, 2), episodes=2, seed=3)
    released = [
        (
            ep["obs"].astype(np.float64),
            ep["action"],
            ep["reward"][:, None].astype(np.float64),
            ep["next_obs"].astype(np.float64),
        )
        for ep in demos.episodes()
    ]
    pkl = tmp_path / "reacher_easy.pkl"
    pkl.write_bytes(pickle.dumps(released, protocol=4))
    out = tmp_path / "reacher.npz"
    code, stdout, err = _cli("data", "convert", pkl, "--task", "reacher-easy", "--out", out)
    assert code == 0, err
    assert "wrote 2 episodes (1000 transitions)" in stdout
    back = data.load(out, task="reacher-easy", obs_dim=6, action_dim=2)
    np.testing.assert_array_equal(back.obs, demos.obs)
    np.testing.assert_array_equal(back.action, demos.action)
    np.testing.assert_allclose(back.reward, demos.reward)
    assert back.seeds is None and not back.success.any()  # the released layout records neither
    code, _, err = _cli("data", "info", out, "--json")
    assert code == 0 and json.loads(_)["return_mean"] == pytest.approx(data.summary(demos)["return_mean"], rel=1e-6)
    # the wrong task is caught by the sizes; so is a pickle that would run code
    code, _, err = _cli("data", "convert", pkl, "--task", "cheetah-run", "--out", tmp_path / "x.npz")
    assert code == 1 and "obs_dim 6" in err and "obs_dim 17" in err
    code, _, err = _cli("data", "convert", pkl, "--task", "cheetah-rnu", "--out", tmp_path / "x.npz")
    assert code == 2 and "cheetah-run" in err

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([Exploit()]))
    code, stdout, err = _cli("data", "convert", evil, "--task", "reacher-easy", "--out", tmp_path / "x.npz")
    assert code == 1 and "refused global builtins.print" in err and "pwned" not in stdout
    assert not (tmp_path / "x.npz").exists()


def test_data_render(tmp_path):
    rng = np.random.default_rng(1)
    state = collect(envs.make("cartpole-swingup", seed=0), lambda o: rng.uniform(-1, 1, 1), episodes=1, seed=8)
    src = state.save(tmp_path / "state.npz")
    code, out, err = _cli("data", "render", src, "--out", tmp_path / "pixels.npz")
    assert code == 0, err
    pixels = data.load(tmp_path / "pixels.npz", task="cartpole-swingup", obs_shape=(9, 64, 64))
    np.testing.assert_array_equal(pixels.action, state.action)
    assert pixels.seeds.tolist() == [8]
    code, out, err = _cli("data", "info", tmp_path / "pixels.npz")
    assert code == 0 and "observation   9x64x64 uint8" in out
    code, out, err = _cli("data", "render", tmp_path / "pixels.npz", "--out", tmp_path / "again.npz")
    assert code == 1 and "already have pixel observations" in err


def test_success_last_is_recorded_saved_and_checked(tmp_path, reach_demos):
    """Demo files record success at the last step beside success at any step; older files
    without it load (reported as not recorded), and an inconsistent one is refused."""
    path = reach_demos.save(tmp_path / "reach.npz")
    back = data.load(path)
    assert back.success_last.tolist() == reach_demos.success_last.tolist()
    first = next(iter(back.episodes()))
    old = Demonstrations.from_episodes([{k: v for k, v in first.items() if k != "success_last"}], task="mw-reach")
    assert old.success_last is None and data.summary(old)["success_last"] is None
    code, out, _ = _cli("data", "info", old.save(tmp_path / "old.npz"))
    assert code == 0 and "success_last: not recorded" in out
    with pytest.raises(data.DemonstrationError, match="success_last is True for an episode whose success"):
        Demonstrations.from_episodes([dict(first, success=False, success_last=True)], task="mw-reach")
