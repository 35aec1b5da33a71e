"""One small CUDA case per op family, for compute-sanitizer (scripts/gpu_check.sh).

Usage: python tools/gpu_cases.py FAMILY [--device cuda|cpu]   (FAMILY: reward, rnd, block, mppi, all)

Each case calls the fused op on the GPU at a size that is not a multiple of any
block size, compares it with the pure-PyTorch reference of cdred_fast.reference,
and exits non-zero on a mismatch. ``--device cpu`` runs the same cases on the CPU
kernels (python_tests/test_build.py does, so the cases stay correct between GPU runs). Under ``compute-sanitizer --tool memcheck`` or
``--tool racecheck`` the sanitizer adds its own verdict on every kernel launched.
"""

from __future__ import annotations

import sys

import torch

from cdred_fast import reference as ref

OPS = torch.ops.cdred_fast


def _close(name: str, got, want, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    print(f"ok {name}")


def case_reward(dev: str) -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    K, N, D = 5, 37, 9
    targets = torch.randn(K, N, D, generator=g).to(dev)
    pe, pb = torch.randn(N, D, generator=g).to(dev), torch.randn(N, D, generator=g).to(dev)
    _close("moment_bonus", OPS.moment_bonus(pe, targets, 0.9, 1e-8), ref.moment_bonus(pe, targets, 0.9, 1e-8))
    want = ref.cdred_reward(pe, pb, targets, 0.9, 0.5, 1.0, "linear", 1e-8)
    _close("cdred_reward", OPS.cdred_reward(pe, pb, targets, 0.9, 0.5, 1.0, "linear", 1e-8), want)


def _mlp_params(E: int, sizes: list[int], dev: str):
    g = torch.Generator(device="cpu").manual_seed(1)
    w = [torch.randn(E, o, i, generator=g).div(i**0.5).to(dev) for i, o in zip(sizes[:-1], sizes[1:])]
    b = [torch.randn(E, o, generator=g).mul(0.1).to(dev) for o in sizes[1:]]
    lw = [torch.rand(E, o, generator=g).add(0.5).to(dev) for o in sizes[1:-1]]
    lb = [torch.randn(E, o, generator=g).mul(0.1).to(dev) for o in sizes[1:-1]]
    return w, b, lw, lb


def case_rnd(dev: str) -> None:
    E, N = 3, 45
    w, b, lw, lb = _mlp_params(E, [11, 33, 17, 7], dev)
    x = torch.randn(N, 11, generator=torch.Generator().manual_seed(2)).to(dev)
    _close("ensemble_mlp", OPS.ensemble_mlp(x, w, b, lw, lb, 1e-5, None), ref.ensemble_mlp(x, w, b, lw, lb, 1e-5))
    targets = ref.ensemble_mlp(x, w, b, lw, lb, 1e-5)
    pe = torch.randn(N, 7, generator=torch.Generator().manual_seed(3)).to(dev)
    pb = torch.randn(N, 7, generator=torch.Generator().manual_seed(4)).to(dev)
    want = ref.cdred_reward(pe, pb, targets, 0.9, 0.5, 1.0, "linear", 1e-8)
    got = OPS.ensemble_reward(x, w, b, lw, lb, 1e-5, pe, pb, 0.9, 0.5, 1.0, "linear", 1e-8, None)
    _close("ensemble_reward", got.reshape(want.shape), want)
    # the bfloat16 planning form (float32 inside the row kernel), against the reference's bfloat16
    # steps within bfloat16's bound (python_tests/test_bf16_planning.py)
    h = [[t.bfloat16() for t in group] for group in (w, b, lw, lb)]
    want = ref.ensemble_mlp(x.bfloat16(), *h, 1e-5).float()
    got = OPS.ensemble_mlp(x.bfloat16(), *h, 1e-5, None).float()
    bound = 2.0**-5 * (want.abs().max().item() + 1.0)
    _close("ensemble_mlp bfloat16", got, want, atol=bound, rtol=0.0)


def case_block(dev: str) -> None:
    g = torch.Generator().manual_seed(5)
    E, M, D = 2, 67, 45
    x = torch.randn(E, M, D, generator=g).to(dev).requires_grad_(True)
    gamma = torch.rand(E, D, generator=g).add(0.5).to(dev)
    beta = torch.randn(E, D, generator=g).to(dev)
    y, mean, rstd = OPS.layernorm_mish(x.detach(), gamma, beta, 1e-5)
    y_ref, mean_ref, rstd_ref = ref.layernorm_mish(x, gamma, beta, 1e-5)
    _close("layernorm_mish", y, y_ref)
    gy = torch.randn(E, M, D, generator=g).to(dev)
    gx, _, _ = OPS.layernorm_mish_backward(gy, x.detach(), mean, rstd, gamma, beta)
    (gx_ref,) = torch.autograd.grad(y_ref, x, gy)
    _close("layernorm_mish_backward", gx, gx_ref)


def case_mppi(dev: str) -> None:
    B, H, N, A, k = 2, 3, 77, 5, 9
    mean = torch.zeros(B, H, A, device=dev)
    std = torch.full((B, H, A), 0.5, device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(6)
    actions = OPS.mppi_sample(mean, std, N, gen)
    gen.manual_seed(6)
    _close("mppi_sample", actions, ref.mppi_sample(mean, std, N, gen))
    values = torch.randn(B, N, generator=torch.Generator().manual_seed(7)).to(dev)
    values[:, :4] = 1.5  # ties
    got = OPS.mppi_elite_update(values, actions, k, 0.5, 0.05, 2.0)
    want = ref.mppi_elite_update(values, actions, k, 0.5, 0.05, 2.0)
    for name, a, b in zip(("mean", "std", "elite_actions", "elite_weights", "elite_values"), got, want):
        _close(f"mppi_elite_update.{name}", a, b)
    gen.manual_seed(8)
    action = OPS.mppi_select(got[2], got[3], got[1], False, gen)
    gen.manual_seed(8)
    _close("mppi_select", action, ref.mppi_select(want[2], want[3], want[1], False, gen))


CASES = {"reward": case_reward, "rnd": case_rnd, "block": case_block, "mppi": case_mppi}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=[*CASES, "all"])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    import cdred_fast

    info = cdred_fast.build_info()
    if not info["extension_loaded"]:
        print(f"gpu_cases: the extension is not loaded: {info['load_error']}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not (torch.cuda.is_available() and info["cuda_kernels"]):
        print(
            f"gpu_cases: needs a GPU and the CUDA kernels (cuda available: {torch.cuda.is_available()}, "
            f"cuda_kernels: {info['cuda_kernels']})",
            file=sys.stderr,
        )
        return 2
    for name in CASES if args.family == "all" else [args.family]:
        CASES[name](args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
