"""How far one SPEC-size update in IEEE float32 can go on this CPU (issue 16): its matrix
products' FLOPs and time, what else it spends time on, and two ways of computing the same
products that were tried and measured here (bench/RESULTS.md, session 16):

* ``per-member``: an ensemble's E products as E separate GEMMs instead of one batched GEMM
  (``torch.bmm``), each of them using every thread;
* ``bf16x3``: a float32 product from three bfloat16 products (operands split into a bfloat16
  part and a bfloat16 remainder, the small x small term dropped), computed as ONE product of
  the operands concatenated along K under ``matmul_precision="medium"`` (oneDNN: bfloat16
  operands, float32 accumulation and result); beside it a product of bfloat16 tensors, whose
  result torch rounds to bfloat16 (so it cannot carry the split's precision).

Run from the repository root (after ``bash scripts/setup.sh``), on an otherwise idle machine:

    python bench/update_floor_check.py [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from update_batch import update_batch

from cdred_fast import CDREDAgent, CDREDConfig
from cdred_fast._lib import cpuinfo_value
from cdred_fast.precision import matmul_precision

OBS_DIM, ACT_DIM = 39, 6
PRODUCTS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")
# ensemble products of the SPEC-size update and plan: (members, rows, inputs, outputs)
ENSEMBLE_SHAPES = ((5, 1536, 512, 512), (5, 512, 512, 512), (5, 64, 512, 512), (5, 1536, 512, 101), (5, 1536, 512, 256))
SPLIT_SHAPES = ((1536, 512, 512), (1536, 1024, 1024), (1536, 512, 101))


def median_seconds(fn, *args, rounds: int = 30) -> float:
    """Median seconds of ``fn(*args)`` after three warm-up calls."""
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return sorted(times)[rounds // 2]


def update_profile() -> None:
    """One fused float32 update at the SPEC defaults: median time, FLOPs of its products, their
    time and rate, and the largest other ops (torch.profiler self time, one update)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    agent = CDREDAgent(CDREDConfig(episode_length=500, matmul_precision="highest"), OBS_DIM, ACT_DIM)
    g = torch.Generator().manual_seed(1)
    behavioral, expert = (update_batch(agent.cfg.horizon, agent.cfg.batch_size, OBS_DIM, ACT_DIM, g) for _ in range(2))
    seconds = median_seconds(agent.update, behavioral, expert, rounds=7)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        agent.update(behavioral, expert)
    events = prof.key_averages()
    products = [e for e in events if e.key in PRODUCTS]
    flops = sum(e.flops for e in products)
    product_s = sum(e.self_cpu_time_total for e in products) / 1e6
    total_s = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"one fused float32 update (SPEC defaults, B = 256): median {1e3 * seconds:.0f} ms")
    print(
        f"  under the profiler: {1e3 * total_s:.0f} ms, of which products {1e3 * product_s:.0f} ms "
        f"({flops / 1e9:.1f} GFLOP at {flops / product_s / 1e9:.0f} GFLOP/s), other {1e3 * (total_s - product_s):.0f} ms"
    )
    others = sorted((e for e in events if e.key not in PRODUCTS), key=lambda e: -e.self_cpu_time_total)
    print("  largest other ops: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3:.1f} ms" for e in others[:6]))


def plain_rate() -> None:
    a, b = torch.randn(1536, 512), torch.randn(512, 512)
    with matmul_precision("highest"):
        s = median_seconds(torch.mm, a, b)
    print(f"a plain float32 product 1536 x 512 x 512: {2 * 1536 * 512 * 512 / s / 1e9:.0f} GFLOP/s")


def batched_product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out[e] = a[e] @ b[e]``, one batched GEMM."""
    torch.bmm(a, b, out=out)


def member_products(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out[e] = a[e] @ b[e]``, one GEMM per member."""
    for e in range(a.shape[0]):
        torch.mm(a[e], b[e], out=out[e])


def per_member() -> None:
    """One batched GEMM against E GEMMs, in "highest" and "medium"."""
    for precision in ("highest", "medium"):
        for E, M, K, N in ENSEMBLE_SHAPES:
            a, b = torch.randn(E, M, K), torch.randn(E, K, N)
            out = torch.empty(E, M, N)
            with matmul_precision(precision):
                batched = median_seconds(batched_product, a, b, out)
                members = median_seconds(member_products, a, b, out)
            print(
                f"{precision:7s} E={E} {M} x {K} x {N}: batched {1e3 * batched:.2f} ms, per member "
                f"{1e3 * members:.2f} ms (per member / batched {members / batched:.2f})"
            )


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = hi + lo + O(2^-16 |x|)``, both parts exact in bfloat16, kept in float32."""
    hi = x.bfloat16().float()
    return hi, (x - hi).bfloat16().float()


def split_both(a: torch.Tensor, b: torch.Tensor) -> tuple:
    return split(a), split(b)


def bf16x3() -> None:
    """Rate (float32 FLOPs per second) and largest error relative to the largest |exact| entry."""
    for M, K, N in SPLIT_SHAPES:
        a, b = torch.randn(M, K), torch.randn(K, N)
        exact = a.double() @ b.double()
        flop = 2 * M * K * N

        (ah, al), (bh, bl) = split(a), split(b)
        a3, b3 = torch.cat([ah, ah, al], 1), torch.cat([bh, bl, bh], 0)
        row = []
        for name, precision, x, y in (
            ("float32", "highest", a, b),
            ("medium", "medium", a, b),
            ("bf16x3", "medium", a3, b3),
        ):
            with matmul_precision(precision):
                s = median_seconds(torch.mm, x, y)
                error = float((torch.mm(x, y).double() - exact).abs().max() / exact.abs().max())
                row.append(f"{name} {flop / s / 1e9:.0f} GFLOP/s (error {error:.1e})")
        s = median_seconds(split_both, a, b)
        row.append(f"the split itself {1e3 * s:.2f} ms")
        ab, bb = a.bfloat16(), b.bfloat16()  # torch's CPU bfloat16 product rounds its result to bfloat16
        s = median_seconds(torch.mm, ab, bb)
        row.append(f"bfloat16 operands and result {flop / s / 1e9:.0f} GFLOP/s")
        print(f"{M} x {K} x {N}: " + ", ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{cpuinfo_value('model name') or platform.processor()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    update_profile()
    plain_rate()
    per_member()
    bf16x3()


if __name__ == "__main__":
    main()
