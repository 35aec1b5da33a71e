"""ManiSkill2 adapter (state observations): ``ms2-pick-cube``, ``ms2-lift-cube``, ``ms2-turn-faucet``.

The paper's ManiSkill2 tasks with TD-MPC2's settings: ``PickCube-v0`` and
``LiftCube-v0`` with the ``pd_ee_delta_pos`` controller (4-d actions: end-effector
translation and gripper), ``TurnFaucet-v0`` with ``pd_ee_delta_pose`` (7-d: translation,
rotation, gripper); ``obs_mode="state"`` (PickCube 51, LiftCube 42 numbers);
**100 agent steps with action repeat 2** (= 200 ManiSkill2 control steps at 20 Hz,
each 25 physics steps at 500 Hz).

The simulator runs in its own process and Python environment
------------------------------------------------------------
``mani-skill2==0.5.3`` needs ``sapien==2.2.2``, whose compiled module (built with a
pybind11 that predates numpy 2 support) is *binary*-incompatible with numpy 2, which the rest of this
package (torch, scipy, ...) uses. Under numpy 2 it does not fail loudly: with
numpy 2.4.6, ``Articulation.get_qpos()`` returns zeros after ``set_qpos``,
``Pose([1, 2, 3]).to_transformation_matrix()`` returns a permuted rotation, and the
end-effector controllers' inverse kinematics (``PinocchioModel``) segfault on the first
``step``. No Python-level shim can repair that (it is the array layout the bindings
read), and mani-skill2 itself pins ``numpy<1.24``. So the simulator lives in a separate
environment, the *ManiSkill2 interpreter* (numpy 1.23.5, gymnasium 0.29.1: versions of
ManiSkill2 0.5.3's time), and :class:`ManiSkill2Env` talks to one worker process per
environment (:mod:`._maniskill2_worker`) over a socket, exchanging plain values and
float64 bytes (a request round trip takes ~30 us here, a control step 2-5 ms). Only
this module's standard-library, numpy and gymnasium code runs in your process. The
interpreter is

* ``$CDRED_FAST_MS2_PYTHON`` if set (any Python 3.8-3.11 with ``mani-skill2==0.5.3``
  installed, e.g. an existing ManiSkill2 environment), else
* ``$XDG_CACHE_HOME/cdred_fast/maniskill2-venv/bin/python`` (``~/.cache/...`` by
  default), the virtual environment ``scripts/setup.sh`` creates (sapien 2.2.2 has
  wheels for CPython 3.7-3.11 only, so setup picks such an interpreter).

Renderer: ``renderer="auto" | "none" | "sapien"``
-------------------------------------------------
ManiSkill2 0.5.3 creates a SAPIEN Vulkan renderer (plus cameras and lights) even for
state observations, and stops with "Cannot find a suitable rendering device" where no
GPU Vulkan driver exists (Mesa's CPU driver, lavapipe, is refused; with no driver at
all, SAPIEN creates a renderer that logs "Vulkan is incompatible with your driver" and
crashes once it is used).

* ``"none"`` - **state-only mode**: the physics without a renderer. Exactly these
  things change: no renderer object is created (the SAPIEN engine has none); visual
  shapes are not created (SAPIEN drops them when the engine has no renderer; the
  ground is added with ``render=False`` and the cube of Pick/LiftCube with its collision
  box only, because both would first ask the renderer for a material); no cameras and
  no lights are set up; ``render()`` raises. Collision shapes, masses, joints, drives,
  controllers and every random draw are the same, and state observations are computed
  from the physics only (joint positions/velocities, link and object poses, goals), so
  they do not depend on the renderer. (Visual shapes and cameras carry no mass or
  collision in SAPIEN.) The test ``test_state_only_matches_the_renderer`` (it needs a
  machine that can render) checks that both modes give the same observations for the
  same seeds and actions. On the CPU machines a partial check was made by hand: with
  SAPIEN's renderer object, all visual shapes and render materials present (no cameras
  or lights, which crash without a device), PickCube and LiftCube gave bit-identical
  observations and rewards to state-only mode over 3 x 200 control steps.
* ``"sapien"`` - ManiSkill2's normal mode (offscreen SAPIEN renderer); a clear
  ``RuntimeError`` where no Vulkan device can render.
* ``"auto"`` (default) - ``"sapien"`` if a probe process manages to render one frame
  with SAPIEN, else ``"none"``. Decided once per process (and interpreter) and logged
  once (logger ``cdred_fast.envs.maniskill2``: a warning when it falls back).

``envs.make(task, renderer=...)`` takes the option; where ``make`` is called for you
(``cdred-fast train``, the trainer), set ``CDRED_FAST_MS2_RENDERER=auto|none|sapien``.

Assets (``ms2-turn-faucet``)
----------------------------
TurnFaucet loads PartNet-Mobility faucet models, which ManiSkill2 does not ship. The
asset folder is ``asset_dir=`` if given, else ``$MS2_ASSET_DIR`` (the variable
ManiSkill2 reads itself, ``mani_skill2.ASSET_DIR``), else ManiSkill2's default ``data``
in the working directory; the models must be in ``<asset folder>/partnet_mobility/
dataset/<model id>/mobility_cvx.urdf`` (all 60 ``TurnFaucet-v0`` training models). If
any is missing, a ``FileNotFoundError`` gives the exact download command
(``MS2_ASSET_DIR=<folder> <python> -m mani_skill2.utils.download_asset
partnet_mobility_faucet -y``) and the folder the files must end up in. Pick/LiftCube
need no downloaded assets.

Episodes, rewards, success, seeds
---------------------------------
* Every episode is 100 agent steps (200 control steps), ended by the
  :class:`~.wrappers.TimeLimit` wrapper with ``truncated=True``, as for Meta-World.
  ManiSkill2 signals success as ``terminated``; the adapter reports it in
  ``info["success"]`` and keeps the episode going (``terminated`` is always False), so
  all episodes have the paper's fixed length. ManiSkill2's own 200-step ``TimeLimit``
  is not used (the environment classes are built directly).
* ``info["success"]`` is ManiSkill2's success flag after the *last* control step of
  each repeated action; the other ``evaluate()`` entries (``is_obj_placed``,
  ``is_robot_static``, ``angle_dist``, ...) and ``elapsed_steps`` (control steps) are
  passed through.
* Reward: ManiSkill2's ``"dense"`` reward (the default of mani-skill2 0.4.1, which
  TD-MPC2 used; 0.5.3 defaults to ``"normalized_dense"`` = dense / its maximum),
  summed over the repeat. CDRED learns its own reward; this one is logged.
* Seeding: ``make(seed=s)`` makes the first ``reset()`` call ManiSkill2's
  ``reset(seed=s)``; later ``reset()`` calls draw each episode's seed from ManiSkill2's
  generator seeded by ``s``, and ``reset(seed=t)`` restarts that stream from ``t``.
  The initial cube pose, goal and robot joint noise come from that stream.

Scripted experts
----------------
:func:`scripted_policy` gives a simple grasp-and-carry controller for ``ms2-pick-cube``
and ``ms2-lift-cube`` (so ``cdred-fast collect`` works for them); TurnFaucet has none.
ManiSkill2's own demonstrations (``python -m mani_skill2.utils.download_demo``) are
the alternative; they need converting to this package's ``.npz`` format.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import tempfile
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ._maniskill2_worker import PICKLE_PROTOCOL, PROBE_MARKER

__all__ = [
    "ManiSkill2Env",
    "scripted_policy",
    "ManiSkill2Unavailable",
    "RENDERERS",
    "available",
    "default_python",
    "maniskill2_python",
    "rendering_device_available",
    "resolve_asset_dir",
]

logger = logging.getLogger(__name__)

RENDERERS = ("auto", "none", "sapien")
PYTHON_ENV = "CDRED_FAST_MS2_PYTHON"
RENDERER_ENV = "CDRED_FAST_MS2_RENDERER"
ASSET_DIR_ENV = "MS2_ASSET_DIR"  # what ManiSkill2 itself reads (mani_skill2/__init__.py)
WORKER = Path(__file__).with_name("_maniskill2_worker.py")


class _PlainValues(pickle.Unpickler):
    """The worker's messages are plain values (str, numbers, bytes, lists, tuples, dicts, None),
    which need no class: any reference to a class or function is refused, so a reply can never
    import or call anything in this process."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"ManiSkill2 worker message refers to {module}.{name}; only plain values are allowed"
        )


