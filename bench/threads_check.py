"""Throughput of the demo preset's agent (one act + one update at a time) under a thread setting,
alone or beside one CPU-bound process: how the OpenMP settings behave on a busy machine.

    python bench/threads_check.py                  # this process's settings, alone
    python bench/threads_check.py --busy           # with one `while True: pass` process beside it
    OMP_NUM_THREADS=1 python bench/threads_check.py --busy

OpenMP reads OMP_NUM_THREADS / OMP_WAIT_POLICY when torch loads, so set them in the environment.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import torch
from update_batch import update_batch

from cdred_fast import CDREDAgent, CDREDConfig
from cdred_fast.config import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", action="store_true", help="run one CPU-bound process beside the agent")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    cfg = CDREDConfig(**{**PRESETS["demo"], "episode_length": 100})
    agent = CDREDAgent(cfg, obs_dim=39, action_dim=4)
    obs = np.zeros(39, np.float32)
    g = torch.Generator().manual_seed(0)
    batch = update_batch(cfg.horizon, cfg.batch_size, 39, 4, g)
    for _ in range(3):
        agent.act(obs)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < args.seconds:
            agent.act(obs, t0=n == 0)
            agent.update(batch, batch)
            n += 1
        rate = n / (time.perf_counter() - start)
    finally:
        if busy is not None:
            busy.kill()
    print(f"{'busy' if args.busy else 'alone'}: {rate:.1f} act+update/s with {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
