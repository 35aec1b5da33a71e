"""The ManiSkill2 simulator process (run by :mod:`cdred_fast.envs.maniskill2`, which imports
only its protocol constants).

This file runs under the *ManiSkill2 interpreter*, a separate Python environment
with ``mani-skill2==0.5.3``, ``sapien==2.2.2`` and ``numpy<1.24`` (see the module
docstring of :mod:`cdred_fast.envs.maniskill2` for why). It imports only the
standard library, numpy, sapien and mani_skill2 - never cdred_fast or torch.

Usage (by the adapter only)::

    python _maniskill2_worker.py serve FD     # one environment, requests over socket FD
    python _maniskill2_worker.py probe        # can SAPIEN render here? one JSON line on stdout

Protocol: ``multiprocessing.connection`` messages, pickled with protocol 4 and made
of plain Python values only (str, int, float, bool, bytes, list, dict, None), so the
two processes may run different Python and numpy versions. Observations and actions
travel as little-endian float64 bytes. Every request is answered by
``("ok", value)`` or ``("error", exception class name, message, traceback)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
import types
import warnings
from collections import OrderedDict

# The protocol, shared with the adapter (which imports them from here).
PROBE_MARKER = "CDRED_FAST_MS2_PROBE "  # prefix of the probe's result line on stdout
PICKLE_PROTOCOL = 4


# --------------------------------------------------------------------------- state-only mode
def _state_only_class(env_cls):
    """``env_cls`` (a ManiSkill2 ``BaseEnv`` subclass) running its physics without a renderer.

    What differs from the normal mode (see also the adapter's module docstring):

    * no ``SapienRenderer`` is created: the SAPIEN engine gets no renderer
      (``engine.set_renderer(None)``), and ``self._renderer`` is a placeholder whose
      only accepted call is ``set_log_level``;
    * visual shapes are not created: SAPIEN itself drops ``add_*_visual`` shapes
      when its engine has no renderer; the two ManiSkill2 helpers that first ask the
      renderer for a render material are replaced by the same call without one
      (``_add_ground(render=False)``; ``_build_cube`` adds the same box collision
      shape, with the same default density, and no visual box);
    * no cameras and no lights (``_setup_cameras`` / ``_setup_lighting`` are
      skipped): SAPIEN would crash creating them without a renderer;
    * ``render()`` / ``update_render()`` raise.

    Collision shapes, masses, joints, drives, controllers, seeds and the order of
    every random draw are untouched, and state observations are read from the
    physics (joint positions/velocities and poses), never from the renderer.
    """

    class StateOnly(env_cls):
        def __init__(self, *args, **kwargs):
            with _without_sapien_renderer():
                super().__init__(*args, **kwargs)

        def _add_ground(self, altitude=0.0, render=True):
            return super()._add_ground(altitude=altitude, render=False)

        def _build_cube(self, half_size, color=(1, 0, 0), name="cube", static=False, render_material=None):
            # StationaryManipulationEnv._build_cube without the visual box and its render material.
            builder = self._scene.create_actor_builder()
            builder.add_box_collision(half_size=half_size)
            return builder.build_static(name) if static else builder.build(name)

        def _setup_cameras(self):
            self._cameras = OrderedDict()
            self._render_cameras = OrderedDict()

        def _setup_lighting(self):
            pass

        def update_render(self):
            raise RuntimeError(
                "this ManiSkill2 environment runs in state-only mode (renderer='none'): it cannot render"
            )

        def render(self):
            self.update_render()

    StateOnly.__name__ = StateOnly.__qualname__ = f"StateOnly{env_cls.__name__}"
    return StateOnly


class _NullRenderer:
    """Stands in for ``sapien.SapienRenderer`` in state-only mode."""

    def __init__(self, *args, **kwargs):
        pass

    def set_log_level(self, level):
        pass

    def __getattr__(self, name):
        raise RuntimeError(
            f"state-only mode (renderer='none'): ManiSkill2 called renderer.{name}, which this mode does not provide"
        )


@contextlib.contextmanager
def _without_sapien_renderer():
    """While ManiSkill2's ``BaseEnv.__init__`` runs, let its ``sapien.SapienRenderer()``
    return a :class:`_NullRenderer` and its engine accept that (as "no renderer")."""
    import sapien.core as sapien
    from mani_skill2.envs import sapien_env

    class Engine(sapien.Engine):
        def set_renderer(self, renderer):
            super().set_renderer(None if isinstance(renderer, _NullRenderer) else renderer)

    class SapienWithoutRenderer(types.ModuleType):
        def __getattr__(self, name):
            return getattr(sapien, name)

    proxy = SapienWithoutRenderer("sapien.core")
    proxy.SapienRenderer = _NullRenderer
    proxy.Engine = Engine
    saved = sapien_env.sapien
    sapien_env.sapien = proxy
    try:
        yield
    finally:
        sapien_env.sapien = saved


# --------------------------------------------------------------------------- environments
def _env_class(env_id: str):
    from mani_skill2.utils.registration import REGISTERED_ENVS

    if env_id not in REGISTERED_ENVS:
        raise ValueError(f"ManiSkill2 has no environment {env_id!r}")
    return REGISTERED_ENVS[env_id].cls


def _check_faucet_assets(asset_dir: str, model_ids):
    """Raise FileNotFoundError naming what to download and where, if a faucet model is missing."""
    from mani_skill2 import PACKAGE_ASSET_DIR

    with open(PACKAGE_ASSET_DIR / "partnet_mobility" / "meta" / "info_faucet_train.json") as f:
        all_ids = sorted(json.load(f))
    ids = list(model_ids) if model_ids else all_ids
    root = os.path.join(asset_dir, "partnet_mobility", "dataset")
    missing = [i for i in ids if not os.path.isfile(os.path.join(root, str(i), "mobility_cvx.urdf"))]
    if missing:
        example = os.path.join(root, str(missing[0]), "mobility_cvx.urdf")
        raise FileNotFoundError(
            f"ManiSkill2 TurnFaucet-v0 needs the PartNet-Mobility faucet models (asset group "
            f"'partnet_mobility_faucet', {len(all_ids)} models); {len(missing)} of the {len(ids)} it uses are missing "
            f"from the asset folder {asset_dir} (no {example}). Download them with\n\n"
            f"    MS2_ASSET_DIR={asset_dir} {sys.executable} -m mani_skill2.utils.download_asset partnet_mobility_faucet -y\n\n"
            f"which puts each model at {root}{os.sep}<model id>{os.sep}mobility_cvx.urdf (with its meshes next to it), "
            f"or pass asset_dir= (or set MS2_ASSET_DIR) to a folder that already holds partnet_mobility/dataset/."
        )
    return root


class _Server:
    def __init__(self):
        self.env = None

    def make(self, env_id, control_mode, reward_mode, renderer, asset_dir=None, model_ids=None):
        if renderer not in ("none", "sapien"):
            raise ValueError(f"renderer must be 'none' or 'sapien' in the worker, got {renderer!r}")
        cls = _env_class(env_id)
        kwargs = dict(obs_mode="state", control_mode=control_mode, reward_mode=reward_mode)
        if env_id.startswith("TurnFaucet"):
            kwargs["asset_root"] = _check_faucet_assets(asset_dir, model_ids)
            if model_ids:
                kwargs["model_ids"] = list(model_ids)
        if renderer == "none":
            cls = _state_only_class(cls)
        else:
            kwargs["renderer_kwargs"] = {"offscreen_only": True}
        self.env = cls(**kwargs)
        space = self.env.action_space
        obs_space = self.env.observation_space
        return {
            "obs_dim": int(obs_space.shape[0]),
            "action_low": [float(x) for x in space.low],
            "action_high": [float(x) for x in space.high],
            "sim_freq": int(self.env.sim_freq),
            "control_freq": int(self.env.control_freq),
        }

    def reset(self, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return _f64(obs), _plain(info)

    def step(self, action):
        import numpy as np

        obs, reward, terminated, truncated, info = self.env.step(np.frombuffer(action, dtype="<f8").astype(np.float32))
        return _f64(obs), float(reward), bool(terminated), bool(truncated), _plain(info)

    def elapsed_steps(self):
        return int(self.env.elapsed_steps)

    def versions(self):
        from importlib.metadata import version

        import mani_skill2
        import numpy

        return {
            "mani_skill2": version("mani-skill2"),
            "sapien": version("sapien"),
            "numpy": numpy.__version__,
            "python": sys.version.split()[0],
            "mani_skill2_path": os.path.dirname(mani_skill2.__file__),
        }

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None


def _f64(obs) -> bytes:
    import numpy as np

    return np.ascontiguousarray(obs, dtype="<f8").reshape(-1).tobytes()


def _plain(value):
    """numpy scalars/arrays and nested containers -> plain Python values."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def serve(fd: int) -> int:
    import io
    import pickle
    from multiprocessing.connection import Connection

    class PlainValues(pickle.Unpickler):  # requests are plain values: refuse any class or function
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"request refers to {module}.{name}; only plain values are allowed")

    conn = Connection(fd)
    try:
        import mani_skill2.envs  # noqa: F401  (registers the environments)

        server = _Server()
        conn.send_bytes(pickle.dumps(("ok", server.versions()), protocol=PICKLE_PROTOCOL))
    except BaseException as exc:  # report why we cannot serve, then stop
        conn.send_bytes(
            pickle.dumps(("error", type(exc).__name__, str(exc), traceback.format_exc()), protocol=PICKLE_PROTOCOL)
        )
        return 1
    while True:
        try:
            request = PlainValues(io.BytesIO(conn.recv_bytes())).load()
        except (EOFError, OSError):  # the adapter went away
            server.close()
            return 0
        name, args = request[0], request[1:]
        try:
            if name not in ("make", "reset", "step", "elapsed_steps", "close"):
                raise ValueError(f"unknown request {name!r}")
            reply = ("ok", getattr(server, name)(*args))
        except Exception as exc:
            reply = ("error", type(exc).__name__, str(exc), traceback.format_exc())
        conn.send_bytes(pickle.dumps(reply, protocol=PICKLE_PROTOCOL))
        if name == "close":
            return 0


