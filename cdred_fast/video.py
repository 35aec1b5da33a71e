"""Videos of episodes: headless RGB frames of an environment, animated GIFs, side-by-side panels.

* :class:`FrameRenderer` renders ``(size, size, 3)`` uint8 frames of an environment made by
  :func:`cdred_fast.envs.make` (DMControl, state or pixel observations, and Meta-World) from
  the simulator's current state; :func:`render_frame` renders one.
* :func:`record_episode` plays a policy for one episode and records its frames.
* :func:`save_gif` writes frames as an animated GIF (Pillow, atomically); :func:`side_by_side`
  puts two recordings next to each other with a label above each.

``CDREDConfig.save_video`` records the first episode of every evaluation with these
(:func:`cdred_fast.trainer.evaluate`), and ``cdred-fast video RUN_DIR`` plays a run's agent next
to the task's scripted expert.

How frames are rendered
-----------------------
One ``mujoco.Renderer`` of the environment's live ``MjModel`` / ``MjData`` (DMControl:
``physics.model.ptr`` / ``physics.data.ptr``; Meta-World: ``MetaWorldEnv.mujoco_env.model`` /
``.data``) in an OpenGL context of its own. Rendering reads the simulation and changes none of
it: ``mjv_updateScene`` only reads the model and the data, and the model's offscreen framebuffer
size and multisampling (``vis.global_.offwidth`` / ``offheight`` / ``vis.quality.offsamples``; the
pixel observations of DMControl set them to 64 px without multisampling) are changed only while
the video's context is created, and put back right after. The context is created, used and
freed on a private thread, so it is never current on a thread where dm_control renders pixel
observations (with ``DISABLE_RENDER_THREAD_OFFLOADING`` set, dm_control renders on the calling
thread and would otherwise take the video's context for its own). The backend is mujoco's
(``MUJOCO_GL``), which :mod:`cdred_fast.envs.dmcontrol` and :mod:`cdred_fast.envs.metaworld` set to
``egl`` on import unless it is set already.

Frames are rendered with the fast settings of the pixel observations: no shadows, no
multisampling (a 160-pixel Meta-World frame took 12 ms on Mesa's llvmpipe here, 105 ms with
MuJoCo's defaults; the look hardly differs at this size). Cameras:

* DMControl: the environment's camera (TD-MPC2's: 2 for ``quadruped``, 0 otherwise, the
  tracking camera of each domain).
* Meta-World: ``"corner3"`` (:data:`METAWORLD_CAMERA`), turned by 180 degrees (Meta-World's
  ``corner*`` cameras are mounted upside down). It looks at the table from above its far
  corner and shows the whole arm, the table, the objects and the goal of every task; ``corner``
  and ``corner2`` are closer but cut off part of the table, ``topview`` hides the height of
  the gripper.

ManiSkill2 tasks cannot be rendered: their simulator runs in a worker process without a
renderer (:mod:`cdred_fast.envs.maniskill2`); :func:`video_unsupported_reason` says so.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import RenderError

__all__ = [
    "DEFAULT_FPS",
    "METAWORLD_CAMERA",
    "VIDEO_SIZE",
    "VIDEO_SUITES",
    "Episode",
    "FrameRenderer",
    "record_episode",
    "render_frame",
    "save_gif",
    "side_by_side",
    "video_unsupported_reason",
]

VIDEO_SIZE = 160  # side of a video frame in pixels (evaluation videos, `cdred-fast video --size`)
DEFAULT_FPS = 25  # GIF frame rate: 40 ms per agent step
METAWORLD_CAMERA = "corner3"
VIDEO_SUITES = ("dmcontrol", "metaworld")  # the suites whose environments render
_UPSIDE_DOWN = ("corner", "corner2", "corner3", "corner4")  # Meta-World cameras mounted upside down
_SUITE_NAMES = {"dmcontrol": "DMControl", "metaworld": "Meta-World", "maniskill2": "ManiSkill2"}


def video_unsupported_reason(task: str) -> Optional[str]:
    """Why the environments of ``task`` cannot be recorded, or None when they can (DMControl and
    Meta-World tasks, and names that are not registered tasks, which are refused elsewhere)."""
    from .envs.registry import TASKS

    spec = TASKS.get(task)
    if spec is None or spec.suite in VIDEO_SUITES:
        return None
    return (
        f"the {_SUITE_NAMES.get(spec.suite, spec.suite)} task {task!r} cannot be rendered (its simulator runs in "
        "a worker process without a renderer; videos are recorded for DMControl and Meta-World tasks)"
    )


# --------------------------------------------------------------------------- frames
def _scene_of(env, camera):
    """``(model, data, camera, rotate, what)`` of an environment made by ``envs.make``."""
    import mujoco

    from .envs.dmcontrol import DMControlEnv
    from .envs.metaworld import MetaWorldEnv

    base = env.unwrapped
    if isinstance(base, DMControlEnv):
        model, data = base.physics.model.ptr, base.physics.data.ptr
        camera = base.camera_id if camera is None else camera
        what = f"DMControl {base.domain}-{base.task_name}"
    elif isinstance(base, MetaWorldEnv):
        model, data = base.mujoco_env.model, base.mujoco_env.data
        camera = METAWORLD_CAMERA if camera is None else camera
        what = f"Meta-World {base.env_name}"
    else:
        try:
            task = env.get_wrapper_attr("task")
        except AttributeError:
            task = None
        reason = video_unsupported_reason(task) if isinstance(task, str) else None
        raise NotImplementedError(
            reason or f"cannot render {type(base).__name__}: videos are recorded for DMControl and Meta-World tasks"
        )
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    if isinstance(camera, str):
        if camera not in names:
            raise ValueError(f"{what} has no camera {camera!r}; its cameras: {', '.join(map(str, names))}")
        name = camera
    elif isinstance(camera, (int, np.integer)) and not isinstance(camera, bool) and -1 <= camera < model.ncam:
        camera = int(camera)
        name = names[camera] if camera >= 0 else None
    else:
        raise ValueError(f"camera must be a camera name or an id in [-1, {model.ncam}) for {what}, got {camera!r}")
    rotate = isinstance(base, MetaWorldEnv) and name in _UPSIDE_DOWN
    return model, data, camera, rotate, what


class FrameRenderer:
    """Renders frames ``(size, size, 3) uint8`` of ``env``'s current simulator state.

    ``env`` is an environment of :func:`cdred_fast.envs.make` (any wrappers; its ``unwrapped``
    is used), DMControl or Meta-World; ``camera`` (a name or an id) overrides the default camera
    of the module docstring. Call the renderer for a frame; :meth:`close` it (or use it as a
    context manager) to free its OpenGL context. Raises ``NotImplementedError`` for an
    environment that cannot render (ManiSkill2), ``ValueError`` for an unknown camera and
    :class:`~cdred_fast.errors.RenderError` (a ``RuntimeError``) when no offscreen OpenGL context
    can be created.
    """

    def __init__(self, env, size: int = VIDEO_SIZE, camera: int | str | None = None):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = int(size)
        self.model, self.data, self.camera, self._rotate, self.what = _scene_of(env, camera)
        self._renderer = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdred-video")
        try:
            self._renderer = self._pool.submit(self._open).result()
        except BaseException:
            self._pool.shutdown(wait=True)
            self._pool = None
            raise

    def _open(self):
        import mujoco

        vis = self.model.vis
        saved = (vis.global_.offwidth, vis.global_.offheight, vis.quality.offsamples)
        try:
            vis.global_.offwidth = max(saved[0], self.size)
            vis.global_.offheight = max(saved[1], self.size)
            vis.quality.offsamples = 0  # no multisampling (as the pixel observations): 3x faster on a CPU
            renderer = mujoco.Renderer(self.model, self.size, self.size)
        except Exception as exc:
            raise RenderError(
                f"cannot create an offscreen OpenGL context to render {self.what} ({exc}); mujoco's backend is "
                f"{mujoco.GLContext.__module__} (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): set MUJOCO_GL=egl or "
                "osmesa before mujoco is first imported"
            ) from exc
        finally:
            vis.global_.offwidth, vis.global_.offheight, vis.quality.offsamples = saved
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0  # 4-8x faster on a CPU
        return renderer

    def _render(self) -> np.ndarray:
        self._renderer.update_scene(self.data, camera=self.camera)
        frame = self._renderer.render()
        return np.ascontiguousarray(frame[::-1, ::-1] if self._rotate else frame)

    def __call__(self) -> np.ndarray:
        """The current frame, ``(size, size, 3)`` uint8 (a new array)."""
        if self._pool is None:
            raise RuntimeError("this FrameRenderer is closed")
        return self._pool.submit(self._render).result()

    def close(self) -> None:
        """Free the OpenGL context (idempotent)."""
        if self._pool is None:
            return
        try:
            if self._renderer is not None:
                self._pool.submit(self._renderer.close).result()
        finally:
            self._renderer = None
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "FrameRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_frame(env, size: int = VIDEO_SIZE, camera: int | str | None = None) -> np.ndarray:
    """One frame ``(size, size, 3) uint8`` of ``env``'s current state (see :class:`FrameRenderer`,
    which renders many frames faster: it keeps its OpenGL context)."""
    with FrameRenderer(env, size, camera) as renderer:
        return renderer()


@dataclass
class Episode:
    """One recorded episode: ``frames`` (the reset frame, then one per agent step), its return,
    the success flag of its last step and whether any step succeeded."""

    frames: list = field(repr=False)
    episode_return: float
    success: bool
    success_any: bool

    @property
    def length(self) -> int:
        return len(self.frames) - 1


def record_episode(
    env,
    policy: Callable[[np.ndarray], Any],
    seed: Optional[int],
    size: int = VIDEO_SIZE,
    camera: int | str | None = None,
) -> Episode:
    """Play ``policy`` (``obs -> action``) for one episode of ``env`` reset with ``seed`` and record it.

    The policy is driven like :func:`cdred_fast.collect.collect` drives it: its ``reset()`` (if any) is
    called at the start, its ``observe(info)`` (if any, e.g. a ``HoldOnSuccess`` scripted expert) after
    every step. A trained agent acts through :class:`cdred_fast.collect.AgentPolicy`.
    """
    reset_policy, observe = getattr(policy, "reset", None), getattr(policy, "observe", None)
    with FrameRenderer(env, size, camera) as render:
        obs, info = env.reset(seed=seed)
        if callable(reset_policy):
            reset_policy()
        frames, ep_return, succeeded, done = [render()], 0.0, False, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(np.asarray(policy(obs), dtype=np.float32))
            if callable(observe):
                observe(info)
            frames.append(render())
            ep_return += float(reward)
            succeeded = succeeded or bool(info.get("success", False))
            done = terminated or truncated
    return Episode(frames, ep_return, bool(info.get("success", False)), succeeded)


# --------------------------------------------------------------------------- GIFs
def _check_frames(frames: Sequence[np.ndarray], what: str = "frames") -> list[np.ndarray]:
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError(f"{what}: no frames")
    shape = frames[0].shape
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"{what}[{i}]: expected an (H, W, 3) uint8 RGB frame, got {f.dtype} {f.shape}")
        if f.shape != shape:
            raise ValueError(f"{what}[{i}] has shape {f.shape}, frame 0 has {shape}")
    return frames


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = DEFAULT_FPS) -> Path:
    """Write ``frames`` (``(H, W, 3) uint8``, all of one size) as an animated GIF that loops; returns the path.

    Written with :func:`cdred_fast.checkpoint.atomic_write` (the folder is created if needed). Each frame
    gets its own 256-colour palette. GIF stores delays in hundredths of a second and viewers slow
    down delays under 20 ms, so the delay is ``1/fps`` rounded to 10 ms, at least 20 ms (``fps`` <= 50).
    Pillow merges consecutive identical frames into one (their delays add up): the GIF can hold fewer
    frames than given, never a different animation.
    """
    from PIL import Image

    from .checkpoint import atomic_write

    frames = _check_frames(frames)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    delay = max(2, round(100.0 / fps)) * 10
    images = [Image.fromarray(f, "RGB").quantize(256) for f in frames]

    def write(f) -> None:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=delay, loop=0)

    return atomic_write(path, write)


def _label_band(labels: Sequence[str], widths: Sequence[int]) -> np.ndarray:
    """A black band with each label (white, Pillow's default font, lines split at ``\\n``) above its panel."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    height = 0
    for label in labels:
        left, top, right, bottom = probe.multiline_textbbox((0, 0), str(label), font=font, spacing=2)
        height = max(height, bottom)
    band = Image.new("RGB", (int(sum(widths)), int(height) + 6), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    x = 0
    for label, width in zip(labels, widths):
        draw.multiline_text((x + 3, 3), str(label), fill=(255, 255, 255), font=font, spacing=2)
        x += width
    return np.asarray(band, dtype=np.uint8)


def side_by_side(
    frames_a: Sequence[np.ndarray], frames_b: Sequence[np.ndarray], labels: Optional[Sequence[str]] = None
) -> list[np.ndarray]:
    """Frames of two recordings next to each other (``a`` left, ``b`` right), ``(H, Wa + Wb, 3)`` uint8.

    The shorter recording is padded by repeating its last frame; panels of different heights are padded
    with black below. ``labels`` (two strings, ``\\n`` for more lines) are drawn in white on a black
    band above each panel (Pillow's default font); the band adds to the height.
    """
    a, b = _check_frames(frames_a, "frames_a"), _check_frames(frames_b, "frames_b")
    n = max(len(a), len(b))
    a, b = a + [a[-1]] * (n - len(a)), b + [b[-1]] * (n - len(b))
    (ha, wa), (hb, wb) = a[0].shape[:2], b[0].shape[:2]
    h = max(ha, hb)
    band = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != 2:
            raise ValueError(f"labels: one per panel (2), got {len(labels)}")
        band = _label_band(labels, (wa, wb))
    out = []
    for fa, fb in zip(a, b):
        frame = np.zeros((h, wa + wb, 3), np.uint8)
        frame[:ha, :wa] = fa
        frame[:hb, wa:] = fb
        out.append(frame if band is None else np.concatenate([band, frame], axis=0))
    return out
