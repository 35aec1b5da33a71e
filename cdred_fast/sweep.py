"""Grid sweeps of training runs on Ray: ``cdred-fast sweep SWEEP.yaml --out DIR``.

A sweep file has two sections::

    base:                    # overrides of CDREDConfig for every trial (optional)
      preset: demo           # a named preset applied first (optional)
      steps: 20000
    grid:                    # CDREDConfig fields -> lists; the trials are their cartesian product
      method: [cdred, iqmpc, bc]
      seed: [1, 2, 3]
    # demos: FILE (base or grid) is `train --demos FILE`; "{task}" (any field) is filled in per
    # trial, and a relative path is relative to the sweep file's folder.

Every trial's config is built and validated before anything runs. Trial ``method=bc,seed=2``
is an ordinary run directory ``DIR/method=bc,seed=2/`` written by ``cdred-fast train``, run as
a subprocess of a Ray task (its output in ``log.txt`` there). Besides the trainer's files it
holds ``trial.yaml`` (the trial's overrides, given to ``train --config``), ``log.txt``,
``.lock`` (held while a trainer runs in the folder) and, once the run has finished,
``DONE`` (JSON, written atomically). ``DIR/sweep.json`` records the grid and every trial's
status, return code and log.

Running the same command again skips the trials with a ``DONE`` marker, resumes those with a
checkpoint (``train --resume``) and starts the others afresh. Ctrl-C stops the running
trainers with a checkpoint each (SIGINT) before Ray is shut down; a trainer whose Ray worker
dies gets SIGINT too (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from .config import PRESETS, CDREDConfig

DONE_FILE = "DONE"
LOCK_FILE = ".lock"
ATTEMPT_FILE = ".sweep-attempt"
TRIAL_CONFIG = "trial.yaml"
LOG_FILE = "log.txt"
MANIFEST = "sweep.json"
# What `cdred-fast train` writes in a run directory: removed before a trial without a checkpoint
# starts afresh (the leftovers of a run that failed before its first checkpoint).
RUN_FILES = ("config.yaml", "demos.npz", "train.csv", "eval.csv", "learning_curve.png", "tb")
EXTRA_KEYS = ("demos",)  # sweep keys that are not CDREDConfig fields
MAX_NAME = 200  # longest trial name (a folder name) before it is shortened with a hash


class SweepError(ValueError):
    """An invalid sweep file (or options); the message names the trial and the field."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of the grid: its folder name, its CDREDConfig overrides (plain YAML values, the
    preset and ``base`` merged in) and its demonstrations file (absolute, or None)."""

    name: str
    values: dict
    overrides: dict
    demos: Optional[str]
    steps: int


# --------------------------------------------------------------------------- the sweep file
def _format_value(key: str, value: Any) -> str:
    """A grid value as it appears in a trial name: lists joined with 'x', a demos path by its file name."""
    if key == "demos":
        return Path(str(value)).name
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(key, v) for v in value)
    return "none" if value is None else str(value)


def trial_name(values: dict) -> str:
    """The folder name of the trial with these grid ``values``: ``key=value`` sorted by key, joined
    with ',', every character outside ``[A-Za-z0-9._=,+-]`` replaced by '_'."""
    if not values:
        return "trial"
    name = ",".join(f"{k}={_format_value(k, values[k])}" for k in sorted(values))
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 11] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml12_float(value: Any) -> Any:
    """``1e-3`` as the float YAML 1.2 (and OmegaConf, as in ``train``) reads it; ``yaml.safe_load``
    (YAML 1.1) leaves it a string. Lists element by element; other values unchanged."""
    if isinstance(value, list):
        return [_yaml12_float(v) for v in value]
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        return float(value)
    return value


def _check_keys(keys, where: str, source: str) -> None:
    known = set(CDREDConfig.field_names()) | set(EXTRA_KEYS)
    for key in keys:
        if key == "work_dir":
            raise SweepError(
                f"{source}: {where}: 'work_dir' cannot be set in a sweep (every trial runs in DIR/<trial>)"
            )
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SweepError(f"{source}: {where}: unknown field {key!r}{hint}")


def plan_trials(spec: Any, source: str = "the sweep file", root: str | os.PathLike = ".") -> list[Trial]:
    """Every trial of a sweep (the parsed YAML ``spec``), each config built and validated.

    Raises :class:`SweepError` naming the section, trial and field at the first problem.
    Relative demonstrations paths are taken relative to ``root``.
    """
    from .envs import task_spec

    if not isinstance(spec, dict):
        raise SweepError(f"{source}: expected a mapping with 'base:' and 'grid:', got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"base", "grid"})
    if unknown:
        raise SweepError(f"{source}: unknown section(s) {unknown}: a sweep file has 'base:' and 'grid:'")
    base = dict(spec.get("base") or {})
    grid = dict(spec.get("grid") or {})
    if not isinstance(spec.get("base") or {}, dict) or not isinstance(spec.get("grid") or {}, dict):
        raise SweepError(f"{source}: 'base' and 'grid' must be mappings of field: value")
    base = {k: v if k == "demos" else _yaml12_float(v) for k, v in base.items()}
    grid = {k: v if k == "demos" else _yaml12_float(v) for k, v in grid.items()}
    preset = base.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise SweepError(f"{source}: base: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    _check_keys(base, "base", source)
    _check_keys(grid, "grid", source)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{source}: grid: {key} must be a non-empty list of values, got {values!r}")

    trials, names = [], {}
    keys = sorted(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = trial_name(values)
        if name in names:
            raise SweepError(f"{source}: grid values {names[name]} and {values} give the same trial name {name!r}")
        names[name] = values
        merged = {**{k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS.get(preset, {}).items()}}
        merged.update(base)
        merged.update(values)
        demos = merged.pop("demos", None)
        try:
            cfg = CDREDConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})
            task_spec(cfg.task)
        except (TypeError, ValueError) as exc:
            raise SweepError(f"{source}: trial {name}: {exc}") from exc
        if demos is not None:
            if not isinstance(demos, str):
                raise SweepError(f"{source}: trial {name}: demos must be a file path, got {demos!r}")
            try:
                demos = demos.format(**cfg.to_dict())
            except (KeyError, IndexError, ValueError) as exc:
                raise SweepError(f"{source}: trial {name}: demos {demos!r}: cannot fill in {exc}") from exc
            demos = str((Path(root) / Path(demos).expanduser()).resolve())
            if not Path(demos).is_file():
                raise SweepError(f"{source}: trial {name}: demos file {demos} does not exist")
        trials.append(Trial(name=name, values=values, overrides=merged, demos=demos, steps=cfg.steps))
    return trials


def load_sweep(path: str | os.PathLike) -> tuple[dict, list[Trial]]:
    """The sweep file (``yaml.safe_load``) and its validated trials."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"cannot read the sweep file {path}: {exc}") from exc
    return spec, plan_trials(spec, source=str(path), root=path.resolve().parent)