# --------------------------------------------------------------------------- rendering probe
def probe() -> int:
    """Render one 16x16 frame with SAPIEN's Vulkan renderer; print whether it worked.

    Creating the renderer is not enough: without any Vulkan driver SAPIEN 2 creates
    one that only logs "Vulkan is incompatible with your driver", so the probe takes
    a picture too. Run in its own process: a broken driver may crash it.
    """
    try:
        import numpy as np
        import sapien.core as sapien

        engine = sapien.Engine()
        renderer = sapien.SapienRenderer(offscreen_only=True)
        engine.set_renderer(renderer)
        scene = engine.create_scene()
        scene.set_ambient_light([0.5, 0.5, 0.5])
        builder = scene.create_actor_builder()
        builder.add_box_visual(half_size=[0.1, 0.1, 0.1], color=[1.0, 0.0, 0.0])
        builder.build_kinematic(name="box")
        camera = scene.add_camera("probe", 16, 16, 1.0, 0.01, 10.0)
        camera.set_local_pose(sapien.Pose([-1.0, 0.0, 0.0]))
        scene.step()
        scene.update_render()
        camera.take_picture()
        rgba = np.asarray(camera.get_float_texture("Color"))
        if rgba.shape != (16, 16, 4) or not np.isfinite(rgba).all():
            raise RuntimeError(f"the probe frame is malformed: shape {rgba.shape}")
        result = {"available": True, "reason": f"SAPIEN rendered a frame on {_device_name(renderer)}"}
    except Exception as exc:
        result = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    print(PROBE_MARKER + json.dumps(result), flush=True)
    return 0


def _device_name(renderer) -> str:
    for attr in ("device_name", "get_device_name"):
        value = getattr(renderer, attr, None)
        if value is not None:
            try:
                return str(value() if callable(value) else value)
            except Exception:
                pass
    return "a Vulkan device"


if __name__ == "__main__":
    # sapien 2 imports pkg_resources, which warns about its own deprecation; nothing to act on here.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(serve(int(sys.argv[2])))
    if len(sys.argv) == 2 and sys.argv[1] == "probe":
        sys.exit(probe())
    sys.exit(f"usage: {sys.argv[0]} serve FD | probe")
