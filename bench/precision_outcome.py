"""What reduced precision does to what a trained agent *does*, against exact float32.

Run from the repository root on trained runs (checkpoints of ``cdred-fast train``):

    python bench/precision_outcome.py RUN/checkpoint.pt [RUN2/checkpoint.pt ...] \
        [--states 200] [--episodes 20] [--seeds 1 2 3] [--settings medium bf16]

The settings, each against ``highest`` (``matmul_precision="highest"``, float32 reward networks):

* ``medium``: ``matmul_precision="medium"`` (oneDNN's bf16-based float32 products on the CPU);
* ``bf16``: ``planning_precision="bfloat16"``, the CDRED reward networks in bfloat16 while planning.

For each checkpoint:

* **open loop**: the states of evaluation episodes (acting at ``highest``), each planned
  from a fresh warm start with both settings from the same generator state: how far apart
  the two chosen actions are (max over action dimensions), and how many of the first MPPI
  iteration's elites are the same candidates (the candidates of that iteration are the same
  draws for both; the overlap is ``|E_highest & E_setting| / k``). The row ``seed`` is the
  scale to read them on: ``highest`` against itself from another generator state;
* **closed loop**: evaluation return (with its standard error over the episodes) and success
  at the last / any step over ``--episodes`` episodes for each evaluation seed, with each
  setting (the episodes of the agent's own ``evaluate``: ``trainer.evaluate_episodes``); then
  the difference from ``highest`` paired episode by episode (the same initial states), with a
  95 % bootstrap interval over the pairs. Torch's global RNG is seeded before the open-loop
  states and before each evaluation (``1000 * seed``), so a rerun repeats every number and the
  settings act on the same draws. A
  checkpoint trained with ``mpc=False`` acts with its policy prior, which no setting changes;
  ``--plan`` evaluates it with MPPI instead.

It prints one table per checkpoint, with this CPU's capabilities (``build_info()``'s
``cpu_capability``, AVX512-BF16 and AMX). bench/RESULTS.md quotes its output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform

import numpy as np
import torch

import cdred_fast.planner as planner_module
from cdred_fast import build_info
from cdred_fast._lib import cpuinfo_value
from cdred_fast.checkpoint import agent_from_checkpoint, config_from_checkpoint, load_checkpoint
from cdred_fast.precision import matmul_precision
from cdred_fast.report import paired_bootstrap
from cdred_fast.trainer import EVAL_SEED_OFFSET, evaluate_episodes, make_env

# setting -> the config fields it changes (every setting also planning_precision / matmul_precision)
SETTINGS = {
    "highest": dict(matmul_precision="highest", planning_precision="float32"),
    "medium": dict(matmul_precision="medium", planning_precision="float32"),
    "bf16": dict(matmul_precision="highest", planning_precision="bfloat16"),
}


@contextlib.contextmanager
def first_elites(record: list):
    """Record the elite values of every MPPI elite update made inside the block."""
    original = planner_module.ops.mppi_elite_update

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        record.append(out[2].detach().clone())  # elite_actions [B, H, k, A]
        return out

    planner_module.ops.mppi_elite_update = wrapped
    try:
        yield
    finally:
        planner_module.ops.mppi_elite_update = original


def setting_agents(state: dict, env, cfg, settings) -> dict:
    """``{setting: agent}``: the checkpoint's weights in one agent per setting, each built with
    ``cfg`` and that setting's fields. An agent resolves its precisions when it is built (its
    ``act`` does not re-read ``agent.cfg``), so a setting is never switched on a built agent."""
    return {s: agent_from_checkpoint(state, env, cfg=dataclasses.replace(cfg, **SETTINGS[s])) for s in settings}


def plan_once(agent, obs, seed: int):
    """(action, first-iteration elite actions) of one eval-mode plan from a fresh warm start,
    in the precision of ``agent``'s config (a :func:`setting_agents` agent)."""
    record: list = []
    obs_t = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
    with agent.preserve_plan_state(), torch.no_grad(), agent.model.planning():
        with matmul_precision(agent.cfg.matmul_precision), first_elites(record):
            z = agent.model.encode(obs_t)
            action = agent.plan(z, t0=True, eval_mode=True, generator=torch.Generator().manual_seed(seed))
    return action.reshape(-1), record[0].reshape(-1, record[0].shape[-2], record[0].shape[-1])


