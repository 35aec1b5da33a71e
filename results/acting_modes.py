"""One checkpoint acting three ways over a run's evaluation episodes (the same initial states
as its evaluations): MPPI with eval_mode=True (what `cdred-fast eval` does), MPPI with
eval_mode=False (as in training episodes: exploration noise), or the policy prior's mean
alone. Prints one JSON line.

Usage: python results/acting_modes.py RUN_DIR/checkpoint.pt {eval,explore,prior}
       [--episodes 20] [--states OTHER_RUN/checkpoint.pt] [--judge JUDGE_RUN/checkpoint.pt]
       [--per-episode]

* ``--states``: act on the evaluation episodes of another run (its seed) instead of the
  checkpoint's own.
* ``--per-episode``: also each episode's last-step success, the door handle's start and end
  position and the hand's end position (Meta-World observation entries 4-6 and 0-2), and the
  mean CDRED reward per step of the episode under the reward model of ``--judge`` (default: the
  acting checkpoint's own).

(results/main-job.md, seed 7.)
"""

import argparse
import json

import numpy as np
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


@torch.no_grad()
def mean_reward(model, episode: dict) -> float:
    """The mean CDRED reward ``R(z_t, a_t)`` per step of one episode under ``model``."""
    obs, act = torch.as_tensor(episode["obs"]), torch.as_tensor(episode["action"])
    return float(model.reward_model(torch.cat([model.encode(obs), act], dim=-1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("mode", choices=["eval", "explore", "prior"])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--states", help="act on this run's evaluation episodes (its checkpoint)")
    parser.add_argument("--judge", help="the checkpoint whose reward model scores the episodes")
    parser.add_argument("--per-episode", action="store_true")
    args = parser.parse_args()
    state = load_checkpoint(args.checkpoint, map_location="cpu")
    cfg = config_from_checkpoint(state)
    states_cfg = config_from_checkpoint(load_checkpoint(args.states, map_location="cpu")) if args.states else cfg
    if states_cfg.task != cfg.task:
        raise ValueError(f"--states is a run of {states_cfg.task!r}, the checkpoint of {cfg.task!r}")
    seed0 = states_cfg.seed + EVAL_SEED_OFFSET
    env = make_env(states_cfg, seed=seed0)
    agent = agent_from_checkpoint(state, env, device="cpu")
    torch.manual_seed(cfg.seed)
    policy = PriorPolicy(agent) if args.mode == "prior" else AgentPolicy(agent, eval_mode=args.mode == "eval")
    # episode i is reset with seed0 + i, as the run's evaluations are
    episodes = collect(env, policy, args.episodes, seed=seed0, task=cfg.task)
    stats = summary(episodes)
    result = {"checkpoint": args.checkpoint, "mode": args.mode, "step": state["step"], "episodes": args.episodes}
    result.update(states=args.states or args.checkpoint)
    result.update(episode_return=stats["return_mean"], success=stats["success_last"])
    result.update(success_any=stats["success_rate"], last_step_success=episodes.success_last.astype(float).tolist())
    if args.per_episode:
        judge = agent
        if args.judge:
            judge = agent_from_checkpoint(load_checkpoint(args.judge, map_location="cpu"), env, device="cpu")
        judge.model.eval()
        result["judge"] = args.judge or args.checkpoint
        result["per_episode"] = [
            {
                "success_last": float(ep["success_last"]),
                "handle_start": np.round(ep["obs"][0, 4:7], 3).tolist(),
                "handle_end": np.round(ep["next_obs"][-1, 4:7], 3).tolist(),
                "hand_end": np.round(ep["next_obs"][-1, 0:3], 3).tolist(),
                "cdred_reward_mean": round(mean_reward(judge.model, ep), 4),
            }
            for ep in episodes.episodes()
        ]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