# --------------------------------------------------------------------------- one trial's folder
def is_finished(trial_dir: str | os.PathLike, steps: int) -> bool:
    """Whether the folder holds a run that finished ``steps`` steps (its ``DONE`` marker)."""
    try:
        done = json.loads((Path(trial_dir) / DONE_FILE).read_text())
        return int(done["steps"]) >= steps
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_json(path: Path, obj: Any) -> None:
    from .checkpoint import atomic_write

    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _die_with_parent() -> None:
    """In the trainer's process before exec: SIGINT (checkpoint and exit) when its parent dies, and
    SIGINT delivered and handled as KeyboardInterrupt (a Ray worker blocks it; the trainer would
    inherit the blocked signal)."""
    import ctypes

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the trainer may outlive a killed worker


def execute_trial(trial: Trial, trial_dir: str, attempt: str, threads: int, device: str) -> dict:
    """Run ``cdred-fast train`` for one trial in ``trial_dir`` (a Ray task; returns its outcome).

    Waits for the folder's lock (a trainer left running by a killed sweep finishes first), resumes
    from a checkpoint when there is one, and writes ``DONE`` when the trainer exits with 0. A
    KeyboardInterrupt (Ray's cancellation) is passed on to the trainer as SIGINT.
    """
    import yaml

    from .checkpoint import atomic_write

    folder = Path(trial_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        atomic_write(folder / ATTEMPT_FILE, attempt.encode())
        if is_finished(folder, trial.steps):
            return {"name": trial.name, "status": "finished", "returncode": 0, "resumed": False}
        atomic_write(folder / TRIAL_CONFIG, yaml.safe_dump(trial.overrides, sort_keys=True).encode())
        resume = (folder / "checkpoint.pt").is_file()
        if not resume:
            for leftover in RUN_FILES:
                path = folder / leftover
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        cmd = [sys.executable, "-m", "cdred_fast.cli", "train", "--no-progress", "--work-dir", str(folder)]
        cmd += ["--config", str(folder / TRIAL_CONFIG), "--device", device]
        cmd += ["--demos", trial.demos] if trial.demos else []
        cmd += ["--resume"] if resume else []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        start, interrupted = time.time(), False
        with open(folder / LOG_FILE, "ab") as log:
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            how = "resuming from checkpoint.pt" if resume else "fresh start"
            log.write(f"=== sweep attempt {attempt} on {socket.gethostname()} at {stamp}: {how}\n".encode())
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            # Own session: a terminal's Ctrl-C reaches the trainer once, through this task only.
            proc = _popen(cmd, log, folder, env, lock)
            while True:
                try:
                    while proc.poll() is None:
                        time.sleep(0.2)
                    break
                except KeyboardInterrupt:
                    interrupted = True
                    proc.send_signal(signal.SIGINT)  # the trainer saves a checkpoint and exits
        rc = proc.returncode
        if rc == 0:
            _write_json(folder / DONE_FILE, {"steps": trial.steps, "seconds": round(time.time() - start, 1)})
        status = "finished" if rc == 0 else "interrupted" if interrupted else "failed"
        return {"name": trial.name, "status": status, "returncode": rc, "resumed": resume}
    finally:
        os.close(lock)


def _popen(cmd, log, folder, env, lock_fd):
    import subprocess

    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=folder,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
        pass_fds=(lock_fd,),  # the trainer holds the folder's lock until it exits
    )


