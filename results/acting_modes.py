"""One checkpoint of `cdred-fast train` acting three ways over the run's evaluation episodes
(the same initial states as its evaluations): MPPI with eval_mode=True (what `cdred-fast eval`
does), MPPI with eval_mode=False (as in training episodes: exploration noise), or the policy
prior's mean alone. Prints one JSON line.

Usage: python results/acting_modes.py RUN_DIR/checkpoint.pt {eval,explore,prior} [--episodes 20]
(results/main-job.md, seed 7).
"""

import argparse
import json

import numpy as np
import torch

from cdred_fast.checkpoint import agent_from_checkpoint, config_from_checkpoint, load_checkpoint
from cdred_fast.trainer import EVAL_SEED_OFFSET, make_env


def act(agent, obs, mode: str, t0: bool) -> torch.Tensor:
    if mode == "prior":
        with torch.no_grad():
            z = agent.model.encode(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1))
            return agent.model.pi(z)[0][0]  # tanh(mu)
    return agent.act(obs, t0=t0, eval_mode=mode == "eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("mode", choices=["eval", "explore", "prior"])
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args()
    state = load_checkpoint(args.checkpoint, map_location="cpu")
    cfg = config_from_checkpoint(state)
    seed0 = cfg.seed + EVAL_SEED_OFFSET
    env = make_env(cfg, seed=seed0)
    agent = agent_from_checkpoint(state, env, device="cpu")
    torch.manual_seed(cfg.seed)
    returns, last, anywhere = [], [], []
    for i in range(args.episodes):
        obs, _ = env.reset(seed=seed0 + i)
        done, t, total, succeeded, info = False, 0, 0.0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(agent, obs, args.mode, t == 0).numpy())
            total += float(reward)
            succeeded = succeeded or bool(info.get("success", False))
            done, t = terminated or truncated, t + 1
        returns.append(total)
        last.append(float(bool(info.get("success", False))))
        anywhere.append(float(succeeded))
    result = {"checkpoint": args.checkpoint, "mode": args.mode, "step": state["step"], "episodes": args.episodes}
    result.update(episode_return=float(np.mean(returns)), success=float(np.mean(last)))
    result.update(success_any=float(np.mean(anywhere)), last_step_success=last)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
