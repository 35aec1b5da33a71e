"""`cdred-fast sweep`: sweep-file validation, trial names, and real sweeps on a local Ray
(interrupted and resumed; a crashing trial next to one that finishes)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner
from testing_utils import TINY

from cdred_fast.cli import main
from cdred_fast.config import PRESETS
from cdred_fast.sweep import SweepError, is_finished, plan_trials, trial_name

# A few hundred steps of the tiny model on mw-reach, with checkpoints every 100 steps.
TINY_RUN = {
    **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
    "task": "mw-reach",
    "steps": 300,
    "seed_steps": 200,
    "eval_freq": 300,
    "eval_episodes": 1,
    "num_demos": 2,
    "save_freq": 100,
}


def _write(tmp_path, spec, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "spec, words",
    [
        ({"grid": {"methd": ["bc"]}}, ["grid", "unknown field 'methd'", "did you mean method"]),
        ({"base": {"zeta": 0.5}, "grid": {"zeta": [0.5, 2.0]}}, ["trial zeta=2.0", "zeta", "2.0"]),
        ({"base": {"task": "mw-reach"}, "grid": {"seed": 3}}, ["grid: seed must be a non-empty list"]),
        ({"grid": {"seed": []}}, ["grid: seed must be a non-empty list"]),
        ({"base": {"preset": "nope"}}, ["unknown preset 'nope'"]),
        ({"base": {"work_dir": "x"}}, ["'work_dir' cannot be set"]),
        ({"grid": {"task": ["mw-reach", "mw-reachh"]}}, ["trial task=mw-reachh"]),
        ({"grid": {"seed": [1]}, "trials": 3}, ["unknown section(s) ['trials']"]),
        ({"base": {"demos": "missing-{task}.npz", "task": "mw-reach"}}, ["demos file", "missing-mw-reach.npz"]),
        ({"base": {"demos": "{nope}.npz"}}, ["cannot fill in"]),
        (["method", "bc"], ["expected a mapping"]),
    ],
)
def test_invalid_sweep_files_are_refused_naming_trial_and_field(tmp_path, spec, words):
    with pytest.raises(SweepError) as info:
        plan_trials(spec, source="s.yaml", root=tmp_path)
    for word in words:
        assert word in str(info.value)


def test_cli_refuses_an_invalid_sweep_before_starting_anything(tmp_path):
    path = _write(tmp_path, {"base": {"task": "mw-reach"}, "grid": {"method": ["cdred", "bcc"]}})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "trial method=bcc" in result.output and "method" in result.output
    assert not (tmp_path / "out").exists()
    path = _write(tmp_path, {"base": {"task": "mw-reach"}, "grid": {"method": ["cdred"]}})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out"), "--cpus-per-trial", "9999"])
    assert result.exit_code == 1 and "--cpus-per-trial 9999 is more than this machine's" in result.output
    assert not (tmp_path / "out").exists()


def test_plan_merges_preset_base_and_grid(tmp_path):
    demos = tmp_path / f"{PRESETS['demo']['task']}.npz"  # {task} is the preset's task
    demos.write_bytes(b"")
    spec = {"base": {"preset": "demo", "steps": 500, "demos": "{task}.npz"}, "grid": {"seed": [1, 2], "zeta": [1.0]}}
    trials = plan_trials(spec, root=tmp_path)
    assert [t.name for t in trials] == ["seed=1,zeta=1.0", "seed=2,zeta=1.0"]
    t = trials[1]
    assert t.values == {"seed": 2, "zeta": 1.0} and t.steps == 500 and t.demos == str(demos.resolve())
    assert t.overrides["latent_dim"] == 64 and t.overrides["steps"] == 500 and t.overrides["seed"] == 2
    assert t.overrides["rnd_target_hidden"] == [64, 64] and "demos" not in t.overrides
    # 1e-3 is a float, as in `train lr=1e-3` (yaml.safe_load alone reads a string)
    (t,) = plan_trials(yaml.safe_load("base: {pi_lr: 1e-4}\ngrid: {lr: [1e-3]}"))
    assert t.name == "lr=0.001" and t.overrides["lr"] == 0.001 and t.overrides["pi_lr"] == 1e-4


# --------------------------------------------------------------------------- trial names
def test_trial_names_are_deterministic_sorted_and_filesystem_safe(tmp_path):
    assert trial_name({"task": "mw-reach", "seed": 2, "method": "iqmpc"}) == "method=iqmpc,seed=2,task=mw-reach"
    assert trial_name({"rnd_predictor_hidden": [256, 256], "mpc": False}) == "mpc=false,rnd_predictor_hidden=256x256"
    assert trial_name({"demos": "/data/a b/cheetah run.npz"}) == "demos=cheetah_run.npz"
    assert trial_name({}) == "trial"
    long = trial_name({"rnd_predictor_hidden": list(range(100))})
    assert len(long) <= 200 and long == trial_name({"rnd_predictor_hidden": list(range(100))})
    names = [t.name for t in plan_trials({"grid": {"seed": [3, 1], "method": ["bc", "cdred"]}})]
    assert names == ["method=bc,seed=3", "method=bc,seed=1", "method=cdred,seed=3", "method=cdred,seed=1"]
    for name in names:
        assert "/" not in name and " " not in name
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.npz").write_bytes(b"")
    (tmp_path / "b" / "x.npz").write_bytes(b"")
    with pytest.raises(SweepError, match="same trial name"):
        plan_trials({"grid": {"demos": ["a/x.npz", "b/x.npz"]}}, root=tmp_path)


# --------------------------------------------------------------------------- real sweeps on local Ray
def _snapshot(folder):
    """Every file of a trial folder: (mtime_ns, sha1 of its bytes)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, folder)] = (
                os.stat(path).st_mtime_ns,
                hashlib.sha1(open(path, "rb").read()).digest(),
            )
    return out