def _wait_unlocked(folder: Path, timeout: float) -> bool:
    """Wait until no trainer holds ``folder``'s lock (True), or ``timeout`` seconds (False)."""
    path = folder / LOCK_FILE
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.time() > deadline:
                    return False
                time.sleep(0.2)
    finally:
        os.close(fd)


def log_tail(path: str | os.PathLike, lines: int = 8) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- the driver
def _counts(status: dict) -> dict:
    counts = {"finished": 0, "running": 0, "failed": 0, "interrupted": 0, "pending": 0}
    for entry in status.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return counts


def progress_line(status: dict) -> str:
    """``sweep: 2/6 finished, 2 running, 1 failed, 1 pending``."""
    c = _counts(status)
    line = f"sweep: {c['finished']}/{len(status)} finished, {c['running']} running, {c['failed']} failed"
    line += f", {c['pending']} pending" if c["pending"] else ""
    return line + (f", {c['interrupted']} interrupted" if c["interrupted"] else "")


def _init_ray(address, cpus_per_trial, gpus_per_trial, num_cpus, echo: Callable[[str], None]):
    """Connect to the cluster at ``address``, or start a local Ray with ``num_cpus`` cores (default:
    this machine's)."""
    import logging

    try:
        import ray
    except ImportError as exc:
        raise SweepError("cdred-fast sweep needs Ray: pip install 'cdred_fast[sweep]'") from exc
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise SweepError(
                f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[-1]} (is `ray start --head` "
                "running there? With token authentication this machine needs the cluster's token: RAY_AUTH_TOKEN "
                "or ~/.ray/auth_token)"
            ) from exc
    else:
        # The trials' Ray workers import cdred_fast from where this process does.
        env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
        ray.init(
            address="local",  # a new instance, never a cluster that RAY_ADDRESS or an earlier `ray start` points to
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            runtime_env={"env_vars": env} if env else None,
        )
    total = ray.cluster_resources()
    for what, need in (("CPU", cpus_per_trial), ("GPU", gpus_per_trial)):
        if need > total.get(what, 0):
            message = f"a trial needs {need} {what}(s) but the Ray cluster has {total.get(what, 0):g}"
            if not address:
                ray.shutdown()
                raise SweepError(message)
            echo(f"warning: {message} now: trials wait until nodes with them join")
    return ray


def _write_manifest(out: Path, sweep_file: Path, spec: dict, status: dict) -> None:
    _write_json(
        out / MANIFEST,
        {
            "sweep_file": str(sweep_file),
            "base": spec.get("base") or {},
            "grid": spec.get("grid") or {},
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "counts": _counts(status),
            "trials": status,
        },
    )


