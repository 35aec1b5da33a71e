"""One update in float32 against ``update_precision="bfloat16-q-rnd"`` at several model sizes:
where rounding the Q ensemble's and reward networks' products pays (issue 16).

Run from the repository root (after ``bash scripts/setup.sh``), on an otherwise idle machine:

    python bench/update_width_check.py [--threads 1 2] [--sizes tdmpc2-128 demo spec ...]

Sizes: ``tdmpc2-128`` the TD-MPC2 agent of results/cpu-gradnorm/expert.yaml (latent 64,
MLPs of 128, batch 64), ``tdmpc2-256`` the same with MLPs of 256; ``demo`` the main job's
CDRED agent (``--preset demo``: MLPs and reward networks of 128 or less, batch 64);
``spec-mlp128`` and ``spec-mlp256`` the SPEC defaults with latent and MLPs of 128 / 256 (the
reward networks and batch 256 of SPEC); ``spec-b64`` the SPEC defaults with batch 64; ``spec``
the SPEC defaults.
Both settings start from the same weights and update on the same batches, in turns (so that a
change in the machine's load hits both); the median after two warm-ups.
``matmul_precision="highest"`` in both: the products that are not rounded are IEEE float32.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from update_batch import update_batch

from cdred_fast import CDREDAgent, CDREDConfig
from cdred_fast.config import PRESETS

OBS_DIM, ACT_DIM = 39, 6
EXPERT = dict(latent_dim=64, enc_dim=128, mlp_dim=128, num_bins=51, batch_size=64, method="tdmpc2")
SIZES = {
    "tdmpc2-128": EXPERT,
    "tdmpc2-256": {**EXPERT, "mlp_dim": 256},
    "demo": dict(PRESETS["demo"]),
    "spec-mlp128": dict(latent_dim=128, mlp_dim=128, enc_dim=256),
    "spec-mlp256": dict(latent_dim=256, mlp_dim=256, enc_dim=256),
    "spec-b64": dict(batch_size=64),
    "spec": {},
}
# small sizes: many short updates; the others: fewer
SMALL = ("tdmpc2-128", "tdmpc2-256", "demo")
SETTINGS = ("float32", "bfloat16-q-rnd")


def median_in_turns(calls: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each of ``calls`` (name -> function of no arguments) over ``rounds``
    calls after two warm-ups, the functions called in turns, so that a change in the machine's
    load hits every one."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds + 2):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return {name: sorted(v[2:])[len(v[2:]) // 2] for name, v in times.items()}


def time_updates(size: str, rounds: int) -> dict[str, float]:
    """Median seconds of one update per setting at ``size``."""
    base = {**SIZES[size], "episode_length": 500, "matmul_precision": "highest"}
    agents = {}
    for setting in SETTINGS:
        torch.manual_seed(0)
        agents[setting] = CDREDAgent(CDREDConfig(**{**base, "update_precision": setting}), OBS_DIM, ACT_DIM)
    cfg = agents[SETTINGS[0]].cfg
    H, B = cfg.horizon, cfg.batch_size
    g = torch.Generator().manual_seed(1)
    env_reward = cfg.method == "tdmpc2"
    behavioral = update_batch(H, B, OBS_DIM, ACT_DIM, g, reward=env_reward)
    expert = None if env_reward else update_batch(H, B, OBS_DIM, ACT_DIM, g)
    return median_in_turns({s: functools.partial(a.update, behavioral, expert) for s, a in agents.items()}, rounds)


def print_grid(threads_list, sizes, rounds, small, small_rounds: int, time_fn, settings) -> None:
    """For each thread count and size, one line: the median seconds of the two ``settings``
    (``time_fn(size, rounds) -> {setting: seconds}``; ``rounds`` None: ``small_rounds`` for the
    ``small`` sizes, 10 for the others) and the first over the second."""
    first, second = settings
    for threads in threads_list:
        torch.set_num_threads(threads)
        for size in sizes:
            t = time_fn(size, rounds or (small_rounds if size in small else 10))
            a, b = t[first], t[second]
            print(
                f"{size:11s} threads={threads}  {first} {1e3 * a:7.1f} ms  {second} {1e3 * b:7.1f} ms  "
                f"{first} / {second} {a / b:.2f}x",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=0, help="updates per setting (0: 38 small, 10 large)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print_grid(args.threads, args.sizes, args.rounds or None, SMALL, 38, time_updates, SETTINGS)


if __name__ == "__main__":
    main()
