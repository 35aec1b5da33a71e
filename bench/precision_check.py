"""Speed and accuracy of ``CDREDConfig(matmul_precision="medium")`` against ``"highest"``.

Run from the repository root (after ``bash scripts/setup.sh``), on an otherwise idle machine:

    python bench/precision_check.py [--device cuda]

At the SPEC defaults (A = 6): the median of 3 plans and of 3 updates (B = 256) after one
warm-up each, for both settings from the same weights, seeds and batches; then the relative
difference of 512 sequence values, of the planned action, of every update statistic, and of
every parameter after the 4 updates. The figures in the README came from this script.
"""

import argparse
import time

import torch
from update_batch import update_batch

from cdred_fast import CDREDAgent, CDREDConfig
from cdred_fast.planner import trajectory_value
from cdred_fast.precision import matmul_precision

OBS_DIM, ACT_DIM = 39, 6


def run(precision: str, device: str) -> dict:
    torch.manual_seed(0)
    agent = CDREDAgent(CDREDConfig(episode_length=500, matmul_precision=precision), OBS_DIM, ACT_DIM, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    obs = torch.randn(OBS_DIM, generator=torch.Generator().manual_seed(0))
    agent.act(obs, t0=True)
    plan_times = []
    for _ in range(3):
        t = time.perf_counter()
        action = agent.act(obs, t0=True, generator=torch.Generator(device).manual_seed(1))
        sync()
        plan_times.append(time.perf_counter() - t)
    with torch.no_grad(), agent.model.planning(), matmul_precision(precision):
        z = agent.model.encode(obs.view(1, -1).to(device))
        actions = (torch.rand(3, 512, ACT_DIM, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(device)
        fns = agent.rollout_functions(torch.Generator(device).manual_seed(3))
        values = trajectory_value(fns, z.expand(512, -1), actions, agent.discount)
    H, B = agent.cfg.horizon, agent.cfg.batch_size
    g = torch.Generator().manual_seed(1)
    behavioral, expert = (update_batch(H, B, OBS_DIM, ACT_DIM, g) for _ in range(2))
    torch.manual_seed(9)
    agent.update(behavioral, expert, generator=torch.Generator(device).manual_seed(5))
    update_times = []
    for i in range(3):
        torch.manual_seed(10 + i)
        t = time.perf_counter()
        stats = agent.update(behavioral, expert, generator=torch.Generator(device).manual_seed(6 + i))
        sync()
        update_times.append(time.perf_counter() - t)
    return dict(
        plan=sorted(plan_times)[1],
        update=sorted(update_times)[1],
        action=action,
        values=values.cpu(),
        stats=stats,
        params={k: v.detach().cpu().clone() for k, v in agent.model.state_dict().items() if v.is_floating_point()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    device = parser.parse_args().device
    hi, med = run("highest", device), run("medium", device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"plan   highest {hi['plan']:.3f} s   medium {med['plan']:.3f} s")
    print(f"update highest {hi['update']:.3f} s   medium {med['update']:.3f} s")
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    print(f"sequence values: max relative difference {rel(med['values'], hi['values']):.2e}")
    print(f"planned action: max abs difference {(med['action'] - hi['action']).abs().max().item():.2e}")
    name, worst = max(
        ((k, abs(med["stats"][k] - v) / max(abs(v), 1e-3)) for k, v in hi["stats"].items()), key=lambda kv: kv[1]
    )
    print(f"update statistics: max |difference| / max(|value|, 1e-3) {worst:.2e} ({name})")
    # per network (encoder, dynamics, Qs, ...): max |difference| over its tensors / its largest entry
    nets = sorted({k.split(".")[0] for k in hi["params"]})
    for net in nets:
        keys = [k for k in hi["params"] if k.split(".")[0] == net]
        diff = max((med["params"][k] - hi["params"][k]).abs().max().item() for k in keys)
        scale = max(hi["params"][k].abs().max().item() for k in keys)
        print(f"parameters after 4 updates, {net}: max difference / largest entry {diff / scale:.2e}")


if __name__ == "__main__":
    main()
