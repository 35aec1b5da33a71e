"""Values shared by the test modules and the benchmarks: the devices to run on and a tiny model config.

A module of its own: ``conftest`` is not a unique module name when bench/ and
python_tests/ are collected in one run, so test modules must not import from it.
bench/bench_utils.py imports the device helpers from here (pytest puts python_tests/
on the path: ``pythonpath`` in pyproject.toml).
"""

import os

import numpy as np
import pytest
import torch

from cdred_fast import ops
from cdred_fast._lib import EMULATION_LIBRARY_ENV, cpuinfo_value


def cuda_skip_reason(need_kernels: bool = True) -> str:
    """Why the CUDA tests (or benchmarks) cannot run here, or ``""`` when they can.

    They need a visible CUDA device and, unless ``need_kernels`` is False (cases that run the
    reference ops only), an extension that runs the fused ops on CUDA (a build made without
    nvcc, or against a CPU-only torch, has CPU kernels only, and kernels="fused" would then
    run the reference); the reason says which one is missing, in the words of
    :func:`cdred_fast.ops.fused_unavailable_reason`.
    """
    if not torch.cuda.is_available():
        return "CUDA skipped: no CUDA device is visible (torch.cuda.is_available() is False)"
    missing = ops.fused_unavailable_reason("cuda") if need_kernels else ""
    return f"CUDA skipped: a CUDA device is visible but {missing}" if missing else ""


CUDA_SKIP_REASON = cuda_skip_reason()
HAS_CUDA = not CUDA_SKIP_REASON
# Tests that need CUDA are marked ``@pytest.mark.cuda``; python_tests/conftest.py skips them
# with CUDA_SKIP_REASON. ``needs_cuda`` is the same skip as an explicit marker.
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON or "CUDA is available")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])]

# Set in the child processes of test_cuda_emulation.py, whose op library runs every op's CUDA
# kernels on CPU tensors (tools/cuda_emu): tests of what only the CPU path of a front does
# are skipped there.
CUDA_EMULATION = bool(os.environ.get(EMULATION_LIBRARY_ENV))
cpu_path_only = pytest.mark.skipif(
    CUDA_EMULATION, reason="checks the CPU path of an op's front; the CUDA emulator's build takes the CUDA path"
)


# A small CDRED model for unit and parity tests of the model parts, the planner and the methods
# (each test adds its planning search and kernels).
SMALL_MODEL = dict(
    latent_dim=16,
    enc_dim=16,
    mlp_dim=32,
    rnd_dim=8,
    rnd_target_hidden=(16, 16),
    rnd_predictor_hidden=(32, 32, 32),
    num_targets=3,
    episode_length=100,
    # IEEE float32 products: the tolerances of the numeric comparisons assume them, and the default
    # "auto" is bfloat16 products on an AMX CPU (test_agent.py tests "auto" on its own)
    matmul_precision="highest",
)

# A tiny CDRED model for end-to-end tests: every part of the method, sizes that run in
# milliseconds on one CPU thread.
TINY = dict(
    latent_dim=16,
    enc_dim=32,
    mlp_dim=32,
    num_bins=11,
    num_targets=3,
    rnd_dim=8,
    rnd_target_hidden=(16, 16),
    rnd_predictor_hidden=(16, 16),
    batch_size=8,
    num_samples=16,
    num_elites=4,
    num_pi_trajs=2,
    iterations=2,
    matmul_precision="highest",  # as SMALL_MODEL
)


# State-observation environments of every suite (test_envs.py, test_maniskill2.py).
def check_state_env(env, obs_dim: int, act_dim: int):
    """float32 Box spaces (observations ``[obs_dim]``, actions ``[act_dim]`` in [-1, 1]) and a
    reset that gives such an observation with ``success`` False. Returns ``(obs, info)``."""
    assert env.observation_space.shape == (obs_dim,) and env.observation_space.dtype == np.float32
    space = env.action_space
    assert space.shape == (act_dim,) and space.dtype == np.float32
    assert np.all(space.low == -1.0) and np.all(space.high == 1.0)
    obs, info = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,) and info["success"] is False
    return obs, info


def check_step_output(out, obs_dim: int) -> None:
    """One ``env.step`` result: a finite float32 observation ``[obs_dim]``, a finite float reward,
    bool terminated / truncated, a bool ``success``."""
    obs, reward, terminated, truncated, info = out
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.shape == (obs_dim,)
    assert np.all(np.isfinite(obs))
    assert isinstance(reward, float) and np.isfinite(reward)
    assert type(terminated) is bool and type(truncated) is bool
    assert type(info["success"]) is bool


# Reduced-precision float32 matrix products on the CPU (torch.set_float32_matmul_precision).
BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits: |round(x) - x| <= 2**-8 |x|


def cpu_bf16_features() -> str:
    """What this CPU offers for bf16 products, for messages: the /proc/cpuinfo flags (Linux), torch's
    AMX probe where this torch has it, and ATen's CPU capability."""
    flags = set(cpuinfo_value("flags").split())
    found = [name for name in ("avx512_bf16", "amx_bf16", "amx_tile") if name in flags] or ["no bf16 flags"]
    amx = getattr(torch._C._cpu, "_is_amx_tile_supported", None)
    if amx is not None:
        found.append(f"torch AMX tiles: {amx()}")
    return ", ".join(found) + f"; ATen CPU capability {torch.backends.cpu.get_cpu_capability()}"


# End-to-end runs: the cdred-fast command and the CSV logs of a run.
def run_cli(*args, cwd):
    """``python -m cdred_fast.cli ARGS`` in ``cwd`` (one thread, as in-process tests), its CompletedProcess."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cdred_fast.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def csv_rows(path):
    """The rows of a CSV log (train.csv, eval.csv) as dicts of strings."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tiny_overrides():
    """:data:`TINY` as ``key=value`` command-line overrides."""
    return [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY.items()]