def elite_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of the elites ``[H, k, A]`` of ``a`` that are also elites of ``b`` (same sequences)."""
    seq_a = a.permute(1, 0, 2).reshape(a.shape[1], -1)
    seq_b = b.permute(1, 0, 2).reshape(b.shape[1], -1)
    same = torch.cdist(seq_a, seq_b) <= 1e-6
    return float(same.any(dim=1).float().mean())


def closed_loop_cell(episodes: list) -> str:
    """``return ± standard error / success last / success any`` of one evaluation's episodes
    (the return and success are the means that ``evaluate`` reports)."""
    ret = np.array([e[0] for e in episodes])
    se = ret.std(ddof=1) / np.sqrt(len(ret)) if len(ret) > 1 else float("nan")
    last, anywhere = (np.mean([float(e[i]) for e in episodes]) for i in (1, 2))
    return f"{ret.mean():.1f} ± {se:.1f} / {last:.2f} / {anywhere:.2f}"


def paired_difference(base: list, other: list, resamples: int = 10_000) -> str:
    """Mean over all episodes of (other - base) in return and in last-step success, the
    episodes paired by their initial state (same evaluation seed and index), with 95 %
    percentile-bootstrap intervals over the pairs (seed 0)."""
    pairs = np.array(
        [[o[0] - b[0], float(o[1]) - float(b[1])] for bs, os_ in zip(base, other) for b, o in zip(bs, os_)]
    )
    lo, hi = paired_bootstrap(pairs, n_resamples=resamples)
    d = pairs.mean(axis=0)
    return (
        f"paired over {len(pairs)} episodes: return {d[0]:+.1f} [{lo[0]:+.1f}, {hi[0]:+.1f}], "
        f"last-step success {d[1]:+.3f} [{lo[1]:+.3f}, {hi[1]:+.3f}]"
    )


def states_of(agent, env, episodes: int, seed: int) -> list:
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, t = False, 0
        while not done:
            out.append(np.asarray(obs, dtype=np.float32))
            obs, _, terminated, truncated, _ = env.step(agent.act(obs, t0=t == 0, eval_mode=True).numpy())
            done, t = terminated or truncated, t + 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--states", type=int, default=200, help="open-loop states (from whole episodes)")
    parser.add_argument("--episodes", type=int, default=20, help="closed-loop episodes per seed and setting")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="closed-loop evaluation seeds")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="evaluate with MPPI planning (mpc=True) even when the checkpoint acts with its policy prior",
    )
    parser.add_argument(
        "--settings", nargs="+", default=["medium", "bf16"], choices=[k for k in SETTINGS if k != "highest"]
    )
    args = parser.parse_args()
    info = build_info()
    print(
        f"machine: {cpuinfo_value('model name') or platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cpu_capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {','.join(info['cpu_native_bf16']) or 'none'}, "
        f"kernels {'fused' if info['cpu_kernels'] else 'reference'}"
    )
    for path in args.checkpoints:
        state = load_checkpoint(path)
        cfg = dataclasses.replace(config_from_checkpoint(state), **SETTINGS["highest"])
        if args.plan:
            cfg = dataclasses.replace(cfg, mpc=True)
        env = make_env(cfg, seed=cfg.seed + EVAL_SEED_OFFSET)
        agents = setting_agents(state, env, cfg, ["highest", *args.settings])
        per_episode = max(1, -(-args.states // cfg.episode_length))
        # torch's global RNG (the agent's own draws while acting) starts from a random seed in
        # each process, so it is seeded here and before each evaluation: reruns repeat exactly
        torch.manual_seed(cfg.seed)
        states = states_of(agents["highest"], env, per_episode, seed=cfg.seed + EVAL_SEED_OFFSET + 500)[: args.states]
        print(f"\n{path} ({cfg.task}, step {state['step']}): open loop over {len(states)} states")
        # "seed": highest precision with another generator state, the planner's own spread to
        # compare the settings with (MPPI's first iteration then starts from other candidates)
        exact = [plan_once(agents["highest"], obs, seed=i) for i, obs in enumerate(states)]
        for setting in ["seed", *args.settings]:
            diffs, overlaps = [], []
            for i, (obs, (a_hi, e_hi)) in enumerate(zip(states, exact)):
                if setting == "seed":
                    a_lo, e_lo = plan_once(agents["highest"], obs, seed=i + 10**6)
                else:
                    a_lo, e_lo = plan_once(agents[setting], obs, seed=i)
                diffs.append(float((a_hi - a_lo).abs().max()))
                overlaps.append(elite_overlap(e_hi, e_lo))
            diffs_np = np.asarray(diffs)
            print(
                f"  {setting}: chosen action, max |highest - {setting}|: median {np.median(diffs_np):.2e}, "
                f"95th pct {np.percentile(diffs_np, 95):.2e}, max {diffs_np.max():.2e}; "
                f"identical in {np.mean(diffs_np == 0):.0%}; "
                + (
                    "(other generator state: MPPI's own spread)"
                    if setting == "seed"
                    else f"first-iteration elites shared: mean {np.mean(overlaps):.3f}, min {np.min(overlaps):.3f}"
                ),
                flush=True,
            )
        print(
            f"  closed loop, {args.episodes} episodes per seed: return (± its standard error) / success last / success any"
        )
        played = {}  # setting -> [seed][episode] -> (return, last, any); episode i of a seed starts alike
        for setting in ["highest", *args.settings]:
            played[setting] = []
            for s in args.seeds:  # every setting acts on the same draws (and initial states) of a seed
                torch.manual_seed(1000 * s)
                played[setting].append(evaluate_episodes(agents[setting], env, args.episodes, seed=1000 * s))
            cells = "  ".join(f"seed {s}: {closed_loop_cell(eps)}" for s, eps in zip(args.seeds, played[setting]))
            print(f"  {setting:>8}: {cells}", flush=True)
        for setting in args.settings:
            print(f"  {setting} - highest, {paired_difference(played['highest'], played[setting])}", flush=True)


if __name__ == "__main__":
    main()
