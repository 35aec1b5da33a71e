"""The ``cdred-fast`` command.

    cdred-fast train [--preset demo] [--demos FILE] [--work-dir DIR] [--resume] [key=value ...]
    cdred-fast expert train TASK [--work-dir DIR] [--resume] [key=value ...]
    cdred-fast eval CHECKPOINT [--episodes N] [--trembling-hand P]
    cdred-fast video RUN_DIR [--out FILE.gif] [--seed N] [--episodes N] [--size PX] [--no-expert]
    cdred-fast collect TASK --out FILE [--policy scripted|CHECKPOINT] [--episodes N] [--successful-only]
    cdred-fast data info FILE [--json]
    cdred-fast data convert RELEASED.pkl --task TASK --out FILE.npz
    cdred-fast data render STATE_DEMOS.npz --out FILE.npz
    cdred-fast tasks
    cdred-fast sweep SWEEP.yaml --out DIR [--address ADDR] [--cpus-per-trial N] [--gpus-per-trial G]

The expert pipeline of the paper (DMControl): ``expert train`` (TD-MPC2: the same
world model trained on the environment reward), ``collect --policy
runs/.../checkpoint.pt`` (state demonstrations with their reset seeds), ``data
render`` (the same episodes re-simulated with 64x64 pixels), then ``train
--demos``.

Hyper-parameters are ``key=value`` overrides of :class:`cdred_fast.CDREDConfig`
(``steps=20000 zeta=1.0 rnd_predictor_hidden=[256,256]``), parsed by OmegaConf; a
``--config FILE.yaml`` is applied first. Unknown keys and invalid values are rejected
with the field's name before anything runs.

A bad input (config, file, path, option) is reported as one line ``error: ...`` on
stderr, without a traceback, with exit status 2 (:class:`cdred_fast.errors.UserError`
and click's usage errors; 1 for a demonstration file whose content ``data`` refuses);
``docs/bad-input.md`` lists the messages. An interrupted
training run exits with 130.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import click

from .config import PRESETS, CDREDConfig
from .errors import UserError

# What a command's setup (reading the config, files, checkpoints, making the environment
# and the work directory) raises for a bad input; training itself is not wrapped.
_SETUP_ERRORS = (UserError, ValueError, TypeError, KeyError, OSError, NotImplementedError, RuntimeError)


class _Main(click.Group):
    """The command group: user errors print one line ``error: MESSAGE`` and exit with 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:  # usage errors exit with 2, refused file contents with 1
            _fail(exc.format_message(), exc.exit_code)
        except UserError as exc:
            _fail(str(exc))
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, status: int = 2) -> None:
    """Print ``error: message`` (one line) on stderr and exit with ``status``."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(status)


def _user_error(exc: BaseException, context: str = "") -> UserError:
    """A :class:`UserError` with the message of ``exc`` (and ``context`` before it)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError):
        message = f"missing {message}"
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in message:
        message = f"{message}: {exc.filename}"
    return UserError(f"{context}{message}")


def _load_yaml(config_file: str) -> dict:
    """A YAML file of overrides, read with the safe loader; must be a mapping of field names."""
    import yaml

    try:
        with open(config_file) as f:
            values = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise UserError(f"--config {config_file}: not valid YAML ({' '.join(str(exc).split())})") from exc
    except OSError as exc:
        raise _user_error(exc, f"--config {config_file}: ") from exc
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise UserError(
            f"--config {config_file}: expected a mapping of config fields (key: value), got {type(values).__name__}"
        )
    return values