def _plain_loads(data: bytes):
    return _PlainValues(io.BytesIO(data)).load()


STARTUP_TIMEOUT_S = 300.0

_available_cache: dict[str, tuple[bool, str]] = {}
_render_cache: dict[str, tuple[bool, str]] = {}
_auto_choice: dict[str, str] = {}


class ManiSkill2Unavailable(RuntimeError):
    """No usable ManiSkill2 interpreter (see the module docstring)."""


# --------------------------------------------------------------------------- the interpreter
def default_python() -> Path:
    """Where ``scripts/setup.sh`` puts the ManiSkill2 interpreter."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "cdred_fast" / "maniskill2-venv" / "bin" / "python"


_INSTALL_HINT = (
    "Create it with `bash scripts/setup.sh` (CDRED_FAST_EXTRAS=all, the default), or by hand:\n"
    "    python3.11 -m venv {venv}\n"
    "    {venv}/bin/python -m pip install mani-skill2==0.5.3 sapien==2.2.2 numpy==1.23.5 gymnasium==0.29.1 'setuptools<82'\n"
    "(plus the system library libvulkan1), or point {env} at the python of an existing "
    "ManiSkill2 0.5.3 environment."
)


def maniskill2_python() -> str:
    """The ManiSkill2 interpreter: ``$CDRED_FAST_MS2_PYTHON`` or :func:`default_python`.

    Raises:
        ManiSkill2Unavailable: it does not exist.
    """
    explicit = os.environ.get(PYTHON_ENV)
    path = Path(explicit) if explicit else default_python()
    if not path.exists():
        where = f"{PYTHON_ENV}={explicit}" if explicit else f"the default {path} ({PYTHON_ENV} is not set)"
        venv = default_python().parent.parent
        raise ManiSkill2Unavailable(
            f"ManiSkill2 tasks need a separate Python environment with mani-skill2 0.5.3 (it needs numpy<1.24; "
            f"see cdred_fast/envs/maniskill2.py); there is no interpreter at {where}. "
            + _INSTALL_HINT.format(venv=venv, env=PYTHON_ENV)
        )
    return str(path)


def available() -> tuple[bool, str]:
    """Whether the ManiSkill2 interpreter exists and imports ``mani_skill2.envs``: ``(ok, reason)``.

    Cached per interpreter for the life of the process.
    """
    try:
        python = maniskill2_python()
    except ManiSkill2Unavailable as exc:
        return False, str(exc)
    if python not in _available_cache:
        code = "import mani_skill2.envs, sapien.core, numpy; print(numpy.__version__)"
        try:
            proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _available_cache[python] = (False, f"{python} could not run: {exc}")
        else:
            if proc.returncode == 0:
                _available_cache[python] = (True, f"{python} (numpy {proc.stdout.strip()})")
            else:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                _available_cache[python] = (False, f"{python} cannot import mani_skill2: {tail}")
    return _available_cache[python]


def rendering_device_available(python: str | None = None) -> tuple[bool, str]:
    """Whether SAPIEN can render here: ``(ok, reason)``.

    A probe process renders one 16x16 frame with ``SapienRenderer(offscreen_only=True)``
    (creating the renderer alone is not proof: without any Vulkan driver SAPIEN creates
    one that crashes once a camera is used). Cached per interpreter.
    """
    python = python or maniskill2_python()
    if python not in _render_cache:
        try:
            proc = subprocess.run(
                [python, str(WORKER), "probe"], capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            result = (False, f"the rendering probe could not run: {exc}")
        else:
            lines = [l for l in proc.stdout.splitlines() if l.startswith(PROBE_MARKER)]
            if lines:
                found = json.loads(lines[-1][len(PROBE_MARKER) :])
                result = (bool(found["available"]), str(found["reason"]))
            else:
                result = (False, f"the rendering probe crashed ({_exit_status(proc.returncode)})")
        _render_cache[python] = result
    return _render_cache[python]


def _resolve_renderer(renderer: str | None, python: str) -> str:
    """``"none"`` or ``"sapien"`` for the requested ``renderer`` (``None``: ``$CDRED_FAST_MS2_RENDERER`` or auto)."""
    source = "renderer"
    if renderer is None:
        renderer = os.environ.get(RENDERER_ENV) or "auto"
        source = RENDERER_ENV
    if renderer not in RENDERERS:
        raise ValueError(f"{source}={renderer!r}: expected one of {', '.join(map(repr, RENDERERS))}")
    if renderer == "none":
        return "none"
    ok, reason = rendering_device_available(python)
    if renderer == "sapien":
        if not ok:
            raise RuntimeError(
                f"renderer='sapien' needs a Vulkan device SAPIEN can render with, and there is none here ({reason}). "
                f"Use renderer='none' (state-only: same state observations, no rendering) or 'auto'."
            )
        return "sapien"
    if python not in _auto_choice:
        _auto_choice[python] = "sapien" if ok else "none"
        if ok:
            logger.info("ManiSkill2: using the SAPIEN renderer (%s)", reason)
        else:
            logger.warning(
                "ManiSkill2: no Vulkan rendering device (%s); running in state-only mode (renderer='none'): "
                "the physics without a renderer, the same state observations, no rendering",
                reason,
            )
    return _auto_choice[python]


def resolve_asset_dir(asset_dir: str | os.PathLike | None = None) -> str:
    """The asset folder, absolute: ``asset_dir``, else ``$MS2_ASSET_DIR``, else ManiSkill2's default ``data``."""
    if asset_dir is None:
        asset_dir = os.environ.get(ASSET_DIR_ENV) or "data"
    return os.path.abspath(os.path.expanduser(os.fspath(asset_dir)))


