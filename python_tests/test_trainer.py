"""End-to-end training runs on real simulators (tiny models, a few hundred steps)."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from testing_utils import TINY

from cdred_fast import CDREDConfig
from cdred_fast.checkpoint import load_checkpoint
from cdred_fast.collect import collect
from cdred_fast.data import DemonstrationError, Demonstrations
from cdred_fast.envs import make
from cdred_fast.trainer import Trainer


def mw_cfg(**over):
    base = dict(
        TINY, task="mw-reach", steps=300, seed_steps=200, eval_freq=100, eval_episodes=1, num_demos=2, save_freq=100
    )
    return CDREDConfig(**{**base, **over})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metaworld_run_writes_logs_checkpoint_and_curve(tmp_path):
    result = Trainer(mw_cfg(mpc=True), tmp_path / "run", progress=False).train()
    run = tmp_path / "run"
    for name in ("config.yaml", "demos.npz", "checkpoint.pt", "train.csv", "eval.csv", "learning_curve.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir()), "no TensorBoard events"
    train = rows(run / "train.csv")
    assert [int(r["step"]) for r in train] == [100, 200, 300]
    assert int(train[-1]["updates"]) == 100  # one update per step after seeding
    assert int(train[1]["updates"]) == 200 + 0  # the burst of seed_steps updates at step 200
    for key in ("grad_norm", "grad_norm_max", "reward_expert", "reward_behavioral", "q_gap", "consistency_loss"):
        assert np.isfinite(float(train[-1][key])), key
    assert float(train[-1]["grad_norm_max"]) >= float(train[-1]["grad_norm"])
    evals = rows(run / "eval.csv")
    assert [int(r["step"]) for r in evals] == [0, 100, 200, 300]
    assert result["before"]["step"] == 0 and result["after"]["step"] == 300
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 300 and state["episode"] == 3
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    full = Trainer(mw_cfg(), tmp_path / "full", progress=False)
    full.train()
    part = Trainer(mw_cfg(steps=200), tmp_path / "part", progress=False)
    part.train()
    resumed = Trainer(mw_cfg(steps=300), tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 200 and resumed.buffer.num_episodes == 2
    resumed.train()
    a, b = full.agent.model.state_dict(), resumed.agent.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert [r["step"] for r in rows(tmp_path / "part" / "train.csv")] == ["100", "200", "300"]
    assert [r["success"] for r in rows(tmp_path / "part" / "eval.csv")] == [
        r["success"] for r in rows(tmp_path / "full" / "eval.csv")
    ]


def test_refuses_to_overwrite_or_resume_with_another_config(tmp_path):
    Trainer(mw_cfg(steps=100, seed_steps=100), tmp_path / "run", progress=False).train()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(mw_cfg(steps=100, seed_steps=100), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="zeta"):
        Trainer(mw_cfg(steps=200, seed_steps=100, zeta=0.5), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(mw_cfg(), tmp_path / "empty", resume=True, progress=False)


def test_dmcontrol_run_with_a_demonstration_file(tmp_path):
    env = make("cartpole-swingup", seed=3)
    rng = np.random.default_rng(0)
    demos = collect(env, lambda obs: rng.uniform(-1, 1, 1), episodes=1, task="cartpole-swingup")
    path = demos.save(tmp_path / "demos.npz")
    cfg = CDREDConfig(
        **TINY, task="cartpole-swingup", steps=1000, seed_steps=500, eval_freq=1000, eval_episodes=1, mpc=False
    )
    result = Trainer(cfg, tmp_path / "run", demos=path, progress=False).train()
    assert result["after"]["step"] == 1000
    train = rows(tmp_path / "run" / "train.csv")
    assert int(train[-1]["step"]) == 1000 and np.isfinite(float(train[-1]["total_loss"]))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]["task"] == "cartpole-swingup"


def test_mismatched_demonstrations_are_rejected(tmp_path):
    env = make("cartpole-swingup", seed=0)
    demos = collect(env, lambda obs: np.zeros(1), episodes=1, task="cartpole-swingup")
    path = demos.save(tmp_path / "cartpole.npz")
    with pytest.raises(DemonstrationError, match="mw-reach"):
        Trainer(mw_cfg(), tmp_path / "run", demos=path, progress=False)
    with pytest.raises(ValueError, match="no scripted expert"):
        Trainer(CDREDConfig(**TINY, task="cartpole-swingup", steps=10), tmp_path / "run2", progress=False)


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread, as in-process tests
    return subprocess.run(
        [sys.executable, "-m", "cdred_fast.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_cli_collect_train_eval(tmp_path):
    proc = _cli(
        "collect", "mw-reach", "--episodes", "2", "--out", str(tmp_path / "d.npz"), "--successful-only", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    demos = Demonstrations.load(tmp_path / "d.npz", task="mw-reach")
    assert demos.num_episodes == 2 and demos.success.all()

    overrides = [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY.items()]
    args = [
        "train",
        "--no-progress",
        "--demos",
        str(tmp_path / "d.npz"),
        "--work-dir",
        str(tmp_path / "run"),
        "task=mw-reach",
        "steps=200",
        "seed_steps=100",
        "eval_freq=200",
        "eval_episodes=1",
        *overrides,
    ]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "before training (step 0)" in proc.stdout and "after training (step 200)" in proc.stdout
    # the expert's own episodes beside them: success at the last / any step and return
    expert_row = [line for line in proc.stdout.splitlines() if "demonstrations)" in line]
    assert len(expert_row) == 1 and re.search(
        r"expert \(\d+ demonstrations\)\s+1\.00 / 1\.00\s+[\d,]+\.\d", expert_row[0]
    )

    # --resume starts from the run's saved config: only what changes is given again
    proc = _cli("train", "--no-progress", "--resume", "--work-dir", str(tmp_path / "run"), "steps=300", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed at step 200" in proc.stdout and "after training (step 300)" in proc.stdout
    proc = _cli(
        "train", "--no-progress", "--resume", "--work-dir", str(tmp_path / "run"), "steps=400", "zeta=0.5", cwd=tmp_path
    )
    assert proc.returncode == 2 and "zeta" in proc.stderr
    proc = _cli("train", "--no-progress", "--work-dir", str(tmp_path / "run"), *args[4:], cwd=tmp_path)
    assert proc.returncode == 2 and "--resume" in proc.stderr  # an existing run is never overwritten

    proc = _cli("eval", str(tmp_path / "run" / "checkpoint.pt"), "--episodes", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["step"] == 300 and 0.0 <= out["success"] <= 1.0

    proc = _cli("train", "--work-dir", str(tmp_path / "bad"), "zeta=2", cwd=tmp_path)
    assert proc.returncode == 2 and "zeta" in proc.stderr
    proc = _cli("train", "--work-dir", str(tmp_path / "bad"), "no_such_field=1", cwd=tmp_path)
    assert proc.returncode == 2 and "no_such_field" in proc.stderr
    proc = _cli("train", "--work-dir", str(tmp_path / "bad"), "task=cheetah-runn", cwd=tmp_path)
    assert proc.returncode != 0 and "cheetah-run" in proc.stderr


def test_num_threads_sets_the_run_threads(tmp_path):
    """cfg.num_threads is what the run trains with (torch.set_num_threads); None keeps the setting."""
    before = torch.get_num_threads()
    try:
        Trainer(mw_cfg(num_threads=1), tmp_path / "one", progress=False)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        Trainer(mw_cfg(), tmp_path / "default", progress=False)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
