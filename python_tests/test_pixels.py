"""Pixel observations: headless DMControl frames, frame stacking, the pixel encoder with its
random shift, uint8 replay storage, pixel demonstrations rendered from state ones, and a
CDRED run from pixels."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from testing_utils import TINY

from cdred_fast import CDREDConfig, envs
from cdred_fast.buffer import EpisodeBuffer
from cdred_fast.collect import collect, render_pixels
from cdred_fast.data import DemonstrationError, Demonstrations
from cdred_fast.world_model import PixelEncoder, ShiftAug, WorldModel

# the shared tiny model with a pixel latent: latent_dim = num_channels * 4 * 4 at 64x64
PIXEL_TINY = {**TINY, "latent_dim": 64, "num_channels": 4, "batch_size": 4}


# --------------------------------------------------------------------------- environment
def test_dmcontrol_rgb_observations_are_stacked_headless_frames():
    env = envs.make("cartpole-swingup", obs="rgb", seed=4)
    assert os.environ.get("MUJOCO_GL")  # chosen by cdred_fast.envs.dmcontrol unless the user chose
    assert env.observation_space.shape == (9, 64, 64) and env.observation_space.dtype == np.uint8
    assert env.max_episode_steps == 500 and env.obs_type == "rgb"
    state_env = envs.make("cartpole-swingup", seed=4)
    obs, info = env.reset()
    state, _ = state_env.reset()
    assert obs.shape == (9, 64, 64) and obs.dtype == np.uint8
    assert np.array_equal(obs[:3], obs[3:6]) and np.array_equal(obs[3:6], obs[6:])  # reset: 3 copies
    assert obs.std() > 5  # a real picture, not a blank buffer
    np.testing.assert_array_equal(info["state"], state)
    rng = np.random.default_rng(0)
    frames = [obs[6:]]
    for _ in range(4):
        action = rng.uniform(-1, 1, 1).astype(np.float32)
        prev = obs
        obs, reward, terminated, truncated, info = env.step(action)
        state, state_reward, *_ = state_env.step(action)
        np.testing.assert_array_equal(obs[:6], prev[3:])  # oldest frame first, shifted by one
        np.testing.assert_array_equal(info["state"], state)  # the pixels do not change the dynamics
        assert reward == state_reward and not terminated and not truncated
        frames.append(obs[6:])
    assert not np.array_equal(frames[0], frames[-1])  # the cart-pole moved
    # frames are reproducible from the seed
    again = envs.make("cartpole-swingup", obs="rgb", seed=4)
    np.testing.assert_array_equal(again.reset()[0][6:], frames[0])


def test_metaworld_rgb_is_not_implemented():
    with pytest.raises(NotImplementedError, match="DMControl"):
        envs.make("mw-reach", obs="rgb")


# --------------------------------------------------------------------------- encoder
def _grid_sample_shift(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """TD-MPC2's formulation: replicate pad, grid of pixel centres shifted by whole pixels, grid_sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad, dtype=torch.float64)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    grid = base + shifts.view(n, 1, 1, 2).double() * (2.0 / (h + 2 * pad))
    return F.grid_sample(padded.double(), grid, padding_mode="zeros", align_corners=False)