def build_config(
    preset: str | None, config_file: str | None, overrides: tuple[str, ...], base: dict | None = None
) -> CDREDConfig:
    """Defaults <- base (a resumed run's config) <- preset <- YAML file <- key=value overrides,
    validated by CDREDConfig."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    values: dict = dict(base or {})
    if preset is not None:
        if preset not in PRESETS:
            raise click.BadParameter(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}", param_hint="--preset")
        values.update(PRESETS[preset])
    try:
        layers = [OmegaConf.create(_load_yaml(config_file))] if config_file else []
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise click.BadParameter(f"expected key=value, got {bad[0]!r}", param_hint="OVERRIDES")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(values), *layers), resolve=True)
    except OmegaConfBaseException as exc:
        raise click.BadParameter(str(exc), param_hint="OVERRIDES") from exc
    merged = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
    try:
        return CDREDConfig(**merged)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="OVERRIDES") from exc


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CDRED world-model online imitation learning (cdred_fast)."""


_TRAIN_OPTIONS = [
    click.option(
        "--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML file of overrides."
    ),
    click.option(
        "--work-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Run directory (default runs/[expert-|iqmpc-]<task>[-rgb]-s<seed>).",
    ),
    click.option("--resume", is_flag=True, help="Continue the run in --work-dir from its last checkpoint."),
    click.option("--device", default="cpu", show_default=True),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option(
        "--save-minutes",
        type=click.FloatRange(min=0.0, min_open=True),
        default=10.0,
        show_default=True,
        help="Minutes between periodic checkpoints (one is also written after every evaluation).",
    ),
]


def _saved_config(work_dir: str | None) -> dict | None:
    """The config stored in ``work_dir/checkpoint.pt`` (None when there is none to resume)."""
    if work_dir is None or not (Path(work_dir) / "checkpoint.pt").is_file():
        return None  # the Trainer reports the missing checkpoint
    from .checkpoint import load_checkpoint

    try:
        saved = dict(load_checkpoint(Path(work_dir) / "checkpoint.pt")["config"])
    except _SETUP_ERRORS as exc:
        raise _user_error(exc, "cannot resume: ") from exc
    saved.pop("episode_length", None)  # filled in from the task again
    return saved


def _train_options(f):
    for option in reversed(_TRAIN_OPTIONS):
        f = option(f)
    return f


def _run_training(cfg: CDREDConfig, demos, work_dir, resume, device, no_progress, save_minutes) -> None:
    from .precision import describe
    from .trainer import Trainer

    expert = cfg.method == "tdmpc2"
    prefix = "expert-" if expert else "" if cfg.method == "cdred" else f"{cfg.method}-"
    default_dir = f"{prefix}{cfg.task}{'-rgb' if cfg.obs == 'rgb' else ''}-s{cfg.seed}"
    work_dir = work_dir or str(Path(cfg.work_dir) / default_dir)
    try:
        trainer = Trainer(
            cfg,
            work_dir,
            demos=demos,
            device=device,
            resume=resume,
            progress=not no_progress,
            save_interval_s=60.0 * save_minutes,
        )
    except _SETUP_ERRORS as exc:
        # unknown task, mismatched demonstrations or config, a run already in work_dir, ...
        raise _user_error(exc) from exc
    data = "environment reward (TD-MPC2)" if expert else f"{trainer.demos.num_episodes} expert episodes"
    name = "TD-MPC2 expert" if expert else {"iqmpc": "IQ-MPC", "bc": "BC"}.get(cfg.method, "CDRED")
    unit = "updates (no environment interaction)" if trainer.offline else "steps"
    click.echo(
        f"{name} on {cfg.task} ({cfg.obs}): {cfg.steps} {unit}, {data}, "
        f"work dir {work_dir}{' (resumed at step %d)' % trainer.step if resume else ''}"
    )
    click.echo(describe(trainer.cfg, trainer.device))
    try:
        result = trainer.train()
    except KeyboardInterrupt:
        sys.exit(128 + (getattr(trainer, "stopped_by", None) or 2))  # 130 after SIGINT, 143 after SIGTERM
    click.echo(_before_after(cfg, result, trainer.demos))
    click.echo(f"learning curve: {result['learning_curve']}\ncheckpoint: {Path(work_dir) / 'checkpoint.pt'}")