# --------------------------------------------------------------------------- the environment
class ManiSkill2Env(gym.Env):
    """One ManiSkill2 environment (state observations) in a worker process, one control step per ``step``.

    Args:
        env_id: the ManiSkill2 id, e.g. ``"PickCube-v0"``.
        control_mode: e.g. ``"pd_ee_delta_pos"``.
        seed: the first ``reset()`` uses it (see the module docstring); seeds the action space.
        renderer: ``"auto"``, ``"none"`` (state-only) or ``"sapien"``; ``None`` reads
            ``$CDRED_FAST_MS2_RENDERER`` (default ``"auto"``).
        asset_dir: the ManiSkill2 asset folder (TurnFaucet only); ``None``: ``$MS2_ASSET_DIR`` or ``data``.
        reward_mode: ManiSkill2's reward mode (``"dense"``).
        model_ids: TurnFaucet only: the faucet models to use (default: all 60 training models).

    Attributes:
        renderer: ``"none"`` or ``"sapien"``, what runs.
        versions: the worker's mani_skill2, sapien, numpy and Python versions.

    Raises:
        ManiSkill2Unavailable: no ManiSkill2 interpreter.
        FileNotFoundError: TurnFaucet assets missing (the message says what to download and where).
        RuntimeError: ``renderer="sapien"`` without a rendering device; the worker failed.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        env_id: str,
        control_mode: str,
        seed: int | None = 0,
        *,
        renderer: str | None = None,
        asset_dir: str | os.PathLike | None = None,
        reward_mode: str = "dense",
        model_ids: list[str] | None = None,
    ):
        self.env_id, self.control_mode, self.reward_mode = env_id, control_mode, reward_mode
        self._conn: Connection | None = None
        self._proc: subprocess.Popen | None = None
        python = maniskill2_python()
        self.renderer = _resolve_renderer(renderer, python)
        self.asset_dir = resolve_asset_dir(asset_dir)
        self._start_worker(python)
        try:
            spec = self._call(
                "make",
                env_id,
                control_mode,
                reward_mode,
                self.renderer,
                self.asset_dir,
                None if model_ids is None else [str(m) for m in model_ids],
            )
        except BaseException:
            self.close()
            raise
        self.sim_freq, self.control_freq = spec["sim_freq"], spec["control_freq"]
        self.observation_space = spaces.Box(-np.inf, np.inf, (spec["obs_dim"],), np.float64)
        low = np.asarray(spec["action_low"], np.float32)
        high = np.asarray(spec["action_high"], np.float32)
        self.action_space = spaces.Box(low, high, low.shape, np.float32)
        self._pending_seed = None if seed is None else int(seed)
        if seed is not None:
            self.action_space.seed(int(seed))
        self._needs_reset = True

    # ------------------------------------------------------------------ worker plumbing
    def _start_worker(self, python: str) -> None:
        parent, child = socket.socketpair()
        self._log = tempfile.TemporaryFile()
        env = dict(os.environ)
        env[ASSET_DIR_ENV] = self.asset_dir
        try:
            self._proc = subprocess.Popen(
                [python, "-u", str(WORKER), "serve", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                env=env,
            )
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._finalizer = weakref.finalize(self, _shutdown, self._conn, self._proc, self._log)
        if not self._conn.poll(STARTUP_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"the ManiSkill2 worker ({python}) did not start within {STARTUP_TIMEOUT_S:.0f} s")
        try:
            self.versions = self._receive("start")
        except RuntimeError as exc:
            self.close()
            raise ManiSkill2Unavailable(
                f"the ManiSkill2 interpreter {python} cannot run the simulator: {exc}"
            ) from None

    def _call(self, name: str, *args):
        if self._conn is None:
            raise RuntimeError("this ManiSkill2 environment is closed")
        try:
            self._conn.send_bytes(pickle.dumps((name, *args), protocol=PICKLE_PROTOCOL))
        except OSError:
            pass  # the worker is gone; _receive reports why
        return self._receive(name)

    def _receive(self, name: str):
        try:
            reply = _plain_loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            raise RuntimeError(self._died(name)) from None
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, trace = reply
        if kind == "FileNotFoundError":
            raise FileNotFoundError(message)
        if kind in ("ValueError", "KeyError"):
            raise ValueError(message)
        raise RuntimeError(
            f"ManiSkill2 {name} failed in the worker: {kind}: {message}\n--- worker traceback ---\n{trace}"
        )

    def _died(self, name: str) -> str:
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self._log.seek(0)
        tail = self._log.read()[-4000:].decode(errors="replace").strip()
        self._conn = None
        return (
            f"the ManiSkill2 worker process stopped during {name!r} ({_exit_status(code)}); "
            f"its output:\n{tail or '(none)'}"
        )

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(int(seed))
        else:
            seed = self._pending_seed
        self._pending_seed = None
        obs, info = self._call("reset", None if seed is None else int(seed), options)
        self._needs_reset = False
        info = dict(info)
        info["success"] = bool(info.get("success", False))
        return np.frombuffer(obs, dtype="<f8").copy(), info

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        arr = np.asarray(action, dtype="<f8").reshape(-1)
        obs, reward, _terminated_on_success, truncated, info = self._call("step", arr.tobytes())
        info = dict(info)
        info["success"] = bool(info.get("success", False))
        if truncated:
            self._needs_reset = True
        # ManiSkill2's terminated means "success"; episodes keep their fixed length (module docstring).
        return np.frombuffer(obs, dtype="<f8").copy(), float(reward), False, bool(truncated), info

    @property
    def elapsed_steps(self) -> int:
        """ManiSkill2's control steps in the current episode (asked from the simulator)."""
        return int(self._call("elapsed_steps"))

    def close(self):
        if self._conn is not None:
            self._finalizer()
            self._conn = None