def _sweep_cmd(path, out):
    return [sys.executable, "-m", "cdred_fast.cli", "sweep", str(path), "--out", str(out)]


# The sweep in a process of its own, on a local Ray of one core: one trial at a time, so that
# the second CDRED trial to run is midway while an earlier trial has finished.
# It starts as a background job does (`cmd &`, nohup): with SIGINT ignored. Python leaves an
# ignored SIGINT ignored, so the SIGINT below stops it only because the sweep installs its own
# handler (sweep._stop_signals).
ONE_AT_A_TIME = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "from cdred_fast.sweep import run_sweep; sys.exit(run_sweep(sys.argv[1], sys.argv[2], num_cpus=1, poll_s=0.2))"
)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])  # Ctrl-C / kill -INT, and kill (over ray.init's handler)
def test_sweep_interrupted_midway_resumes_only_unfinished_trials(tmp_path, stop):
    pytest.importorskip("ray")
    path = _write(tmp_path, {"base": TINY_RUN, "grid": {"method": ["cdred", "bc"], "seed": [1, 2]}})
    out = tmp_path / "out"
    names = [t.name for t in plan_trials(yaml.safe_load(path.read_text()))]
    cmd = [sys.executable, "-c", ONE_AT_A_TIME, str(path), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Interrupt once some trial has finished and a CDRED trial has its first checkpoint (step 100;
    # 200 updates and 100 planned steps to go).
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [n for n in names if is_finished(out / n, 300)]
        midway = [n for n in names if "cdred" in n and n not in done and (out / n / "checkpoint.pt").is_file()]
        if done and midway:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(getattr(signal, stop))
    first, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, first
    assert "interrupted" in first and "run the same command again" in first

    manifest = json.loads((out / "sweep.json").read_text())
    finished = [n for n in names if is_finished(out / n, 300)]
    unfinished = [n for n in names if n not in finished]
    assert finished and unfinished
    assert {n for n, e in manifest["trials"].items() if e["status"] == "finished"} == set(finished)
    assert all(manifest["trials"][n]["status"] in ("interrupted", "pending") for n in unfinished)
    resumable = [n for n in unfinished if (out / n / "checkpoint.pt").is_file()]
    assert resumable  # the interrupted trainers wrote their checkpoints
    before = {n: _snapshot(out / n) for n in finished}

    second = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(finished)} finished already, {len(resumable)} to resume" in second.stdout
    assert "sweep: 4/4 finished, 0 running, 0 failed" in second.stdout
    for n in finished:  # never re-run: not a byte, not a timestamp changed
        assert _snapshot(out / n) == before[n]
    for n in resumable:
        log = (out / n / "log.txt").read_text()
        assert "resuming from checkpoint.pt" in log and "resumed at step" in log
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["grid"] == {"method": ["cdred", "bc"], "seed": [1, 2]}
    assert all(e["status"] == "finished" and e["returncode"] == 0 for e in manifest["trials"].values())
    for n in names:
        rows = (out / n / "train.csv").read_text().splitlines()
        assert rows[-1].split(",")[0] == "300" and is_finished(out / n, 300)

    third = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "4 finished already, 0 to resume, 0 to start" in third.stdout


@pytest.mark.slow
def test_crashing_trial_is_reported_with_its_log_while_the_others_finish(tmp_path):
    pytest.importorskip("ray")
    from cdred_fast.collect import collect
    from cdred_fast.envs import make, scripted_policy
    from cdred_fast.sweep import run_sweep

    collect(make("mw-reach", seed=0), scripted_policy("mw-reach"), 2, successful_only=True, seed=0).save(
        tmp_path / "reach.npz"
    )
    # num_demos=5 asks the 2-episode file for more episodes than it holds: the trainer stops at start.
    base = {**TINY_RUN, "method": "bc", "steps": 100, "eval_freq": 100, "demos": "reach.npz"}
    path = _write(tmp_path, {"base": base, "grid": {"num_demos": [1, 5]}})
    lines = []
    code = run_sweep(path, tmp_path / "out", cpus_per_trial=1, echo=lines.append, poll_s=0.5)
    text = "\n".join(lines)
    assert code == 1, text
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())["trials"]
    assert manifest["num_demos=1"]["status"] == "finished" and is_finished(tmp_path / "out" / "num_demos=1", 100)
    bad = manifest["num_demos=5"]
    assert bad["status"] == "failed" and bad["returncode"] not in (0, None)
    log = tmp_path / "out" / "num_demos=5" / "log.txt"
    assert bad["log"] == str(log) and "num_demos=5 asks for more episodes" in log.read_text()
    assert f"trial num_demos=5 failed (exit {bad['returncode']}); log {log}" in text
    assert "num_demos=5 asks for more episodes" in text  # the end of the log, shown
    assert "sweep: 1/2 finished, 0 running, 1 failed" in text


def test_the_committed_paper_grid_plans_135_valid_trials(tmp_path):
    """results/paper-grid.yaml (the full comparison of the paper): 3 methods x 15 paper tasks x 3
    seeds, every trial's config valid, each reading its task's demonstrations."""
    from pathlib import Path

    from cdred_fast.envs.registry import TASKS

    source = Path(__file__).resolve().parents[1] / "results" / "paper-grid.yaml"
    spec = yaml.safe_load(source.read_text())
    paper = sorted(name for name, s in TASKS.items() if s.paper)
    assert sorted(spec["grid"]["task"]) == paper
    (tmp_path / "demos").mkdir()
    for task in paper:
        (tmp_path / "demos" / f"{task}.npz").write_bytes(b"")
    trials = plan_trials(spec, root=tmp_path)
    assert len(trials) == 3 * 15 * 3 and len({t.name for t in trials}) == len(trials)
    for t in trials:
        assert t.steps == 1_000_000 and t.demos == str((tmp_path / "demos" / f"{t.values['task']}.npz").resolve())
