"""Simulated tasks as flat-state environments: one place that knows the gymnasium ids and their quirks.

Both the driver process (drivers/) and in-process tools (seed data, learning benchmark) build tasks here, so the
observation layout (agent_pos followed by environment_state, float32) is the same everywhere.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Packages that register gymnasium ids, by id prefix. Imported lazily: MuJoCo start-up is slow.
_REGISTERING_PACKAGES = {"gym_hil/": "gym_hil", "lerobot_env_so101/": "lerobot_env_so101"}


class SimUnavailableError(RuntimeError):
    """The simulator could not be built (missing package, bad id or kwargs)."""


_FIRST_KEYS = ("agent_pos", "environment_state")


def _state_keys(obs: dict) -> list[str]:
    """The keys of a dict observation that make the flat state, in order: agent_pos, environment_state, then the
    other entries of at most one dimension in the env's own order (images and other arrays are left out)."""
    first = [k for k in _FIRST_KEYS if k in obs]
    return first + [k for k, v in obs.items() if k not in _FIRST_KEYS and len(np.shape(v)) <= 1]


def _flatten(obs: Any) -> np.ndarray:
    if isinstance(obs, dict):
        return np.concatenate([np.asarray(obs[k], dtype=np.float32).ravel() for k in _state_keys(obs)])
    return np.asarray(obs, dtype=np.float32).ravel()


@dataclass(frozen=True)
class RenderProfile:
    """How simulated cameras draw the scene: configs/robot/<sim robot>.yaml `render.profiles.<name>`.

    None keeps what the model's XML (or MuJoCo) says. The frame's size is the camera's (configs/cameras).
    Defaults: the model's own look (gym-hil: 4096-pixel shadow maps, reflections, skybox, 8x multisampling).
    """

    name: str = "model"
    shadows: bool = True
    reflections: bool = True
    skybox: bool = True
    offscreen_samples: int | None = (
        None  # multisampling of the offscreen buffer (model.vis.quality.offsamples)
    )
    shadow_size: int | None = None  # shadow map side in pixels (model.vis.quality.shadowsize)
    geom_groups: tuple[int, ...] | None = (
        None  # geom groups drawn (MuJoCo: 0, 1, 2; gym-hil meshes: 2 visual)
    )
    gl_threads: int | None = None  # software GL's render threads (LP_NUM_THREADS; 0: in the calling thread)

    @classmethod
    def from_config(cls, render_cfg: Any) -> RenderProfile:
        """`render: {profile: NAME, profiles: {NAME: {...}}}`; no `render` section: the model's own look."""
        if not render_cfg:
            return cls()
        profiles = dict(render_cfg.get("profiles") or {})
        name = str(render_cfg.get("profile", "fast"))
        if name not in profiles:
            raise SimUnavailableError(
                f"robot.render.profile={name!r} is not defined; choose one of {sorted(profiles)} "
                "(robot.render.profiles in configs/robot/)"
            )
        values = dict(profiles[name] or {})
        unknown = set(values) - {f for f in cls.__dataclass_fields__ if f != "name"}
        if unknown:
            raise SimUnavailableError(
                f"robot.render.profiles.{name} has unknown keys {sorted(unknown)}; valid: "
                f"{sorted(f for f in cls.__dataclass_fields__ if f != 'name')}"
            )
        if values.get("geom_groups") is not None:
            values["geom_groups"] = tuple(int(g) for g in values["geom_groups"])
        return cls(name=name, **values)

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    def renderer(self, model: Any, height: int, width: int) -> Any:
        """A mujoco.Renderer with this profile's buffer settings (read when its GL context is made)."""
        import mujoco

        quality, vis = model.vis.quality, model.vis.global_
        if self.offscreen_samples is not None:
            quality.offsamples = int(self.offscreen_samples)
        if self.shadow_size is not None:
            quality.shadowsize = int(self.shadow_size)
        # the offscreen buffer is sized in the model's XML (gym-hil: 128x128); grow it instead of refusing
        vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
        renderer = mujoco.Renderer(model, height, width)
        flags = mujoco.mjtRndFlag  # kept by the scene across update_scene calls
        renderer.scene.flags[flags.mjRND_SHADOW] = self.shadows
        renderer.scene.flags[flags.mjRND_REFLECTION] = self.reflections
        renderer.scene.flags[flags.mjRND_SKYBOX] = self.skybox
        return renderer

    def scene_option(self) -> Any:
        """The visualisation options (None: MuJoCo's defaults)."""
        if self.geom_groups is None:
            return None
        import mujoco

        option = mujoco.MjvOption()
        option.geomgroup[:] = [int(g in self.geom_groups) for g in range(len(option.geomgroup))]
        return option


class RenderTimes:
    """Wall time of each rendered frame since the task was built: count, mean and max (the driver publishes them)."""

    def __init__(self) -> None:
        self.frames, self.total_s, self.max_s = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        self.frames, self.total_s, self.max_s = (
            self.frames + 1,
            self.total_s + seconds,
            max(self.max_s, seconds),
        )

    def summary(self) -> dict[str, float]:
        mean = self.total_s / self.frames if self.frames else 0.0
        return {"render_frames": self.frames, "render_ms": 1e3 * mean, "max_render_ms": 1e3 * self.max_s}


def state_layout(observation_space: Any) -> list[str]:
    """A name for each value of the flat state (`_flatten`'s order): `<key>.<i>` for a dict observation,
    `state.<i>` for an array. This is the layout a dataset's `observation.state` must follow (dataset schema)."""
    sample = observation_space.sample()
    keys = _state_keys(sample) if isinstance(sample, dict) else ["state"]
    values = [sample[k] for k in keys] if isinstance(sample, dict) else [sample]
    return [f"{k}.{i}" for k, v in zip(keys, values, strict=True) for i in range(int(np.size(v)))]