def _shutdown(conn: Connection, proc: subprocess.Popen, log) -> None:
    """Ask the worker to stop, then make sure it has (runs at close(), garbage collection or exit)."""
    try:
        conn.send_bytes(pickle.dumps(("close",), protocol=PICKLE_PROTOCOL))
        if conn.poll(10):
            conn.recv_bytes()
    except (OSError, EOFError):
        pass
    finally:
        conn.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# --------------------------------------------------------------------------- scripted experts
# Indices in the state observation (ManiSkill2's flatten order): agent qpos 0:9 (fingers 7, 8),
# qvel 9:18, base pose 18:25; extra: tcp pose 25:32 (position, quaternion wxyz), then
# PickCube: goal 32:35, tcp->goal 35:38, cube pose 38:45, ...; LiftCube: cube pose 32:39, ...
_CUBE_POSITION = {"ms2-pick-cube": 38, "ms2-lift-cube": 32}
_LIFT_HEIGHT = 0.3  # LiftCube succeeds above 0.22 m (cube bottom 0.2 m off the table)


def scripted_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """A scripted expert for ``ms2-pick-cube`` / ``ms2-lift-cube``: ``obs -> action``.

    Stateless rules on the state observation: above the cube with the gripper open,
    down to it, close, and once the fingers have stopped on the cube, carry it to the
    goal (PickCube) or up to 0.3 m (LiftCube), moving the hand by the *cube's* error
    (the cube sits a few millimetres off the hand's centre; steering the hand instead
    made it chase the cube it carried across the table on LiftCube until ManiSkill2's
    robot-static check, part of success, failed). The ``pd_ee_delta_pos`` controller
    moves the hand in its own frame (``frame="ee"``, +-0.1 m per control step at
    |a| = 1), so the wanted world displacement is rotated into it. Measured success at
    the last step of 100-step episodes, reset seeds 1000-1049 / 2000-2049: LiftCube
    1.00 / 1.00, PickCube 1.00 / 0.98 (the failure: a goal 0.51 m up, out of the arm's
    reach); see docs/environments.md.

    Raises:
        ValueError: no scripted expert for ``task``.
    """
    if task not in _CUBE_POSITION:
        raise ValueError(f"ManiSkill2 scripted experts exist for {', '.join(_CUBE_POSITION)}, not {task!r}")
    cube_at = _CUBE_POSITION[task]
    obs_dim = 51 if task == "ms2-pick-cube" else 42

    def act(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (obs_dim,):
            raise ValueError(f"expected a ({obs_dim},) {task} observation, got shape {obs.shape}")
        tcp, cube = obs[25:28], obs[cube_at : cube_at + 3]
        goal = obs[32:35] if task == "ms2-pick-cube" else np.array([cube[0], cube[1], _LIFT_HEIGHT])
        distance = np.linalg.norm(cube - tcp)
        fingers_still = abs(obs[16]) + abs(obs[17]) < 0.02
        if distance < 0.025 and obs[7] + obs[8] < 0.075 and fingers_still:
            # Holding it (closed on the cube, at any yaw): carry it, moving the hand by the
            # cube's (not the hand's) error, so the hand stops once the cube is there.
            target, grip = tcp + (goal - cube), -1.0
        elif distance < 0.015:
            target, grip = tcp, -1.0  # around it: close
        elif np.linalg.norm(cube[:2] - tcp[:2]) > 0.01:
            target, grip = cube + np.array([0.0, 0.0, 0.06]), 1.0  # above it, open
        else:
            target, grip = cube, 1.0  # down to it
        delta = _quat_to_matrix(obs[28:32]).T @ (target - tcp)
        return np.concatenate([np.clip(delta / 0.1, -1.0, 1.0), [grip]]).astype(np.float32)

    act.__name__ = f"scripted_{task.replace('-', '_')}"
    return act


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion ``(w, x, y, z)`` (SAPIEN's order)."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
