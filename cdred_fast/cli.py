"""The ``cdred-fast`` command.

    cdred-fast train [--preset demo] [--demos FILE] [--work-dir DIR] [--resume] [key=value ...]
    cdred-fast eval CHECKPOINT [--episodes N]
    cdred-fast collect TASK --out FILE [--episodes N] [--successful-only]
    cdred-fast tasks

Hyper-parameters are ``key=value`` overrides of :class:`cdred_fast.CDREDConfig`
(``steps=20000 zeta=1.0 rnd_predictor_hidden=[256,256]``), parsed by OmegaConf; a
``--config FILE.yaml`` is applied first. Unknown keys and invalid values are rejected
with the field's name before anything runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .config import CDREDConfig


def build_config(preset: str | None, config_file: str | None, overrides: tuple[str, ...]) -> CDREDConfig:
    """Defaults <- preset <- YAML file <- key=value overrides, validated by CDREDConfig."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .trainer import PRESETS

    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise click.BadParameter(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}", param_hint="--preset")
        values.update(PRESETS[preset])
    try:
        layers = [OmegaConf.load(config_file)] if config_file else []
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CDRED world-model online imitation learning (cdred_fast)."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--preset", default=None, help="Named set of overrides (demo: the README's main job).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML file of overrides.")
@click.option("--demos", type=click.Path(exists=True, dir_okay=False), help="Demonstrations (.npz); default: scripted Meta-World experts.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None, help="Run directory (default runs/<task>-s<seed>).")
@click.option("--resume", is_flag=True, help="Continue the run in --work-dir from its last checkpoint.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(overrides, preset, config_file, demos, work_dir, resume, device, no_progress) -> None:
    """Train CDRED online from expert demonstrations (key=value overrides)."""
    from .trainer import Trainer

    cfg = build_config(preset, config_file, overrides)
    work_dir = work_dir or str(Path(cfg.work_dir) / f"{cfg.task}-s{cfg.seed}")
    trainer = Trainer(cfg, work_dir, demos=demos, device=device, resume=resume, progress=not no_progress)
    click.echo(
        f"CDRED on {cfg.task}: {cfg.steps} steps, {trainer.demos.num_episodes} expert episodes, "
        f"work dir {work_dir}{' (resumed at step %d)' % trainer.step if resume else ''}"
    )
    try:
        result = trainer.train()
    except KeyboardInterrupt:
        sys.exit(130)
    before, after = result["before"], result["after"]
    click.echo(
        f"\nevaluation over {cfg.eval_episodes} episodes\n"
        f"  before training (step {before['step']:.0f}): success {before['success']:.2f}  "
        f"return {before['episode_return']:.1f}\n"
        f"  after training  (step {after['step']:.0f}): success {after['success']:.2f}  "
        f"return {after['episode_return']:.1f}\n"
        f"learning curve: {result['learning_curve']}\ncheckpoint: {Path(work_dir) / 'checkpoint.pt'}"
    )


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--episodes", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=None, help="Evaluation seed (default: the run's evaluation seed).")
@click.option("--device", default="cpu", show_default=True)
def eval_cmd(checkpoint, episodes, seed, device) -> None:
    """Evaluate a checkpoint written by `cdred-fast train`."""
    import torch

    from .agent import CDREDAgent
    from .envs import make
    from .trainer import evaluate, load_checkpoint

    state = load_checkpoint(checkpoint, map_location=device)
    cfg = CDREDConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    env = make(cfg.task, cfg.obs, seed=cfg.seed + 10_000)
    agent = CDREDAgent(cfg, env.observation_space.shape[0], env.action_space.shape[0], device=device)
    agent.load_state_dict(state["agent"])
    torch.manual_seed(cfg.seed)
    result = evaluate(agent, env, episodes, seed=cfg.seed + 10_000 if seed is None else seed)
    click.echo(json.dumps({"checkpoint": str(checkpoint), "step": state["step"], "episodes": episodes, **result}))


@main.command()
@click.argument("task")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@click.option("--episodes", type=int, default=100, show_default=True)
@click.option("--successful-only", is_flag=True, help="Keep only episodes that succeed at some step.")
@click.option("--seed", type=int, default=0, show_default=True)
def collect(task, out, episodes, successful_only, seed) -> None:
    """Record demonstrations of TASK from its scripted expert (Meta-World)."""
    from .data import collect as collect_demos
    from .envs import make, scripted_policy

    try:
        policy = scripted_policy(task)
        env = make(task, seed=seed)
    except (ValueError, KeyError) as exc:
        raise click.BadParameter(str(exc), param_hint="TASK") from exc
    demos = collect_demos(env, policy, episodes, successful_only=successful_only, seed=seed)
    path = demos.save(out)
    rate = float(demos.success.mean()) if len(demos.success) else 0.0
    click.echo(f"wrote {demos.num_episodes} episodes ({demos.num_transitions} transitions) of {task} to {path}; success {rate:.2f}")


@main.command()
def tasks() -> None:
    """List the registered tasks."""
    from .envs import TASKS

    for name, spec in TASKS.items():
        click.echo(f"{name:<22} {spec.suite:<10} {spec.episode_length} steps x repeat {spec.action_repeat}{'  (paper)' if spec.paper else ''}")


if __name__ == "__main__":
    main()
