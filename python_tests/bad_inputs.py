"""The bad inputs of the ``cdred-fast`` command and the one-line message each gets.

Shared by python_tests/test_bad_input.py (runs every case and checks the message) and
tools/bad_input_doc.py (writes docs/bad-input.md from the same runs). Each case builds
its files in a temporary folder ``tmp`` (a tiny finished run is at ``tmp/run``) and
returns the command-line arguments; messages are shown with ``tmp`` as ``TMP``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from testing_utils import TINY

from cdred_fast.cli import main

RUN = {**TINY, "task": "mw-reach", "steps": 100, "seed_steps": 100, "eval_freq": 100, "eval_episodes": 1}
RUN["num_demos"] = 1


def make_run(tmp: Path) -> Path:
    """A finished tiny run in ``tmp/run`` (100 steps) and its demonstrations at ``tmp/run/demos.npz``."""
    from cdred_fast import CDREDConfig
    from cdred_fast.trainer import Trainer

    Trainer(CDREDConfig(**RUN), tmp / "run", progress=False, tensorboard=False).train()
    return tmp / "run"


def _copy_ckpt(tmp: Path, name: str) -> Path:
    dst = tmp / name
    dst.write_bytes((tmp / "run" / "checkpoint.pt").read_bytes())
    return dst


def _flip_weight_byte(tmp):
    path = _copy_ckpt(tmp, "flipped.pt")
    with zipfile.ZipFile(path) as z:  # the largest tensor record
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    return ["eval", str(path), "--episodes", "1"]


def _retyped(tmp):
    state = torch.load(tmp / "run" / "checkpoint.pt", weights_only=True)
    key = next(iter(state["agent"]["model"]))
    state["agent"]["model"][key] = state["agent"]["model"][key].to(torch.int64)
    torch.save(state, tmp / "int64.pt")
    return ["eval", str(tmp / "int64.pt")]


def _edited(tmp, name, edit):
    state = torch.load(tmp / "run" / "checkpoint.pt", weights_only=True)
    edit(state)
    torch.save(state, tmp / name)
    return ["eval", str(tmp / name)]


def _write(tmp, name, text):
    (tmp / name).write_text(text)
    return tmp / name


def _foreign_resume(tmp):
    (tmp / "foreign").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign" / "checkpoint.pt")
    return ["train", "--resume", "--work-dir", str(tmp / "foreign")]


def _other_demos(tmp):
    from cdred_fast.data import Demonstrations

    demos = Demonstrations.load(tmp / "run" / "demos.npz")
    other = Demonstrations(**{**vars(demos), "action": np.clip(demos.action + 0.01, -1, 1)})
    other.save(tmp / "other.npz")
    return ["train", "--resume", "--work-dir", str(tmp / "run"), "--demos", str(tmp / "other.npz"), "steps=200"]


def _maniskill2_run(tmp):
    """A run directory whose checkpoint says its task is ms2-pick-cube (ManiSkill2: no renderer)."""
    state = torch.load(tmp / "run" / "checkpoint.pt", weights_only=True)
    state["config"]["task"] = "ms2-pick-cube"
    (tmp / "ms2run").mkdir(exist_ok=True)
    torch.save(state, tmp / "ms2run" / "checkpoint.pt")
    return ["video", str(tmp / "ms2run")]


def _empty_dir(tmp, name):
    (tmp / name).mkdir(exist_ok=True)
    return tmp / name


def _config(tmp, text):
    path = _write(tmp, "config.yaml", text)
    return ["train", "--config", str(path), "--work-dir", str(tmp / "new")]


def _train(*overrides):
    def args(tmp):
        return ["train", "--work-dir", str(tmp / "new"), "task=mw-reach", *overrides]

    return args


# id: (input, how the case is built (tmp -> argv), a fragment the message must hold)
CASES = {
    "eval-text-file": (
        "`eval` on a text file",
        lambda tmp: ["eval", str(_write(tmp, "notes.pt", "not a checkpoint"))],
        "is not a readable cdred_fast checkpoint",
    ),
    "eval-truncated": (
        "`eval` on a truncated checkpoint",
        lambda tmp: ["eval", str(_write(tmp, "trunc.pt", ""))],
        "is not a readable cdred_fast checkpoint",
    ),
    "eval-flipped-byte": (
        "`eval` on a checkpoint with a flipped byte in its weights",
        _flip_weight_byte,
        "fails its CRC-32 check",
    ),
    "eval-int64-weights": ("`eval` on a checkpoint whose weights were cast to int64", _retyped, "torch.int64"),
    "eval-foreign-torch-file": (
        "`eval` on another program's torch file",
        lambda tmp: _edited(tmp, "foreign.pt", lambda s: s.pop("format")),
        "is not a cdred_fast checkpoint",
    ),
    "eval-no-weights": (
        "`eval` on a checkpoint without model weights",
        lambda tmp: _edited(tmp, "noweights.pt", lambda s: s["agent"].pop("model")),
        "no model weights",
    ),
    "eval-bad-config": (
        "`eval` on a checkpoint with an invalid config",
        lambda tmp: _edited(tmp, "badcfg.pt", lambda s: s["config"].update(zeta=7.0)),
        "config is invalid",
    ),
    "eval-episodes-0": (
        "`eval --episodes 0`",
        lambda tmp: ["eval", str(tmp / "run" / "checkpoint.pt"), "--episodes", "0"],
        "'--episodes'",
    ),
    "eval-seed-negative": (
        "`eval --seed -1`",
        lambda tmp: ["eval", str(tmp / "run" / "checkpoint.pt"), "--seed", "-1"],
        "'--seed'",
    ),
    "resume-foreign-file": (
        "`train --resume` of a folder with a foreign checkpoint.pt",
        _foreign_resume,
        "cannot resume",
    ),
    "resume-empty-dir": (
        "`train --resume` of a folder without a run",
        lambda tmp: ["train", "--resume", "--work-dir", str(tmp / "empty")],
        "no checkpoint",
    ),
    "resume-fewer-steps": (
        "`train --resume steps=50` of a run at step 100",
        lambda tmp: ["train", "--resume", "--work-dir", str(tmp / "run"), "steps=50"],
        "steps >= 100",
    ),
    "resume-other-demos": ("`train --resume --demos OTHER.npz`", _other_demos, "other demonstrations"),
    "resume-changed-config": (
        "`train --resume zeta=0.5` (another config)",
        lambda tmp: ["train", "--resume", "--work-dir", str(tmp / "run"), "zeta=0.5"],
        "zeta",
    ),
    "train-existing-run": (
        "`train` into a folder that holds a run",
        lambda tmp: ["train", "--work-dir", str(tmp / "run"), "task=mw-reach"],
        "--resume",
    ),
    "config-malformed-yaml": (
        "`--config` with malformed YAML",
        lambda tmp: _config(tmp, "zeta: [1, 2\n"),
        "not valid YAML",
    ),
    "config-list-yaml": (
        "`--config` holding a list",
        lambda tmp: _config(tmp, "- zeta\n- 0.5\n"),
        "expected a mapping",
    ),
    "config-python-tag": (
        "`--config` with a `!!python` tag",
        lambda tmp: _config(tmp, "zeta: !!python/object/apply:os.getcwd []\n"),
        "not valid YAML",
    ),
    "config-unknown-field": ("an unknown field `zetta=0.5`", _train("zetta=0.5"), "did you mean zeta"),
    "config-out-of-range": ("`zeta=2`", _train("zeta=2"), "CDREDConfig.zeta"),
    "config-bool-for-float": ("`alpha=True`", _train("alpha=True"), "CDREDConfig.alpha must be a number"),
    "config-horizon-too-long": ("`horizon=150` on a task of 100-step episodes", _train("horizon=150"), "horizon=150"),
    "config-buffer-too-small": (
        "`buffer_size=50` on a task of 100-step episodes",
        _train("buffer_size=50"),
        "buffer_size=50",
    ),
    "unknown-task": ("`task=mw-rech` (unknown)", _train("task=mw-rech"), "mw-reach"),
    "config-save-video-maniskill2": (
        "`save_video=true` on a ManiSkill2 task",
        _train("task=ms2-pick-cube", "save_video=true"),
        "'ms2-pick-cube' cannot be rendered",
    ),
    "work-dir-through-file": (
        "`--work-dir` below a regular file",
        lambda tmp: ["train", "--work-dir", str(_write(tmp, "afile", "x") / "run"), "task=mw-reach"],
        "is not a directory",
    ),
    "work-dir-unwritable": (
        "`--work-dir` where nothing can be written (`/sys/...`)",
        lambda tmp: ["train", "--work-dir", "/sys/cdred-run", "task=mw-reach"],
        "not writable",
    ),
    "collect-episodes-0": (
        "`collect --episodes 0`",
        lambda tmp: ["collect", "mw-reach", "--episodes", "0", "--out", str(tmp / "d.npz")],
        "'--episodes'",
    ),
    "collect-out-is-dir": (
        "`collect --out` naming a folder",
        lambda tmp: ["collect", "mw-reach", "--episodes", "1", "--out", str(tmp)],
        "is a directory",
    ),
    "collect-out-unwritable": (
        "`collect --out` in a folder where nothing can be written",
        lambda tmp: ["collect", "mw-reach", "--episodes", "1", "--out", "/sys/d.npz"],
        "not writable",
    ),
    "video-no-checkpoint": (
        "`video` of a folder without a run",
        lambda tmp: ["video", str(_empty_dir(tmp, "norun"))],
        "no checkpoint",
    ),
    "video-maniskill2-run": ("`video` of a ManiSkill2 run", _maniskill2_run, "cannot be rendered"),
    "video-out-is-dir": (
        "`video --out` naming a folder",
        lambda tmp: ["video", str(tmp / "run"), "--out", str(tmp)],
        "is a directory",
    ),
}


def run_case(case_id: str, tmp: Path) -> tuple[int, str, str, BaseException | None]:
    """Run one case in-process: ``(exit status, stdout, stderr with tmp shown as TMP, exception)``."""
    args = CASES[case_id][1](tmp)
    result = CliRunner().invoke(main, args, prog_name="cdred-fast")
    return result.exit_code, result.stdout, result.stderr.replace(str(tmp), "TMP"), result.exception


def table(messages: dict[str, str]) -> str:
    """docs/bad-input.md: one row per case, the input and the message it gets."""
    lines = [
        "# Bad input and the message it gets",
        "",
        "Every bad input of `cdred-fast` ends with one line `error: ...` on stderr and exit status 2,",
        "without a traceback. Generated by `python tools/bad_input_doc.py` from the cases of",
        "`python_tests/bad_inputs.py`; `python_tests/test_bad_input.py` checks that every case still",
        "gets the message shown here (`TMP` stands for the test's temporary folder).",
        "",
        "| case | input | message |",
        "|---|---|---|",
    ]
    for case_id, (description, _, _) in CASES.items():
        message = messages[case_id].replace("|", "\\|")
        lines.append(f"| {case_id} | {description} | `{message}` |")
    return "\n".join(lines) + "\n"
