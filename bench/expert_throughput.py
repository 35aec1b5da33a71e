"""Training throughput of `cdred-fast expert train TASK` after its seeding phase (environment steps/s).

    python bench/expert_throughput.py cheetah-run                  # SPEC default sizes, torch's threads
    python bench/expert_throughput.py dog-stand num_threads=1 --seconds 90
    python bench/expert_throughput.py cheetah-run num_threads=1 latent_dim=64 ...   # any key=value override

The config is built as `cdred-fast expert train TASK [key=value ...]` builds it (defaults <- the
overrides <- task=TASK method=tdmpc2), and the Trainer that command runs is constructed with it
(same environment, agent, replay buffer and thread setting). One episode of uniform random actions
fills the buffer (the seeding phase, timed apart), then the loop of a training step after seeding
runs for --seconds: the agent plans an action (MPPI), the environment steps, one update on a batch
sampled from the buffer (the Trainer's own `_update`); episodes go to the buffer when they end. The
first --warmup steps are not timed.

What is left out, and why: the CLI's evaluations (the "before" one alone is 500 MPPI plans, minutes
at the SPEC sizes on a CPU), the burst of `seed_steps` updates that ends seeding (2,500 at the
default; each costs what one update costs here), train.csv rows (one per 500-step episode) and
checkpoints. So the figure is the steady-state rate of a long run, without its evaluations:
`eval_episodes x 500` planning steps every `eval_freq` steps (5,000 per 50,000 at the defaults),
each costing about `act_ms`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for `cdred-fast expert train`")
    parser.add_argument("--seconds", type=float, default=120.0, help="timed seconds after seeding")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after seeding")
    args = parser.parse_args()

    from cdred_fast.cli import build_config
    from cdred_fast.trainer import Trainer

    cfg = build_config(None, None, (*args.overrides, f"task={args.task}", "method=tdmpc2"))
    with tempfile.TemporaryDirectory() as work_dir:
        trainer = Trainer(cfg, work_dir, progress=False, tensorboard=False, save_interval_s=None)
        try:
            result = measure(trainer, args.seconds, args.warmup)
        finally:
            trainer.env.close()
            trainer.eval_env.close()
    print(json.dumps(result))


def measure(trainer, seconds: float, warmup: int) -> dict:
    cfg, env, agent, buffer, rng = trainer.cfg, trainer.env, trainer.agent, trainer.buffer, trainer.rng

    def run_episode_step(state, act):
        obs, ep = state
        t = len(ep["act"])
        action = act(obs, t)
        obs, reward, terminated, truncated, _ = env.step(action)
        ep["obs"].append(obs)
        ep["act"].append(action)
        ep["rew"].append(float(reward))
        if terminated or truncated:
            buffer.add_episode(np.stack(ep["obs"]), np.stack(ep["act"]), np.asarray(ep["rew"], np.float32))
            obs, _ = env.reset(seed=cfg.seed * 1_000_003 + buffer.num_episodes)
            ep = {"obs": [obs], "act": [], "rew": []}
        return obs, ep

    obs, _ = env.reset(seed=cfg.seed * 1_000_003)
    state = (obs, {"obs": [obs], "act": [], "rew": []})
    random_action = lambda obs, t: rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)  # noqa: E731
    start = time.perf_counter()
    while buffer.num_episodes == 0:  # seeding: one episode of random actions
        state = run_episode_step(state, random_action)
    seed_s = time.perf_counter() - start
    seed_steps = trainer.episode_length

    timings = {"act": 0.0, "env": 0.0, "update": 0.0}

    def planned_action(obs, t):
        t0 = time.perf_counter()
        action = agent.act(obs, t0=t == 0).numpy()
        timings["act"] += time.perf_counter() - t0
        return action

    steps, timed_steps, start = 0, 0, None
    while start is None or time.perf_counter() - start < seconds:
        if steps == warmup:
            timings = dict.fromkeys(timings, 0.0)
            start = time.perf_counter()
        t0 = time.perf_counter()
        state = run_episode_step(state, planned_action)
        t1 = time.perf_counter()
        trainer._update()  # one update per step after seeding, as in Trainer._run
        t2 = time.perf_counter()
        if start is not None:
            timings["env"] += t1 - t0  # the environment step and buffer bookkeeping (act subtracted below)
            timings["update"] += t2 - t1
            timed_steps += 1
        steps += 1
    elapsed = time.perf_counter() - start
    timings["env"] -= timings["act"]
    return {
        "task": cfg.task,
        "num_threads": torch.get_num_threads(),
        "obs_dim": int(env.observation_space.shape[0]),
        "action_dim": int(env.action_space.shape[0]),
        "sizes": {k: getattr(cfg, k) for k in ("latent_dim", "enc_dim", "mlp_dim", "num_q", "batch_size", "horizon")},
        "plan": {"num_samples": cfg.num_samples, "iterations": cfg.iterations_for(env.action_space.shape[0])},
        "seeding_steps_per_s": round(seed_steps / seed_s, 1),
        "timed_steps": timed_steps,
        "timed_s": round(elapsed, 1),
        "steps_per_s": round(timed_steps / elapsed, 3),
        "act_ms": round(1e3 * timings["act"] / timed_steps, 1),
        "update_ms": round(1e3 * timings["update"] / timed_steps, 1),
        "env_ms": round(1e3 * timings["env"] / timed_steps, 2),
    }


if __name__ == "__main__":
    main()
