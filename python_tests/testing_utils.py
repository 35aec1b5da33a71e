"""Values shared by the test modules: the devices to test on and a tiny model config.

A module of its own: ``conftest`` is not a unique module name when bench/ and
python_tests/ are collected in one run, so test modules must not import from it.
"""

import numpy as np
import pytest
import torch

CUDA_SKIP_REASON = "CUDA kernels need a CUDA device; none is visible here (torch.cuda.is_available() is False)"

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)]),
]


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
