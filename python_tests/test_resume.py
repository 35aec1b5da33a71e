"""Interrupted runs resume exactly: SIGINT / SIGTERM / SIGKILL at chosen moments of a tiny
run (seeding, the burst of updates, an evaluation, a checkpoint write), then ``--resume``,
compared with the uninterrupted run (weights, train.csv, eval.csv, TensorBoard)."""

import csv
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from testing_utils import TINY

from cdred_fast.checkpoint import load_checkpoint

# mw-reach episodes have 100 steps: seeding until step 100 (episode 1), a burst of 100
# updates, evaluations at 0, 100, 200 and 250 (the end, inside episode 3).
CONFIG = {**TINY, "task": "mw-reach", "steps": 250, "seed_steps": 100, "eval_freq": 100, "eval_episodes": 1}
CONFIG["num_demos"] = 2

# Runs the CLI in this process after arming one hook: on the N-th call of the hooked
# function, the process sends itself the signal (SIGKILL during a checkpoint write writes
# half a file first).
DRIVER = r"""
import os, signal, sys
import cdred_fast.trainer as trainer_mod
from cdred_fast.agent import CDREDAgent
from cdred_fast.checkpoint import atomic_write
from cdred_fast.cli import main

hook, sig, n = sys.argv[1], getattr(signal, sys.argv[2]), int(sys.argv[3])
calls = {"n": 0}

def fire():
    calls["n"] += 1
    return calls["n"] == n

def wrap(owner, name, eval_only=False):
    original = getattr(owner, name)
    def hooked(*args, **kwargs):
        if (not eval_only or kwargs.get("eval_mode")) and fire():
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)
    setattr(owner, name, hooked)

if hook == "step":
    wrap(trainer_mod.Trainer, "_after_step")
elif hook == "update":
    wrap(trainer_mod.Trainer, "_update")
elif hook == "eval_act":
    wrap(CDREDAgent, "act", eval_only=True)
elif hook == "save":
    original = trainer_mod.write_checkpoint
    def write(path, state):
        if fire():
            if sig == signal.SIGKILL:
                atomic_write(path, lambda f: (f.write(b"PK half a checkpoint"), f.flush(), os.kill(os.getpid(), sig)))
            os.kill(os.getpid(), sig)
        return original(path, state)
    trainer_mod.write_checkpoint = write
main(sys.argv[4:], prog_name="cdred-fast")
"""


