"""Videos (cdred_fast.video): frames of real simulators, evaluation GIFs (save_video) that change
nothing else, the `cdred-fast video` command, and ManiSkill2's refusal."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageSequence
from testing_utils import TINY

from cdred_fast import CDREDConfig
from cdred_fast.checkpoint import load_checkpoint
from cdred_fast.cli import main
from cdred_fast.envs import make
from cdred_fast.errors import ConfigError
from cdred_fast.trainer import Trainer
from cdred_fast.video import FrameRenderer, render_frame, save_gif, side_by_side

FRAME_MS = 40  # save_gif's delay at the default 25 fps


def _gif(path):
    """(frames as RGB arrays, delays in ms) of a GIF, decoded with Pillow."""
    with Image.open(path) as im:
        assert im.format == "GIF"
        frames, delays = [], []
        for frame in ImageSequence.Iterator(im):
            frames.append(np.asarray(frame.convert("RGB")))
            delays.append(frame.info["duration"])
    return frames, delays


def _mujoco_state(model, data):
    return [
        np.array(x, copy=True)
        for x in (data.qpos, data.qvel, data.act, data.ctrl, data.qacc_warmstart, data.xpos, [data.time])
    ] + [model.vis.global_.offwidth, model.vis.global_.offheight, model.vis.quality.offsamples]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- frames
def test_metaworld_frames_follow_the_state_and_do_not_change_it():
    env = make("mw-reach", seed=0)
    try:
        env.reset(seed=3)
        sim = env.unwrapped.mujoco_env
        with FrameRenderer(env) as render:
            before = _mujoco_state(sim.model, sim.data)
            first = render()
            assert _same(before, _mujoco_state(sim.model, sim.data)), "rendering changed the simulation"
            assert first.shape == (160, 160, 3) and first.dtype == np.uint8
            assert len(np.unique(first.reshape(-1, 3), axis=0)) > 50, "a frame of (nearly) one colour"
            np.testing.assert_array_equal(render(), first)  # same state, same frame
            for _ in range(10):
                env.step(np.array([1.0, -1.0, 1.0, 0.0], np.float32))
            moved = render()
        assert np.abs(moved.astype(int) - first).mean() > 1.0, "the frame does not follow the arm"
        small = render_frame(env, size=48, camera="topview")
        assert small.shape == (48, 48, 3)
        with pytest.raises(ValueError, match="corner3"):
            render_frame(env, camera="nope")
    finally:
        env.close()


def test_dmcontrol_frames_state_and_pixels_leave_the_observations_alone():
    env = make("cheetah-run", seed=0)
    try:
        env.reset(seed=1)
        frame = render_frame(env)
        assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8 and frame.std() > 5
    finally:
        env.close()

    def pixel_run(record):
        env = make("cheetah-run", "rgb", seed=0, image_size=64)
        model = env.unwrapped.physics.model.ptr
        try:
            render = FrameRenderer(env, size=96) if record else None
            obs, _ = env.reset(seed=2)
            out, frames = [obs], []
            for t in range(5):
                if render is not None:
                    frames.append(render())
                obs, *_ = env.step(np.full(6, 0.5 if t % 2 else -0.5, np.float32))
                out.append(obs)
            assert (model.vis.global_.offwidth, model.vis.global_.offheight) == (64, 64)
            if render is not None:
                render.close()
            return out, frames
        finally:
            env.close()

    plain, _ = pixel_run(False)
    recorded, frames = pixel_run(True)
    assert frames[0].shape == (96, 96, 3) and not np.array_equal(frames[0], frames[-1])
    for a, b in zip(plain, recorded):
        np.testing.assert_array_equal(a, b)  # the 64x64 pixel observations are untouched


def test_save_gif_and_side_by_side(tmp_path):
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(4)]
    b = [rng.integers(0, 255, (30, 50, 3), dtype=np.uint8) for _ in range(2)]
    both = side_by_side(a, b, labels=["agent\nreturn 1.0", "expert"])
    assert len(both) == 4 and both[0].shape[1] == 100 and both[0].shape[0] > 40
    np.testing.assert_array_equal(both[3][-40:, 50:][:30], b[-1])  # the shorter one repeats its last frame
    assert len(side_by_side(a, b)) == 4 and side_by_side(a, b)[0].shape == (40, 100, 3)
    path = save_gif(both, tmp_path / "sub" / "x.gif")
    frames, delays = _gif(path)
    assert len(frames) == 4 and frames[0].shape == both[0].shape and delays == [FRAME_MS] * 4
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.gif"]  # no temporary left
    with pytest.raises(ValueError, match="uint8"):
        save_gif([np.zeros((4, 4, 3), np.float32)], tmp_path / "y.gif")


# --------------------------------------------------------------------------- save_video, `cdred-fast video`
def _cfg(**over):
    base = dict(TINY, task="mw-reach", steps=100, seed_steps=100, eval_freq=100, eval_episodes=2, num_demos=1)
    return CDREDConfig(**{**base, **over})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny Meta-World runs (evaluations at steps 0 and 100), without and with save_video."""
    tmp = tmp_path_factory.mktemp("video")
    for name, save_video in (("plain", False), ("video", True)):
        Trainer(_cfg(save_video=save_video), tmp / name, progress=False, tensorboard=False).train()
    return tmp


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_save_video_records_the_first_evaluation_episode_and_changes_nothing(runs):
    plain, video = runs / "plain", runs / "video"
    keys = ("step", "episode_return", "success", "success_any")
    assert [[r[k] for k in keys] for r in _rows(plain / "eval.csv")] == [
        [r[k] for k in keys] for r in _rows(video / "eval.csv")
    ]
    a, b = load_checkpoint(plain / "checkpoint.pt"), load_checkpoint(video / "checkpoint.pt")
    for k, v in a["agent"]["model"].items():
        torch.testing.assert_close(v, b["agent"]["model"][k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(a["rng"]["torch"], b["rng"]["torch"], rtol=0, atol=0)
    assert not (plain / "videos").exists()
    assert sorted(p.name for p in (video / "videos").iterdir()) == ["eval_00000000.gif", "eval_00000100.gif"]
    frames, delays = _gif(video / "videos" / "eval_00000100.gif")
    assert len(frames) == 100 + 1  # the reset frame, then one per step of the 100-step episode
    assert frames[0].shape == (160, 160, 3) and sum(delays) == 101 * FRAME_MS
    # save_video may be switched on or off on resume (nothing else but steps may change)
    Trainer(_cfg(save_video=False), video, resume=True, progress=False, tensorboard=False)


def test_video_command_agent_beside_the_expert(runs, tmp_path):
    out = tmp_path / "vs.gif"
    result = CliRunner().invoke(main, ["video", str(runs / "video"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("agent  (step 100) episode 0 (seed 10001): return ")
    assert lines[1].startswith("expert (scripted) episode 0 (seed 10001): return ")
    assert "success at the last step: " in lines[1] and lines[2].startswith(f"wrote {out}")
    frames, delays = _gif(out)
    assert frames[0].shape[1] == 2 * 160 and frames[0].shape[0] > 160  # two panels, labels above
    assert sum(delays) == 101 * FRAME_MS
    # the agent's episode is the first one `cdred-fast eval` plays
    result = CliRunner().invoke(main, ["eval", str(runs / "video" / "checkpoint.pt"), "--episodes", "1"])
    assert f"return {json.loads(result.stdout)['episode_return']:.1f}," in lines[0]

    result = CliRunner().invoke(main, ["video", str(runs / "video"), "--no-expert", "--size", "64"])
    assert result.exit_code == 0, result.output
    frames, _ = _gif(runs / "video" / "final.gif")
    assert frames[0].shape == (64, 64, 3)


def test_maniskill2_videos_are_refused_before_anything_runs(runs, tmp_path):
    with pytest.raises(ValueError, match="save_video must be False: the ManiSkill2 task 'ms2-pick-cube'"):
        CDREDConfig(task="ms2-pick-cube", save_video=True)
    cfg = CDREDConfig(task="ms2-lift-cube")
    cfg.save_video = True  # set after validation: the trainer checks again, before making an environment
    with pytest.raises(ConfigError, match="ms2-lift-cube"):
        Trainer(cfg, tmp_path / "ms2", progress=False)
    assert not (tmp_path / "ms2").exists()

    state = torch.load(runs / "plain" / "checkpoint.pt", weights_only=True)
    state["config"]["task"] = "ms2-pick-cube"
    (tmp_path / "run").mkdir()
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    result = CliRunner().invoke(main, ["video", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: cannot make a video of ") and "'ms2-pick-cube' cannot be rendered" in (
        result.stderr
    )
