"""One plan with ``matmul_precision="highest"`` against ``"medium"`` at several model sizes: where
oneDNN's products pay in acting and where their fixed cost per call outweighs them (issue 16).

Run from the repository root (after ``bash scripts/setup.sh``), on an otherwise idle machine:

    python bench/act_width_check.py [--threads 1 2] [--sizes demo spec ...]

Sizes: those of bench/update_width_check.py (the batch size plays no part in a plan) plus
``demo-mlp256``, the main job's agent with MLPs of 256. Every agent plans with MPPI from the
same observation (``act(t0=False)``, after one plan from an episode start), the two settings in
turns so that a change in the machine's load hits both; the median after two warm-ups. On an
Intel Xeon with AMX, ``"medium"`` is bfloat16 products on AMX tiles; on an AMD EPYC Zen 5,
oneDNN's float32 kernels (docs/kernels.md).
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch
from update_width_check import ACT_DIM, OBS_DIM, SIZES, median_in_turns, print_grid

from cdred_fast import CDREDAgent, CDREDConfig
from cdred_fast.precision import medium_is_float32_class

PLAN_SIZES = {
    **{k: v for k, v in SIZES.items() if k != "spec-b64"},
    "demo-mlp256": {**SIZES["demo"], "mlp_dim": 256},
}
# TD-MPC2's expert acts with its policy prior in results/; here it plans, to time its model
PLAN_SIZES = {k: ({**v, "mpc": True} if v.get("method") == "tdmpc2" else v) for k, v in PLAN_SIZES.items()}
SMALL = ("tdmpc2-128", "tdmpc2-256", "demo", "demo-mlp256")
SETTINGS = ("highest", "medium")


def time_plans(size: str, rounds: int) -> dict[str, float]:
    """Median seconds of one plan per setting at ``size``."""
    base = {**PLAN_SIZES[size], "episode_length": 500}
    agents = {}
    for setting in SETTINGS:
        torch.manual_seed(0)
        agents[setting] = CDREDAgent(CDREDConfig(**{**base, "matmul_precision": setting}), OBS_DIM, ACT_DIM)
    obs = np.random.default_rng(0).standard_normal(OBS_DIM).astype(np.float32)
    for agent in agents.values():
        agent.act(obs, t0=True)
    return median_in_turns({s: functools.partial(a.act, obs, t0=False) for s, a in agents.items()}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", choices=sorted(PLAN_SIZES), default=list(PLAN_SIZES))
    parser.add_argument("--rounds", type=int, default=0, help="plans per setting (0: 40 small, 10 large)")
    args = parser.parse_args()
    kind = "float32-class (oneDNN float32)" if medium_is_float32_class() else "bfloat16-rounded"
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}; 'medium' is {kind}")
    print_grid(args.threads, args.sizes, args.rounds or None, SMALL, 40, time_plans, SETTINGS)


if __name__ == "__main__":
    main()
