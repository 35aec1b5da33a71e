"""Demonstration files: round trip, validation of bad files, safe import of released pickles."""

from __future__ import annotations

import io
import os
import pickle
import shlex

import numpy as np
import pytest

from cdred_fast import data, released
from cdred_fast.data import DemonstrationError, Demonstrations


def _episode(rng, length, obs_dim=5, action_dim=2):
    states = rng.normal(size=(length + 1, obs_dim)).astype(np.float32)
    return {
        "obs": states[:-1],
        "action": rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
        "reward": rng.normal(size=length).astype(np.float32),
        "next_obs": states[1:],
    }


def _demos(lengths=(4, 7, 3), task="mw-reach", obs_dim=5, action_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    eps = [_episode(rng, n, obs_dim, action_dim) for n in lengths]
    for i, ep in enumerate(eps):
        ep["success"] = i % 2 == 0
    return Demonstrations.from_episodes(eps, task=task)


def _payload(demos: Demonstrations) -> dict:
    """What save() writes, as a dict we can corrupt."""
    return {
        "obs": demos.obs.copy(),
        "action": demos.action.copy(),
        "reward": demos.reward.copy(),
        "next_obs": demos.next_obs.copy(),
        "episode_lengths": demos.episode_lengths.copy(),
        "success": demos.success.copy(),
        "format_version": np.int64(1),
        "task": np.str_(demos.task),
        "obs_dim": np.int64(demos.obs_dim),
        "action_dim": np.int64(demos.action_dim),
    }


def _write(path, payload):
    with open(path, "wb") as f:
        np.savez(f, **payload)
    return path


# ----------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    demos = _demos()
    path = demos.save(tmp_path / "sub" / "demos.npz")
    assert path.exists() and os.listdir(path.parent) == ["demos.npz"]  # no temporary files left behind
    back = Demonstrations.load(path, task="mw-reach", obs_dim=5, action_dim=2)
    for key in ("obs", "action", "reward", "next_obs", "episode_lengths", "success"):
        np.testing.assert_array_equal(getattr(back, key), getattr(demos, key))
        assert getattr(back, key).dtype == getattr(demos, key).dtype
    assert back.task == "mw-reach" and back.num_episodes == 3 and back.num_transitions == 14
    eps = list(back.episodes())
    assert [len(e["obs"]) for e in eps] == [4, 7, 3] and [e["success"] for e in eps] == [True, False, True]
    np.testing.assert_array_equal(eps[1]["next_obs"][:-1], eps[1]["obs"][1:])
    with np.load(path, allow_pickle=False) as raw:  # plain npz, metadata as numpy scalars
        assert raw["episode_lengths"].dtype == np.int64 and raw["success"].dtype == bool
        assert str(raw["task"]) == "mw-reach" and int(raw["format_version"]) == 1


def test_save_is_atomic(tmp_path, monkeypatch):
    path = _demos(seed=1).save(tmp_path / "d.npz")
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _demos(seed=2).save(path)
    assert path.read_bytes() == before  # the old file is intact
    assert os.listdir(tmp_path) == ["d.npz"]  # and the temporary file is gone


# ----------------------------------------------------------------------------- bad files


def test_wrong_dims_for_task(tmp_path):
    path = _demos(obs_dim=39, action_dim=4).save(tmp_path / "d.npz")
    with pytest.raises(
        DemonstrationError, match=r"d\.npz' are for task 'mw-reach' with obs_dim 39 .* environment has obs_dim 17"
    ):
        Demonstrations.load(path, obs_dim=17)
    with pytest.raises(DemonstrationError, match="action_dim 4, but the environment has obs_dim 39, action_dim 6"):
        Demonstrations.load(path, obs_dim=39, action_dim=6)
    Demonstrations.load(path, task="mw-reach", obs_dim=39, action_dim=4)  # all match: fine


def test_wrong_task(tmp_path):
    path = _demos(task="mw-reach").save(tmp_path / "d.npz")
    with pytest.raises(DemonstrationError) as err:
        data.load(path, task="mw-soccer")
    assert "'mw-reach'" in str(err.value) and "'mw-soccer'" in str(err.value) and "d.npz" in str(err.value)


@pytest.mark.parametrize("key", ["obs", "next_obs", "action", "reward"])
def test_nan_or_inf_rejected(tmp_path, key):
    payload = _payload(_demos())
    payload[key].reshape(-1)[3] = np.nan if key != "reward" else np.inf
    path = _write(tmp_path / "d.npz", payload)
    with pytest.raises(DemonstrationError, match=f"{key} contains NaN or inf"):
        Demonstrations.load(path)


def test_empty_rejected(tmp_path):
    payload = _payload(_demos())
    for key in ("obs", "next_obs", "action", "reward"):
        payload[key] = payload[key][:0]
    payload["episode_lengths"] = np.zeros(0, np.int64)
    payload["success"] = np.zeros(0, bool)
    with pytest.raises(DemonstrationError, match="empty"):
        Demonstrations.load(_write(tmp_path / "d.npz", payload))
    with pytest.raises(DemonstrationError, match="empty"):
        Demonstrations.from_episodes([], task="mw-reach")


def test_truncated_and_garbage_files(tmp_path):
    good = _demos().save(tmp_path / "good.npz").read_bytes()
    for name, content in [
        ("truncated.npz", good[: len(good) // 2]),
        ("tail_cut.npz", good[:-30]),
        ("garbage.npz", b"this is not a zip archive at all" * 10),
        ("zero.npz", b""),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DemonstrationError, match=rf"{name}.*not a readable \.npz"):
            Demonstrations.load(tmp_path / name)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DemonstrationError, match="single .npy array"):
        Demonstrations.load(tmp_path / "single.npy")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        Demonstrations.load(tmp_path / "missing.npz")


def test_corrupted_member_detected(tmp_path):
    raw = bytearray(_demos().save(tmp_path / "d.npz").read_bytes())
    at = raw.find(b"obs.npy") + 200  # inside the stored obs array: CRC mismatch
    raw[at : at + 8] = b"\xff" * 8
    (tmp_path / "d.npz").write_bytes(bytes(raw))
    with pytest.raises(DemonstrationError, match="d.npz"):
        Demonstrations.load(tmp_path / "d.npz")


@pytest.mark.parametrize("key", ["obs", "episode_lengths", "task", "format_version"])
def test_missing_key(tmp_path, key):
    payload = _payload(_demos())
    del payload[key]
    with pytest.raises(DemonstrationError, match=f"lacks required key.*'{key}'"):
        Demonstrations.load(_write(tmp_path / "d.npz", payload))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.update(episode_lengths=np.array([4, 7, 2])), "sum to 13 but there are 14"),
        (lambda p: p.update(episode_lengths=np.array([4, 11, -1])), "positive"),
        (lambda p: p.update(success=np.array([1.0, 0.0, 1.0])), "success has dtype float64"),
        (lambda p: p.update(obs=p["obs"].astype(np.int32)), "obs has dtype int32"),
        (lambda p: p.update(action=p["action"][:-1]), "action has 13 rows"),
        (lambda p: p.update(next_obs=p["next_obs"][:, :4]), "next_obs has shape"),
        (lambda p: p.update(reward=p["reward"][:, None]), "reward must have shape"),
        (lambda p: p.update(success=np.array([True, False])), "success has shape"),
        (lambda p: p.update(obs_dim=np.int64(6)), "metadata says obs_dim 6"),
        (lambda p: p.update(format_version=np.int64(99)), "format_version 99"),
        (lambda p: p.update(task=np.int64(3)), "metadata task"),
        (lambda p: p["next_obs"].__setitem__((1, 0), 123.0), r"next_obs\[1\] differs from obs\[2\] inside episode 0"),
    ],
)
def test_inconsistent_contents(tmp_path, corrupt, message):
    payload = _payload(_demos())
    corrupt(payload)
    with pytest.raises(DemonstrationError, match=message):
        Demonstrations.load(_write(tmp_path / "d.npz", payload))