def _before_after(cfg: CDREDConfig, result: dict, demos) -> str:
    """The end-of-training table: the first and last evaluation beside the demonstrations (the
    expert's own episodes, when the run has any): success at the last / at any step, return."""
    from .data import summary

    rows = [
        (f"{when} training (step {ev['step']:.0f})", ev["success"], ev.get("success_any", 0.0), ev["episode_return"])
        for when, ev in (("before", result["before"]), ("after", result["after"]))
    ]
    if demos is not None:
        info = summary(demos)
        last = info["success_last"]
        rows.append((f"expert ({info['episodes']} demonstrations)", last, info["success_any"], info["return_mean"]))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"\nevaluation over {cfg.eval_episodes} episodes", f"  {'':<{width}}success last / any     return"]
    for label, last, anywhere, ret in rows:
        last_s = "  -  " if last is None else f"{last:.2f}"
        lines.append(f"  {label:<{width}}{last_s} / {anywhere:.2f}     {ret:>9,.1f}")
    return "\n".join(lines)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--preset", default=None, help="Named set of overrides (demo: the README's main job).")
@click.option(
    "--demos",
    type=click.Path(exists=True, dir_okay=False),
    help="Demonstrations (.npz; num_demos=N uses its first N episodes); default: scripted Meta-World experts.",
)
@_train_options
def train(overrides, preset, config_file, demos, work_dir, resume, device, no_progress, save_minutes) -> None:
    """Train CDRED online from expert demonstrations (key=value overrides; method=iqmpc: IQ-MPC).

    method=bc trains behaviour cloning on the demonstrations alone (steps = updates).

    With --resume the run's saved config is the starting point: only what changes
    (typically steps=...) needs to be given again.
    """
    cfg = build_config(preset, config_file, overrides, base=_saved_config(work_dir) if resume else None)
    _run_training(cfg, demos, work_dir, resume, device, no_progress, save_minutes)


@main.group()
def expert() -> None:
    """RL experts: the world model trained on the environment reward (TD-MPC2)."""


@expert.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("task")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@_train_options
def expert_train(task, overrides, config_file, work_dir, resume, device, no_progress, save_minutes) -> None:
    """Train an RL expert on TASK with the environment reward (= train method=tdmpc2 task=TASK).

    Its checkpoint then collects demonstrations: `cdred-fast collect TASK --policy CHECKPOINT`.
    """
    cfg = build_config(None, config_file, (*overrides, f"task={task}", "method=tdmpc2"))
    _run_training(cfg, None, work_dir, resume, device, no_progress, save_minutes)


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--episodes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Evaluation seed (default: the run's evaluation seed)."
)
@click.option(
    "--trembling-hand",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Trembling-hand probability of the evaluation environment (default: the run's, cfg.trembling_hand).",
)
@click.option("--device", default="cpu", show_default=True)
def eval_cmd(checkpoint, episodes, seed, trembling_hand, device) -> None:
    """Evaluate a checkpoint written by `cdred-fast train` or `cdred-fast expert train`."""
    import torch

    from .checkpoint import agent_from_checkpoint, config_from_checkpoint, load_checkpoint
    from .trainer import EVAL_SEED_OFFSET, evaluate, make_env

    try:
        state = load_checkpoint(checkpoint, map_location=device)
        cfg = config_from_checkpoint(state)
        env = make_env(cfg, seed=cfg.seed + EVAL_SEED_OFFSET, trembling_hand=trembling_hand)
        agent = agent_from_checkpoint(state, env, device=device)
    except _SETUP_ERRORS as exc:
        raise _user_error(exc) from exc
    torch.manual_seed(cfg.seed)
    result = evaluate(agent, env, episodes, seed=cfg.seed + EVAL_SEED_OFFSET if seed is None else seed)
    p = cfg.trembling_hand if trembling_hand is None else trembling_hand
    click.echo(
        json.dumps(
            {"checkpoint": str(checkpoint), "step": state["step"], "episodes": episodes, "trembling_hand": p, **result}
        )
    )


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output GIF (default RUN_DIR/final_vs_expert.gif, or RUN_DIR/final.gif without an expert).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Reset seed of the first episode; episode i uses seed + i (default: the run's first evaluation seed).",
)
@click.option(
    "--episodes", type=click.IntRange(min=1), default=1, show_default=True, help="Episodes, one after another."
)
@click.option("--size", type=click.IntRange(32, 1024), default=160, show_default=True, help="Panel side in pixels.")
@click.option("--no-expert", is_flag=True, help="The agent alone, without the scripted expert.")
@click.option("--device", default="cpu", show_default=True)
def video(run_dir, out, seed, episodes, size, no_expert, device) -> None:
    """A GIF of the run's final agent (RUN_DIR/checkpoint.pt) beside the task's scripted expert.

    Both play the same episodes in the run's evaluation environment (episode i reset with
    seed + i): the agent as `cdred-fast eval` plays them (eval_mode, the same random draws), then
    the scripted expert. Tasks without a scripted expert (DMControl) show the agent alone.
    """
    import torch

    from .checkpoint import agent_from_checkpoint, config_from_checkpoint, load_checkpoint
    from .collect import AgentPolicy
    from .envs import has_scripted_policy, scripted_policy
    from .trainer import EVAL_SEED_OFFSET, make_env
    from .video import record_episode, save_gif, side_by_side, video_unsupported_reason

    try:
        state = load_checkpoint(Path(run_dir) / "checkpoint.pt", map_location=device)
        cfg = config_from_checkpoint(state)
    except _SETUP_ERRORS as exc:
        raise _user_error(exc) from exc
    reason = video_unsupported_reason(cfg.task)
    if reason:
        raise UserError(f"cannot make a video of {run_dir}: {reason}")
    expert = not no_expert and has_scripted_policy(cfg.task)
    out = out or str(Path(run_dir) / ("final_vs_expert.gif" if expert else "final.gif"))
    _check_out(out)
    seed = cfg.seed + EVAL_SEED_OFFSET if seed is None else seed
    try:
        env = make_env(cfg, seed=seed)
    except _SETUP_ERRORS as exc:
        raise _user_error(exc) from exc
    frames, has_success = [], env.get_wrapper_attr("suite") != "dmcontrol"
    try:
        try:
            policy = AgentPolicy(agent_from_checkpoint(state, env, device=device), eval_mode=True)
        except _SETUP_ERRORS as exc:
            raise _user_error(exc) from exc
        torch.manual_seed(cfg.seed)  # as `cdred-fast eval`: the first episode is the first one it evaluates
        for i in range(episodes):
            played = [("agent", f"step {state['step']}", record_episode(env, policy, seed + i, size=size))]
            if expert:
                played.append(
                    ("expert", "scripted", record_episode(env, scripted_policy(cfg.task), seed + i, size=size))
                )
            labels = []
            for name, what, ep in played:
                success = f", success at the last step: {'yes' if ep.success else 'no'}" if has_success else ""
                click.echo(f"{name:<6} ({what}) episode {i} (seed {seed + i}): return {ep.episode_return:.1f}{success}")
                label = f"{name}: return {ep.episode_return:.1f}"
                labels.append(label + (f"\nlast-step success: {'yes' if ep.success else 'no'}" if has_success else ""))
            if expert:
                frames += side_by_side(played[0][2].frames, played[1][2].frames, labels=labels)
            else:
                frames += played[0][2].frames
    finally:
        env.close()
    try:
        path = save_gif(frames, out)
    except OSError as exc:
        raise _user_error(exc, f"cannot write --out {out}: ") from exc
    height, width = frames[0].shape[:2]
    click.echo(f"wrote {path} ({len(frames)} frames of {width}x{height})")


@main.command()
@click.argument("task")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@click.option(
    "--policy",
    default="scripted",
    show_default=True,
    help="'scripted' (the task's scripted expert, `cdred_fast.envs.scripted_policy`) or a checkpoint.pt "
    "(e.g. from `cdred-fast expert train`), acting in evaluation mode.",
)
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--successful-only", is_flag=True, help="Keep only episodes that succeed at some step.")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Episode i is reset with seed + i (recorded).",
)
@click.option("--device", default="cpu", show_default=True, help="Device of a checkpoint policy.")
def collect(task, out, policy, episodes, successful_only, seed, device) -> None:
    """Record demonstrations of TASK from a scripted expert or a trained checkpoint.

    The demonstrations have the observations the policy acts on (a state checkpoint
    gives state demonstrations; render them with `cdred-fast data render`).
    """
    from .collect import AgentPolicy
    from .collect import collect as collect_demos
    from .data import summary
    from .envs import make, scripted_policy, task_spec

    try:
        spec = task_spec(task)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TASK") from exc
    _check_out(out)
    if successful_only and spec.suite == "dmcontrol":
        raise click.BadParameter("DMControl tasks have no success signal", param_hint="--successful-only")
    if policy == "scripted":
        try:
            act = scripted_policy(task)
        except ValueError as exc:
            raise click.BadParameter(
                f"{exc}; pass --policy CHECKPOINT (e.g. from `cdred-fast expert train {task}`)", param_hint="--policy"
            ) from exc
        env = make(task, seed=seed)
    else:
        import torch

        from .checkpoint import agent_from_checkpoint, config_from_checkpoint, load_checkpoint
        from .trainer import make_env

        if not Path(policy).is_file():
            raise click.BadParameter(f"no checkpoint file {policy!r} (and not 'scripted')", param_hint="--policy")
        try:
            state = load_checkpoint(policy, map_location=device)
            cfg = config_from_checkpoint(state)
        except _SETUP_ERRORS as exc:
            raise click.BadParameter(str(exc), param_hint="--policy") from exc
        if cfg.task != task:
            raise click.BadParameter(f"the checkpoint was trained on {cfg.task!r}, not {task!r}", param_hint="--policy")
        env = make_env(cfg, seed=seed, trembling_hand=0.0)  # demonstrations are recorded without noise
        try:
            act = AgentPolicy(agent_from_checkpoint(state, env, device=device), eval_mode=True)
        except _SETUP_ERRORS as exc:
            env.close()
            raise click.BadParameter(str(exc), param_hint="--policy") from exc
        torch.manual_seed(seed)
    try:
        demos = collect_demos(env, act, episodes, successful_only=successful_only, seed=seed)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        env.close()
    path = _save(demos, out)
    info = summary(demos)
    click.echo(
        f"wrote {demos.num_episodes} episodes ({demos.num_transitions} transitions) of {task} to {path}; "
        f"return {info['return_mean']:.1f} +- {info['return_std']:.1f}, "
        f"success at the last step {_fraction(info['success_last'])}, at any step {info['success_any']:.2f}"
    )


def _check_out(out: str) -> None:
    """Refuse an --out that cannot be written, before any work is done."""
    from .checkpoint import check_writable_dir

    if Path(out).is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    check_writable_dir(Path(out).parent if str(Path(out).parent) else ".", what="the folder of --out")


def _save(demos, out: str) -> Path:
    try:
        return demos.save(out)
    except OSError as exc:
        raise _user_error(exc, f"cannot write --out {out}: ") from exc


@main.group()
def data() -> None:
    """Inspect, convert and render demonstration files."""


@data.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def data_info(file, as_json) -> None:
    """Episodes, lengths, returns, success rate, sizes and task of a demonstrations FILE (.npz)."""
    from .data import DemonstrationError, load, summary

    try:
        info = summary(load(file))
    except DemonstrationError as exc:
        hint = " (a released .pkl? convert it first: cdred-fast data convert FILE --task TASK --out F.npz)"
        raise click.ClickException(f"{exc}{hint if str(file).endswith('.pkl') else ''}") from exc
    if as_json:
        click.echo(json.dumps({"file": str(file), **info}))
        return
    shape = "x".join(str(d) for d in info["obs_shape"])
    click.echo(
        f"{file}\n"
        f"  task          {info['task']}\n"
        f"  episodes      {info['episodes']} ({info['transitions']} transitions)\n"
        f"  length        min {info['length_min']}  mean {info['length_mean']:.1f}  max {info['length_max']}\n"
        f"  return        mean {info['return_mean']:.2f}  std {info['return_std']:.2f}  "
        f"min {info['return_min']:.2f}  max {info['return_max']:.2f}\n"
        f"  success_last: {_fraction(info['success_last'])}\n"
        f"  success_any: {info['success_any']:.2f}\n"
        f"  observation   {shape} {info['obs_dtype']}\n"
        f"  action dim    {info['action_dim']}\n"
        f"  reset seeds   {'recorded' if info['seeds'] else 'not recorded'}"
    )


def _fraction(x) -> str:
    return "not recorded" if x is None else f"{x:.2f}"


@data.command("convert")
@click.argument("released", type=click.Path(exists=True, dir_okay=False))
@click.option("--task", required=True, help="The registered task the file is for (checked against its sizes).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
def data_convert(released, task, out) -> None:
    """Convert one of the authors' released expert pickles to the .npz format (safe unpickling)."""
    from .data import DemonstrationError
    from .envs import make
    from .released import import_released_pickle

    _check_out(out)
    try:
        env = make(task)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--task") from exc
    try:
        demos = import_released_pickle(released, task=task)
        demos.check_compatible(
            task=task,
            obs_dim=env.observation_space.shape[0],
            action_dim=env.action_space.shape[0],
            source=f"the episodes in {released!r}",
        )
    except (DemonstrationError, pickle.UnpicklingError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        env.close()
    path = _save(demos, out)
    click.echo(f"wrote {demos.num_episodes} episodes ({demos.num_transitions} transitions) of {task} to {path}")


@data.command("render")
@click.argument("demos_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file (pixel observations).")
@click.option(
    "--seed", type=int, default=None, help="Only for files without recorded seeds: episode i was reset with seed + i."
)
def data_render(demos_file, out, seed) -> None:
    """Re-simulate state demonstrations (DEMOS_FILE, with reset seeds) and record 64x64 pixel observations."""
    from .collect import render_pixels
    from .data import DemonstrationError, load

    _check_out(out)
    try:
        pixels = render_pixels(load(demos_file), seed=seed)
    except (DemonstrationError, NotImplementedError) as exc:
        raise click.ClickException(str(exc)) from exc
    path = _save(pixels, out)
    click.echo(f"wrote {pixels.num_episodes} episodes ({pixels.num_transitions} transitions) with pixels to {path}")


@main.command()
def tasks() -> None:
    """List the registered tasks."""
    from .envs import TASKS

    for name, spec in TASKS.items():
        click.echo(
            f"{name:<22} {spec.suite:<10} {spec.episode_length} steps x repeat {spec.action_repeat}{'  (paper)' if spec.paper else ''}"
        )


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def report(directory) -> None:
    """Write DIRECTORY/report.md (+ report.json, curves_<task>.png) from every run under it."""
    from .report import ReportError, write_report

    try:
        path = write_report(directory)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")


@main.command()
@click.argument("sweep_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder of the trials' run directories.")
@click.option("--address", default=None, help="A running Ray cluster (default: a local Ray on this machine).")
@click.option("--cpus-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help="Cores (threads).")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=0.0, show_default=True, help="GPU share.")
def sweep(sweep_file, out, address, cpus_per_trial, gpus_per_trial) -> None:
    """Run the grid of SWEEP_FILE (base: overrides, grid: field -> values) on Ray, one run per trial.

    Running the same command again resumes the unfinished trials and skips the finished ones.
    """
    from .sweep import SweepError, run_sweep

    try:
        code = run_sweep(sweep_file, out, address, cpus_per_trial, gpus_per_trial, echo=click.echo)
    except SweepError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


if __name__ == "__main__":
    main()
