"""Values shared by the test modules: the devices to test on and a tiny model config.

A module of its own: ``conftest`` is not a unique module name when bench/ and
python_tests/ are collected in one run, so test modules must not import from it.
"""

import numpy as np
import pytest
import torch

import cdred_fast


def cuda_skip_reason() -> str:
    """Why the CUDA tests cannot run here, or ``""`` when they can.

    They need both a visible CUDA device and an extension built with CUDA kernels (a build
    made without nvcc, or against a CPU-only torch, has CPU kernels only, and every fused op
    on a CUDA tensor would then fail to dispatch); the reason says which one is missing.
    """
    if not torch.cuda.is_available():
        return "CUDA test skipped: no CUDA device is visible (torch.cuda.is_available() is False)"
    info = cdred_fast.build_info()
    if not info.get("extension_loaded"):
        return f"CUDA test skipped: the cdred_fast extension is not loaded ({info.get('load_error')})"
    if not info.get("cuda_kernels"):
        return (
            "CUDA test skipped: a CUDA device is visible but the cdred_fast extension was built without CUDA "
            "kernels (cdred_fast.build_info()['cuda_kernels'] is False); rebuild it with nvcc and a CUDA torch"
        )
    return ""


CUDA_SKIP_REASON = cuda_skip_reason()
HAS_CUDA = not CUDA_SKIP_REASON
# Tests that need CUDA are marked ``@pytest.mark.cuda``; python_tests/conftest.py skips them
# with CUDA_SKIP_REASON. ``needs_cuda`` is the same skip as an explicit marker.
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON or "CUDA is available")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])]


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