def test_object_arrays_are_not_unpickled(tmp_path):
    payload = _payload(_demos())
    payload["task"] = np.array(["mw-reach", {"evil": 1}], dtype=object)
    with pytest.raises(DemonstrationError, match="not a readable"):
        Demonstrations.load(_write(tmp_path / "d.npz", payload))


# ----------------------------------------------------------------------------- released pickles


def _released_episodes(rng, n=3, length=6, obs_dim=5, action_dim=2):
    eps = []
    for _ in range(n):
        ep = _episode(rng, length, obs_dim, action_dim)
        eps.append(
            (ep["obs"].astype(np.float64), ep["action"], ep["reward"][:, None], ep["next_obs"].astype(np.float64))
        )
    return eps


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_import_released_pickle(tmp_path, protocol):
    eps = _released_episodes(np.random.default_rng(protocol))
    path = tmp_path / "expert.pkl"
    path.write_bytes(pickle.dumps(eps, protocol=protocol))
    demos = released.import_released_pickle(path, task="walker-run")
    assert demos.task == "walker-run" and demos.num_episodes == 3 and demos.num_transitions == 18
    assert not demos.success.any()  # the released files do not record success
    for ep, (obs, act, rew, nxt) in zip(demos.episodes(), eps):
        np.testing.assert_array_equal(ep["obs"], obs.astype(np.float32))
        np.testing.assert_array_equal(ep["action"], act)
        np.testing.assert_array_equal(ep["reward"], rew[:, 0])
        np.testing.assert_array_equal(ep["next_obs"], nxt.astype(np.float32))
    demos.save(tmp_path / "expert.npz")
    assert data.load(tmp_path / "expert.npz", task="walker-run").num_transitions == 18


