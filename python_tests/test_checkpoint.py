"""The atomic file writer and checkpoint loading."""

import os

import numpy as np
import pytest
import torch

from cdred_fast.checkpoint import atomic_write, load_checkpoint


def test_atomic_write_bytes_and_writer(tmp_path):
    path = atomic_write(tmp_path / "sub" / "a.bin", b"first")
    assert path == tmp_path / "sub" / "a.bin" and path.read_bytes() == b"first"
    atomic_write(path, lambda f: torch.save({"x": torch.arange(3)}, f))
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert os.listdir(path.parent) == ["a.bin"]  # no temporary file left behind


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = atomic_write(tmp_path / "demos.npz", b"old")

    def broken(f):
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["demos.npz"]
    atomic_write(path, lambda f: np.savez(f, a=np.ones(2)))
    assert np.load(path)["a"].tolist() == [1.0, 1.0]


def test_checkpoint_loading_refuses_arbitrary_pickles(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "agent": Exploit()}, bad)
    with pytest.raises(ValueError, match="not a readable cdred_fast checkpoint"):
        load_checkpoint(bad)
    assert not marker.exists()
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_atomic_write_mode_and_stale_temporaries(tmp_path):
    from cdred_fast.checkpoint import remove_stale_temporaries

    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "demos.npz", b"x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    stale = [tmp_path / ".checkpoint.pt.k3j2.tmp", tmp_path / ".train.csv.a1.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (tmp_path / ".other.tmp").write_bytes(b"not ours")
    assert sorted(remove_stale_temporaries(tmp_path, ["checkpoint.pt", "train.csv"])) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == [".other.tmp", "demos.npz"]


def test_checkpoint_crc_and_dtype_checks(tmp_path):
    from cdred_fast.checkpoint import check_state_dict
    from cdred_fast.errors import CheckpointError

    state = {"format": 2, "config": {}, "agent": {"model": {"w": torch.ones(64)}}, "buffer": {}, "rng": {}}
    torch.save({**state, "step": 0, "episode": 0}, tmp_path / "c.pt")
    good = load_checkpoint(tmp_path / "c.pt")
    data = bytearray((tmp_path / "c.pt").read_bytes())
    i = data.index(torch.ones(64).numpy().tobytes())
    data[i + 5] ^= 0x01  # one bit of one weight
    (tmp_path / "c.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC-32"):
        load_checkpoint(tmp_path / "c.pt")
    check_state_dict(good["agent"]["model"], {"w": torch.zeros(64)}, "model")
    with pytest.raises(CheckpointError, match="torch.int64"):
        check_state_dict(good["agent"]["model"], {"w": torch.zeros(64, dtype=torch.int64)}, "model")
    with pytest.raises(CheckpointError, match="NaN"):
        check_state_dict(good["agent"]["model"], {"w": torch.full((64,), float("nan"))}, "model")


def test_agent_from_checkpoint_with_other_settings_acts_in_them():
    """agent_from_checkpoint(cfg=...) builds the checkpoint's weights with other precisions, and the
    agent acts in them; bench/precision_outcome.py's agents are built so. (An agent resolves its
    matmul precision when it is built: assigning agent.cfg afterwards changed nothing, and
    precision_outcome's closed loop measured the checkpoint's own precision in every row until
    session 13.) A config whose networks differ is refused."""
    import dataclasses
    import sys
    from pathlib import Path

    from testing_utils import TINY

    from cdred_fast.agent import CDREDAgent
    from cdred_fast.checkpoint import CheckpointError, agent_from_checkpoint, config_from_checkpoint
    from cdred_fast.config import CDREDConfig
    from cdred_fast.envs import make

    env = make("mw-reach", "state", seed=0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(0)
    saved = CDREDAgent(CDREDConfig(**dict(TINY, matmul_precision="highest"), episode_length=100), obs_dim, act_dim)
    state = {"config": saved.cfg.to_dict(), "agent": saved.state_dict()}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from precision_outcome import SETTINGS, setting_agents
    finally:
        sys.path.pop(0)
    agents = setting_agents(state, env, config_from_checkpoint(state), ["highest", "medium", "bf16"])
    obs, _ = env.reset(seed=0)
    for setting, agent in agents.items():
        seen: list = []
        hook = agent.model.dynamics.register_forward_hook(
            lambda *a, seen=seen: seen.append(torch.get_float32_matmul_precision())
        )
        agent.act(obs, t0=True, eval_mode=True, generator=torch.Generator().manual_seed(0))
        hook.remove()
        assert seen and set(seen) == {SETTINGS[setting]["matmul_precision"]}, (setting, set(seen))
        assert agent.cfg.planning_precision == SETTINGS[setting]["planning_precision"]
        for name, p in agent.model.state_dict().items():
            torch.testing.assert_close(p, saved.model.state_dict()[name], rtol=0, atol=0)
    bigger = dataclasses.replace(config_from_checkpoint(state), mlp_dim=48)
    with pytest.raises(CheckpointError, match="agent.model"):
        agent_from_checkpoint(state, env, cfg=bigger)
    env.close()