def test_shift_aug_equals_the_grid_sample_formulation():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 9, 64, 64), generator=g, dtype=torch.uint8)
    shifts = torch.randint(0, 7, (40, 2), generator=g)
    aug = ShiftAug(3).train()
    out = aug(x, shifts=shifts)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    ref = _grid_sample_shift(x.double(), shifts, 3)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-6)
    # float images too, and the zero shift (3, 3) is the identity
    torch.testing.assert_close(aug(x.float(), shifts=shifts), out.float(), rtol=0, atol=0)
    assert torch.equal(aug(x[:2], shifts=torch.full((2, 2), 3)), x[:2])
    # random shifts: every one of the 7 x 7 offsets occurs, independently per image
    img = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).expand(2000, 1, 64, 64)
    shifted = aug(img, generator=torch.Generator().manual_seed(1))
    centre = shifted[:, 0, 32, 32].long()  # source pixel of the centre = (32 + dy - 3, 32 + dx - 3)
    offsets = set(zip((centre // 64 - 29).tolist(), (centre % 64 - 29).tolist()))
    assert offsets == {(dy, dx) for dy in range(7) for dx in range(7)}
    # evaluation mode and pad 0: identity
    assert torch.equal(aug.eval()(x), x) and torch.equal(ShiftAug(0).train()(x), x)


def test_pixel_encoder_matches_spec():
    cfg = CDREDConfig(obs="rgb")  # released sizes: 32 channels, latent 512 = 32 * 4 * 4
    enc = PixelEncoder(cfg, (9, 64, 64))
    convs = [m for m in enc.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (9, 32, 7, 2),
        (32, 32, 5, 2),
        (32, 32, 3, 2),
        (32, 32, 3, 1),
    ]
    assert sum(isinstance(m, torch.nn.ReLU) for m in enc.convs) == 3 and enc.shift.pad == 3
    seen = []
    enc.convs[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    obs = torch.full((2, 5, 9, 64, 64), 255, dtype=torch.uint8)
    obs[0] = 0
    enc.eval()
    z = enc(obs)
    assert z.shape == (2, 5, 512)
    assert torch.all(seen[0][:5] == -0.5) and torch.all(seen[0][5:] == 0.5)  # pixels scaled to [-0.5, 0.5]
    torch.testing.assert_close(z.view(2, 5, 64, 8).sum(-1), torch.ones(2, 5, 64))  # SimNorm groups of 8
    # the random shift acts in training mode only
    rand = torch.randint(0, 256, (6, 9, 64, 64), dtype=torch.uint8)
    assert torch.equal(enc(rand), enc(rand))
    enc.train()
    assert not torch.equal(enc(rand), enc(rand))
    with pytest.raises(ValueError, match="9, 64, 64"):
        enc(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


def test_pixel_config_validation():
    with pytest.raises(ValueError, match="latent_dim must be num_channels"):
        CDREDConfig(obs="rgb", latent_dim=16)
    with pytest.raises(ValueError, match="image_size"):
        CDREDConfig(obs="rgb", image_size=16)
    assert CDREDConfig(obs="rgb", **PIXEL_TINY).latent_dim == 64
    m = WorldModel(CDREDConfig(obs="rgb", episode_length=500, **PIXEL_TINY), (9, 64, 64), 2)
    assert m.obs_shape == (9, 64, 64) and m.obs_dim is None


def test_pixel_agent_acts_and_updates():
    from cdred_fast.agent import CDREDAgent

    cfg = CDREDConfig(obs="rgb", episode_length=500, mpc=True, **PIXEL_TINY)
    agent = CDREDAgent(cfg, action_dim=2, obs_shape=(9, 64, 64))
    obs = np.random.default_rng(0).integers(0, 256, (9, 64, 64), dtype=np.uint8)
    a = agent.act(obs, t0=True, eval_mode=True)
    assert a.shape == (2,) and torch.all(a.abs() <= 1)
    g = torch.Generator().manual_seed(0)
    batch = lambda: {
        "obs": torch.randint(0, 256, (4, 4, 9, 64, 64), generator=g, dtype=torch.uint8),
        "action": torch.rand(3, 4, 2, generator=g) * 2 - 1,
    }
    stats = agent.update(batch(), batch())
    assert np.isfinite(stats["total_loss"]) and stats["grad_norm"] > 0
    conv = agent.model.encoder.convs[0].weight
    assert any(conv is p for p in agent.optim.param_groups[0]["params"])  # encoder lr group (x 0.3)
    with pytest.raises(ValueError, match=r"\[H\+1=4, B, 9, 64, 64\]"):
        agent.update({"obs": torch.zeros(4, 4, 9, 32, 32, dtype=torch.uint8), "action": batch()["action"]}, batch())


# --------------------------------------------------------------------------- replay storage
def _stacked_episode(rng, length, k=3):
    """Observations as FrameStack makes them: [T+1, 3k, 8, 8] uint8, overlapping in k - 1 frames."""
    frames = rng.integers(0, 256, (length + 1, 3, 8, 8), dtype=np.uint8)
    padded = np.concatenate([np.repeat(frames[:1], k - 1, 0), frames])
    obs = np.stack([padded[t : t + k].reshape(3 * k, 8, 8) for t in range(length + 1)])
    return obs, rng.uniform(-1, 1, (length, 2)).astype(np.float32), rng.normal(size=length).astype(np.float32)


def test_buffer_stores_each_frame_once_and_rebuilds_the_stacks():
    rng = np.random.default_rng(0)
    episodes = [_stacked_episode(rng, n) for n in (6, 9, 5, 7)]
    buf = EpisodeBuffer(20, (9, 8, 8), 2, frame_stack=3)
    plain = EpisodeBuffer(20, (9, 8, 8), 2)
    for ep in episodes:
        buf.add_episode(*ep)
        plain.add_episode(*ep)
    assert buf.episode_lengths == [5, 7] and buf._obs.shape[1:] == (3, 8, 8) and buf._obs.dtype == torch.uint8
    for b in (buf, plain):
        batch = b.sample(300, 3, generator=torch.Generator().manual_seed(0))
        assert batch["obs"].dtype == torch.uint8 and batch["obs"].shape == (4, 300, 9, 8, 8)
        for i in range(300):  # each sample is a contiguous piece of one stored episode
            obs, act, rew = batch["obs"][:, i].numpy(), batch["action"][:, i].numpy(), batch["reward"][:, i].numpy()
            hits = [
                (e, t)
                for e, (o, a, r) in enumerate(episodes[2:])
                for t in range(len(a) - 2)
                if np.array_equal(o[t : t + 4], obs)
            ]
            assert len(hits) == 1
            e, t = hits[0]
            np.testing.assert_array_equal(act, episodes[2 + e][1][t : t + 3])
            np.testing.assert_array_equal(rew, episodes[2 + e][2][t : t + 3])
    # checkpoint round trip (weights_only) keeps the compact frames
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    state = torch.load(blob, weights_only=True)
    assert state["obs"].shape == (5 + 3 + 7 + 3, 3, 8, 8)  # not 2 * (T + 1) stacks of 3
    other = EpisodeBuffer(20, (9, 8, 8), 2, frame_stack=3)
    other.load_state_dict(state)
    a = buf.sample(64, 2, generator=torch.Generator().manual_seed(3))
    b = other.sample(64, 2, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in ("obs", "action", "reward"))
    # observations that are not frame stacks, float pixels
    obs, act, rew = _stacked_episode(rng, 4)
    obs[2, :3] += 1
    with pytest.raises(ValueError, match="do not share 2 frames"):
        buf.add_episode(obs, act)
    with pytest.raises(TypeError, match="uint8"):
        buf.add_episode(obs.astype(np.float32), act)


def test_pixel_demonstrations_validate_and_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    eps = []
    for n in (5, 3):
        obs, act, rew = _stacked_episode(rng, n)
        obs = np.pad(obs, ((0, 0), (0, 0), (0, 56), (0, 56)))  # [T+1, 9, 64, 64]
        eps.append({"obs": obs[:-1], "next_obs": obs[1:], "action": act, "reward": rew, "seed": 7 + n})
    demos = Demonstrations.from_episodes(eps, task="cartpole-swingup")
    assert demos.obs.dtype == np.uint8 and demos.obs.shape == (8, 9, 64, 64) and demos.is_pixels
    assert demos.obs_shape == (9, 64, 64) and demos.seeds.tolist() == [12, 10]
    back = Demonstrations.load(demos.save(tmp_path / "pix.npz"), task="cartpole-swingup", obs_shape=(9, 64, 64))
    np.testing.assert_array_equal(back.obs, demos.obs)
    np.testing.assert_array_equal(back.next_obs, demos.next_obs)
    assert back.seeds.tolist() == [12, 10]
    with pytest.raises(DemonstrationError, match=r"obs_shape \(9, 64, 64\)"):
        Demonstrations.load(tmp_path / "pix.npz", obs_shape=(5,))
    buf = EpisodeBuffer.from_demonstrations(back, frame_stack=3)
    assert buf.num_transitions == 8 and buf.has_rewards
    bad = dict(eps[0], next_obs=eps[0]["next_obs"].copy())
    bad["next_obs"][1, 0, 0, 0] ^= 1
    with pytest.raises(DemonstrationError, match=r"next_obs\[1\] differs from obs\[2\]"):
        Demonstrations.from_episodes([bad], task="cartpole-swingup")
    with pytest.raises(DemonstrationError, match="must be uint8"):
        Demonstrations.from_episodes(
            [dict(eps[0], obs=eps[0]["obs"] / 255.0, next_obs=eps[0]["next_obs"] / 255.0)], task="t"
        )


# --------------------------------------------------------------------------- rendering demonstrations
def test_render_pixels_replays_state_demonstrations():
    rng = np.random.default_rng(0)
    state_demos = collect(envs.make("reacher-easy", seed=0), lambda o: rng.uniform(-1, 1, 2), episodes=2, seed=21)
    assert state_demos.seeds.tolist() == [21, 22]
    pix = render_pixels(state_demos, "reacher-easy")
    assert pix.obs.shape == (1000, 9, 64, 64) and pix.obs.dtype == np.uint8
    np.testing.assert_array_equal(pix.action, state_demos.action)
    np.testing.assert_array_equal(pix.reward, state_demos.reward)
    assert pix.seeds.tolist() == [21, 22] and pix.episode_lengths.tolist() == [500, 500]
    # the frames are those a pixel environment shows when it replays the episode
    env = envs.make("reacher-easy", obs="rgb", seed=5)
    obs, _ = env.reset(seed=22)
    np.testing.assert_array_equal(obs, pix.obs[500])
    for t in range(3):
        obs = env.step(state_demos.action[500 + t])[0]
    np.testing.assert_array_equal(obs, pix.next_obs[502])
    # without seeds: refused, unless the seed convention is given (and then checked)
    unseeded = Demonstrations.from_episodes(
        [{k: v for k, v in ep.items() if k != "seed"} for ep in state_demos.episodes()], task="reacher-easy"
    )
    with pytest.raises(DemonstrationError, match="record no reset seeds"):
        render_pixels(unseeded)
    with pytest.raises(DemonstrationError, match=r"episode 0 \(reset seed 20\): the replay diverged"):
        render_pixels(unseeded, seed=20)
    assert (
        render_pixels(
            Demonstrations.from_episodes([next(unseeded.episodes())], "reacher-easy"), seed=21
        ).num_transitions
        == 500
    )
    # perturbed actions are caught
    shaky = Demonstrations.from_episodes(list(state_demos.episodes()), "reacher-easy")
    shaky.action[10] = -shaky.action[10]
    with pytest.raises(DemonstrationError, match="after step 10"):
        render_pixels(shaky)


# --------------------------------------------------------------------------- end to end
def test_cdred_learns_from_pixels_end_to_end(tmp_path):
    """cartpole-swingup from 64x64 frames: one pixel demonstration rendered from a state
    one, a tiny model, 600 environment steps (updates from the first finished episode on)."""
    from cdred_fast.checkpoint import load_checkpoint
    from cdred_fast.trainer import Trainer

    rng = np.random.default_rng(0)
    state_demos = collect(envs.make("cartpole-swingup", seed=0), lambda o: rng.uniform(-1, 1, 1), episodes=1, seed=3)
    path = render_pixels(state_demos).save(tmp_path / "pixels.npz")
    cfg = CDREDConfig(
        **PIXEL_TINY,
        task="cartpole-swingup",
        obs="rgb",
        steps=600,
        seed_steps=100,
        eval_freq=600,
        eval_episodes=1,
        mpc=False,  # planning from pixels: test_pixel_agent_acts_and_updates
    )
    trainer = Trainer(cfg, tmp_path / "run", demos=path, progress=False, tensorboard=False, log_freq=100)
    assert trainer.buffer.frame_stack == 3 and trainer.expert_buffer.num_transitions == 500
    result = trainer.train()
    assert result["after"]["step"] == 600
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["config"]["obs"] == "rgb" and state["buffer"]["obs"].dtype == torch.uint8
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "train.csv")))
    assert int(rows[-1]["updates"]) == 100
    for key in ("total_loss", "grad_norm", "reward_expert", "q_gap"):
        assert np.isfinite(float(rows[-1][key])), key