def run_sweep(
    sweep_file: str | os.PathLike,
    out: str | os.PathLike,
    address: Optional[str] = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float = 0.0,
    echo: Callable[[str], None] = print,
    poll_s: float = 1.0,
    num_cpus: Optional[int] = None,
) -> int:
    """Run (or continue) the sweep of ``sweep_file`` in ``out``; returns the exit status
    (0: every trial finished, 1: some failed, 130: interrupted). ``num_cpus``: the cores of a
    local Ray (default: all of this machine's)."""
    sweep_file = Path(sweep_file).resolve()
    spec, trials = load_sweep(sweep_file)
    if cpus_per_trial < 1 or gpus_per_trial < 0:
        raise SweepError("--cpus-per-trial must be >= 1 and --gpus-per-trial >= 0")
    cores = num_cpus or os.cpu_count() or 1
    if not address and cpus_per_trial > cores:
        raise SweepError(f"--cpus-per-trial {cpus_per_trial} is more than this machine's {cores} cores")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sweep_lock = os.open(out / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(sweep_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep is running in {out}") from None
        resources = (address, cpus_per_trial, gpus_per_trial, num_cpus)
        with _stop_signals() as stop_signals:
            return _run(sweep_file, spec, trials, out, resources, echo, poll_s, stop_signals)
    finally:
        os.close(sweep_lock)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


class _stop_signals:
    """While the sweep runs, SIGINT and SIGTERM raise KeyboardInterrupt (the orderly stop of
    :func:`_run`): also in a sweep started in the background (``cmd &``, ``nohup``), whose SIGINT
    the shell leaves ignored, so that ``kill -INT PID`` / ``kill PID`` stop it as Ctrl-C does.
    The previous handlers come back afterwards. Main thread only (elsewhere nothing changes).
    ``ray.init`` installs a SIGTERM handler of its own (exit at once): :meth:`install` again after it."""

    def __enter__(self):
        self._previous = {}
        self.install()
        return self

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(sig, _raise_interrupt)
                self._previous.setdefault(sig, previous)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _run(sweep_file, spec, trials, out, resources, echo, poll_s, stop_signals) -> int:
    address, cpus_per_trial, gpus_per_trial, num_cpus = resources
    status = {}
    for t in trials:
        folder = out / t.name
        done = is_finished(folder, t.steps)
        entry = {"status": "finished" if done else "pending", "returncode": 0 if done else None, "values": t.values}
        status[t.name] = {**entry, "dir": str(folder), "log": str(folder / LOG_FILE)}
    todo = [t for t in trials if status[t.name]["status"] == "pending"]
    resumable = sum((out / t.name / "checkpoint.pt").is_file() for t in todo)
    echo(
        f"sweep {sweep_file.name}: {len(trials)} trials in {out}: {len(trials) - len(todo)} finished already, "
        f"{resumable} to resume, {len(todo) - resumable} to start"
    )
    _write_manifest(out, sweep_file, spec, status)
    if not todo:
        echo(progress_line(status))
        return 0

    ray = _init_ray(address, cpus_per_trial, gpus_per_trial, num_cpus, echo)
    stop_signals.install()  # over ray.init's SIGTERM handler
    attempt = uuid.uuid4().hex
    device = "cuda" if gpus_per_trial > 0 else "cpu"
    task = ray.remote(execute_trial)
    refs, interrupted, last = {}, False, ""
    try:
        for t in todo:
            options = dict(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0, name=t.name)
            refs[task.options(**options).remote(t, str(out / t.name), attempt, cpus_per_trial, device)] = t
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=poll_s)
            for ref in ready:
                t = refs.pop(ref)
                entry = status[t.name]
                try:
                    result = ray.get(ref)
                    entry.update(status=result["status"], returncode=result["returncode"], resumed=result["resumed"])
                except Exception as exc:  # the task itself failed (a worker died, ...)
                    entry.update(status="failed", returncode=None, error=str(exc)[-2000:])
                if entry["status"] != "finished":
                    echo(f"trial {t.name} {entry['status']} (exit {entry['returncode']}); log {entry['log']}:")
                    tail = log_tail(entry["log"]) or "\n".join(entry.get("error", "").splitlines()[-8:])
                    echo("\n".join("    " + line for line in tail.splitlines()))
            for t in refs.values():  # a trial is running once its task has taken its folder
                try:
                    started = (out / t.name / ATTEMPT_FILE).read_text() == attempt
                except OSError:
                    started = False
                status[t.name]["status"] = "running" if started else "pending"
            line = progress_line(status)
            if line != last or ready:
                echo(line)
                _write_manifest(out, sweep_file, spec, status)
                last = line
    except KeyboardInterrupt:
        interrupted = True
        echo(f"\ninterrupted: stopping {len(refs)} trials (each running trainer writes a checkpoint)...")
        try:
            for ref in refs:
                ray.cancel(ref)
            for t in refs.values():
                if not _wait_unlocked(out / t.name, timeout=300):
                    echo(f"trial {t.name}: its trainer is still running after 300 s")
        except KeyboardInterrupt:
            echo("not waiting for the trainers: Ray stops them (SIGINT)")
        for t in refs.values():
            done = is_finished(out / t.name, t.steps)
            status[t.name].update(status="finished" if done else "interrupted", returncode=0 if done else None)
    finally:
        ray.shutdown()
    _write_manifest(out, sweep_file, spec, status)
    if progress_line(status) != last:
        echo(progress_line(status))
    failed = [name for name, entry in status.items() if entry["status"] == "failed"]
    for name in failed:
        echo(f"failed: {name} (log {status[name]['log']})")
    if interrupted:
        echo("run the same command again to resume the unfinished trials")
        return 130
    return 1 if failed else 0


__all__ = [
    "SweepError",
    "Trial",
    "execute_trial",
    "is_finished",
    "load_sweep",
    "plan_trials",
    "progress_line",
    "run_sweep",
    "trial_name",
]