@dataclass
class StepResult:
    state: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    info: dict = field(default_factory=dict)


class SimTask:
    """A gymnasium env with flat float32 state, a success flag and the end-effector position when known."""

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict | None = None,
        max_episode_steps: int | None = None,
        render: RenderProfile | None = None,
    ):
        os.environ.setdefault("MUJOCO_GL", "egl")  # gym-hil builds a renderer even for state observations
        self.render_profile = render or RenderProfile()
        if (
            self.render_profile.gl_threads is not None
        ):  # read once, when the process makes its first GL context
            os.environ.setdefault("LP_NUM_THREADS", str(self.render_profile.gl_threads))
        import gymnasium as gym

        for prefix, package in _REGISTERING_PACKAGES.items():
            if env_id.startswith(prefix):
                importlib.import_module(package)
        kwargs = dict(env_kwargs or {})
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = int(max_episode_steps)
        try:
            self.env = gym.make(env_id, **kwargs)
        except Exception as e:  # gymnasium raises many types for bad ids/kwargs
            raise SimUnavailableError(f"cannot build simulated task '{env_id}' with {kwargs}: {e}") from e
        self.env_id = env_id
        self.action_low = np.asarray(self.env.action_space.low, dtype=np.float32)
        self.action_high = np.asarray(self.env.action_space.high, dtype=np.float32)
        self.state_names = state_layout(self.env.observation_space)
        self.state_dim = len(self.state_names)
        self.action_dim = int(self.action_low.shape[0])
        self._renderers: dict[
            tuple[int, int], Any
        ] = {}  # (height, width) -> mujoco.Renderer, built on first use
        self.render_times = RenderTimes()

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            np.random.seed(seed)  # gym-hil places the cube with numpy's global RNG, not the env's
        obs, _ = self.env.reset(seed=seed)
        return _flatten(obs)

    def step(self, action: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        success = bool(info.get("succeed", info.get("is_success", info.get("success", False))))
        return StepResult(
            _flatten(obs), float(reward), bool(terminated), bool(truncated), success, dict(info)
        )

    def ee_position(self) -> np.ndarray | None:
        """End-effector position in the world frame, from the simulator's kinematics, or None if unknown."""
        u = self.env.unwrapped
        if hasattr(u, "_pinch_site_id"):
            return np.asarray(u._data.site_xpos[u._pinch_site_id], dtype=np.float64).copy()
        if hasattr(u, "ik_point_pos"):
            pos = u.ik_point_pos
            return np.asarray(pos() if callable(pos) else pos, dtype=np.float64).copy()
        return None

    def camera_names(self) -> list[str]:
        model = self._mujoco()[0]
        return [model.camera(i).name for i in range(model.ncam)]

    def render(self, camera: str | None, height: int, width: int) -> np.ndarray:
        """The current scene seen from a MuJoCo camera (None: the default free camera), uint8 [H, W, 3] RGB.

        Synchronous, drawn as `render_profile` says (software EGL here: see benchmarks/results/render.json), and
        timed into `render_times`. The renderer's GL context belongs to the thread that builds it, so render from
        one thread (the driver loop).
        """
        model, data = self._mujoco()
        if camera is not None and camera not in self.camera_names():
            raise SimUnavailableError(
                f"'{self.env_id}' has no camera {camera!r}; its cameras: {self.camera_names()} (null: free camera)"
            )
        renderer = self._renderers.get((height, width))
        if renderer is None:  # built once per size (not timed: a start-up cost)
            renderer = self._renderers[(height, width)] = self.render_profile.renderer(model, height, width)
        t0 = time.perf_counter()
        renderer.update_scene(data, camera=-1 if camera is None else camera, scene_option=self._scene_option)
        frame = renderer.render().copy()  # the renderer reuses its buffer
        self.render_times.add(time.perf_counter() - t0)
        return frame

    @functools.cached_property
    def _scene_option(self) -> Any:
        return self.render_profile.scene_option()

    def use_render_profile(self, profile: RenderProfile) -> None:
        """Draw the next frames with `profile` (the renderers are rebuilt; `gl_threads` is fixed per process)."""
        self._close_renderers()
        self.render_profile = profile
        self.__dict__.pop("_scene_option", None)

    def sim_time(self) -> float:
        """Simulated seconds since the episode started (MuJoCo's data.time)."""
        return float(self._mujoco()[1].time)

    def _mujoco(self) -> tuple[Any, Any]:
        u = self.env.unwrapped
        model, data = getattr(u, "model", None), getattr(u, "data", None)
        if model is None or data is None:
            raise SimUnavailableError(f"'{self.env_id}' exposes no MuJoCo model/data to render cameras from")
        return model, data

    def close(self) -> None:
        self._close_renderers()  # before the env: freeing a GL context at interpreter exit fails noisily
        self.env.close()

    def _close_renderers(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


def make_sim_task(robot_cfg: Any, task_cfg: Any | None = None) -> SimTask:
    """Build the simulated task named by a robot config (configs/robot/*.yaml, type: sim)."""
    kwargs = dict(robot_cfg.get("env_kwargs") or {})
    max_steps = task_cfg.get("max_episode_steps") if task_cfg is not None else None
    return SimTask(robot_cfg.env_id, kwargs, max_steps, RenderProfile.from_config(robot_cfg.get("render")))