def _overrides():
    return [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in CONFIG.items()]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(work_dir, *extra, hook=None):
    args = ["train", "--no-progress", "--work-dir", str(work_dir), *extra]
    if hook is None:
        cmd = [sys.executable, "-m", "cdred_fast.cli", *args]
    else:
        cmd = [sys.executable, "-c", DRIVER, *map(str, hook), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("steps_per_s", None)
    return rows


def _tb_points(work_dir):
    """``{(tag, step): count}`` of the scalars TensorBoard shows for a run (purges applied)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(work_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    points = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            points[(tag, event.step)] = points.get((tag, event.step), 0) + 1
    return points


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    proc = _train(run, *_overrides())
    assert proc.returncode == 0, proc.stderr
    return run


def _assert_same_run(run, reference):
    a = load_checkpoint(reference / "checkpoint.pt")
    b = load_checkpoint(run / "checkpoint.pt")
    assert (a["step"], a["episode"]) == (b["step"], b["episode"])
    for k, v in a["agent"]["model"].items():
        torch.testing.assert_close(b["agent"]["model"][k], v, rtol=0, atol=0, msg=k)
    assert a["agent"]["step"] == b["agent"]["step"]  # the number of updates
    assert _rows(run / "train.csv") == _rows(reference / "train.csv")
    assert _rows(run / "eval.csv") == _rows(reference / "eval.csv")
    points = _tb_points(run)
    assert points and max(points.values()) == 1, "TensorBoard shows a step twice"
    assert set(points) == set(_tb_points(reference))
    assert not list(run.glob(".*.tmp")), "a temporary file was left"


# id: ((hook, signal, N), (step, pending updates, eval.csv rows) of the checkpoint the
# interruption writes). The N-th call of the hooked function sends the signal.
CASES = {
    # inside episode 1, before any update: the start of episode 1
    "sigint-seeding": (("step", "SIGINT", 50), (0, 0, 1)),
    # 40 of the 100 burst updates done
    "sigint-burst": (("update", "SIGINT", 40), (100, 60, 1)),
    "sigterm-burst": (("update", "SIGTERM", 99), (100, 1, 1)),
    # inside episode 2 (one update per step): the start of episode 2
    "sigint-after-burst": (("update", "SIGINT", 130), (100, 0, 2)),
    # during the evaluation of step 100 (its row not written yet)
    "sigint-eval": (("eval_act", "SIGINT", 150), (100, 0, 1)),
    # during the last evaluation (step 250, inside episode 3): the start of episode 3
    "sigterm-final-eval": (("eval_act", "SIGTERM", 350), (200, 0, 3)),
    # during the checkpoint write after the first evaluation
    "sigint-checkpoint-write": (("save", "SIGINT", 2), (0, 0, 1)),
    "sigkill-burst": (("update", "SIGKILL", 60), None),
    "sigkill-checkpoint-write": (("save", "SIGKILL", 3), None),
}


def _random_case(seed):
    rnd = random.Random(seed)
    hook = rnd.choice(["step", "update", "eval_act", "save"])
    limit = {"step": 250, "update": 250, "eval_act": 400, "save": 4}[hook]
    return (hook, rnd.choice(["SIGINT", "SIGTERM", "SIGKILL"]), rnd.randint(1, limit)), None


@pytest.mark.slow
@pytest.mark.parametrize(
    "hook, written",
    [pytest.param(*v, id=k) for k, v in CASES.items()]
    + [pytest.param(*_random_case(s), id=f"random-{s}") for s in range(2)],
)
def test_interrupted_run_resumes_exactly(tmp_path, reference, hook, written):
    run = tmp_path / "run"
    proc = _train(run, *_overrides(), hook=hook)
    expected = {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -signal.SIGKILL}[hook[1]]
    if proc.returncode == 0:  # the hook never fired (e.g. a random N past the end)
        pytest.skip(f"{hook} did not interrupt the run")
    assert proc.returncode == expected, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    if written is not None:
        state = load_checkpoint(run / "checkpoint.pt")
        progress = state["progress"]
        assert (state["step"], progress["pending_updates"], progress["log_rows"]["eval"]) == written
    proc = _train(run, "--resume")
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(run, reference)


def test_fresh_run_replaces_what_a_run_without_checkpoint_left(tmp_path):
    from cdred_fast import CDREDConfig
    from cdred_fast.collect import collect
    from cdred_fast.data import Demonstrations
    from cdred_fast.envs import make, scripted_policy
    from cdred_fast.trainer import Trainer

    def demos(seed):
        return collect(make("mw-reach", seed=seed), scripted_policy("mw-reach"), 1, seed=seed)

    run = tmp_path / "run"
    run.mkdir()
    demos(1).save(run / "demos.npz")  # left by a run killed before its first checkpoint
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")  # a kill during a checkpoint write
    (run / "tb").mkdir()
    (run / "tb" / "events.out.tfevents.old").write_bytes(b"")
    given = demos(2)
    given.save(tmp_path / "given.npz")
    cfg = CDREDConfig(**{**CONFIG, "steps": 100, "num_demos": None})  # every episode of the given file
    trainer = Trainer(cfg, run, demos=tmp_path / "given.npz", progress=False)
    saved = Demonstrations.load(run / "demos.npz")
    assert (saved.action == given.action).all() and (trainer.demos.action == given.action).all()
    assert not list(run.glob(".*.tmp")) and not (run / "tb" / "events.out.tfevents.old").exists()
