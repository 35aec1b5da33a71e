"""One checkpoint of `cdred-fast train` acting three ways over the run's evaluation episodes
(the same initial states as its evaluations): MPPI with eval_mode=True (what `cdred-fast eval`
does), MPPI with eval_mode=False (as in training episodes: exploration noise), or the policy
prior's mean alone. Prints one JSON line.

Usage: python results/acting_modes.py RUN_DIR/checkpoint.pt {eval,explore,prior} [--episodes 20]
(results/main-job.md, seed 7).
"""

import argparse
import json

import torch

from cdred_fast.checkpoint import agent_from_checkpoint, config_from_checkpoint, load_checkpoint
from cdred_fast.collect import AgentPolicy, collect
from cdred_fast.data import summary
from cdred_fast.trainer import EVAL_SEED_OFFSET, make_env


class PriorPolicy:
    """The policy prior's mean ``tanh(mu)`` as a :func:`collect` policy (no planning)."""

    def __init__(self, agent):
        self.agent = agent

    @torch.no_grad()
    def __call__(self, obs):
        z = self.agent.model.encode(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1))
        return self.agent.model.pi(z)[0][0].numpy()


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
    policy = PriorPolicy(agent) if args.mode == "prior" else AgentPolicy(agent, eval_mode=args.mode == "eval")
    # episode i is reset with seed0 + i, as the run's evaluations are
    episodes = collect(env, policy, args.episodes, seed=seed0, task=cfg.task)
    stats = summary(episodes)
    result = {"checkpoint": args.checkpoint, "mode": args.mode, "step": state["step"], "episodes": args.episodes}
    result.update(episode_return=stats["return_mean"], success=stats["success_last"])
    result.update(success_any=stats["success_rate"], last_step_success=episodes.success_last.astype(float).tolist())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