def test_import_pickle_written_by_numpy_1(tmp_path):
    # numpy 1.x named its internals numpy.core.*; protocol 2 spells globals out as text.
    eps = _released_episodes(np.random.default_rng(0))
    blob = pickle.dumps(eps, protocol=2)
    assert b"numpy._core.multiarray" in blob
    path = tmp_path / "old.pkl"
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    demos = released.import_released_pickle(path, task="walker-run")
    np.testing.assert_array_equal(demos.action[:6], eps[0][1])


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(
        [(np.zeros((2, 3)), np.zeros((2, 1)), np.zeros(2), _RunsShell(f"touch {shlex.quote(str(marker))}"))]
    )

    # Control: the payload is real - an ordinary unpickler runs the command.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_RunsShell(f"touch {shlex.quote(str(control))}")))
    assert control.exists()

    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|os|nt)\.system"):
        released.import_released_pickle(path, task="mw-reach")
    assert not marker.exists(), "the malicious command was executed"

    path.write_bytes(pickle.dumps([_Evals()]))
    with pytest.raises(pickle.UnpicklingError, match=r"refused global builtins\.eval"):
        released.import_released_pickle(path, task="mw-reach")
    with pytest.raises(pickle.UnpicklingError, match="persistent"):
        released.RestrictedUnpickler(io.BytesIO(b"\x80\x04P0\n.")).load()  # PERSID opcode


def test_released_pickle_with_wrong_layout(tmp_path):
    path = tmp_path / "bad.pkl"
    rng = np.random.default_rng(0)
    cases = [
        ([], "non-empty list"),
        ({"obs": np.zeros(3)}, "non-empty list"),
        ([(np.zeros((3, 5)), np.zeros((3, 2)), np.zeros(3))], "must be a tuple"),
        (
            [(np.zeros((3, 5)), np.zeros((3, 2)), [0.0, 0.0, 0.0], np.zeros((3, 5)))],
            "rewards must be a numeric numpy array",
        ),
        ([(np.zeros((3, 5)), np.zeros((2, 2)), np.zeros(3), np.zeros((3, 5)))], "action has 2 rows"),
        ([_released_episodes(rng, 1)[0], _released_episodes(rng, 1, obs_dim=6)[0]], "inconsistent shapes"),
    ]
    for obj, message in cases:
        path.write_bytes(pickle.dumps(obj))
        with pytest.raises(DemonstrationError, match=message):
            released.import_released_pickle(path, task="mw-reach")
    path.write_bytes(pickle.dumps(_released_episodes(rng))[:50])
    with pytest.raises(DemonstrationError, match="bad.pkl.*not a readable pickle"):
        released.import_released_pickle(path, task="mw-reach")
