"""Simulated tasks as flat-state environments: one place that knows the gymnasium ids and their quirks.

Both the driver process (drivers/) and in-process tools (seed data, learning benchmark) build tasks here, so the
observation layout (agent_pos followed by environment_state, float32) is the same everywhere.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
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

    def __init__(self, env_id: str, env_kwargs: dict | None = None, max_episode_steps: int | None = None):
        os.environ.setdefault("MUJOCO_GL", "egl")  # gym-hil builds a renderer even for state observations
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

        Synchronous (software EGL: ~0.5 s a frame on this machine whatever the size). The renderer's GL context
        belongs to the thread that builds it, so render from one thread (the driver loop).
        """
        import mujoco

        model, data = self._mujoco()
        if camera is not None and camera not in self.camera_names():
            raise SimUnavailableError(
                f"'{self.env_id}' has no camera {camera!r}; its cameras: {self.camera_names()} (null: free camera)"
            )
        renderer = self._renderers.get((height, width))
        if renderer is None:
            # the offscreen buffer is sized in the model's XML (gym-hil: 128x128); grow it instead of refusing
            vis = model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            renderer = self._renderers[(height, width)] = mujoco.Renderer(model, height, width)
        renderer.update_scene(data, camera=-1 if camera is None else camera)
        return renderer.render().copy()  # the renderer reuses its buffer

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
        for renderer in self._renderers.values():
            renderer.close()  # before the env: freeing a GL context at interpreter exit fails noisily
        self._renderers.clear()
        self.env.close()


def make_sim_task(robot_cfg: Any, task_cfg: Any | None = None) -> SimTask:
    """Build the simulated task named by a robot config (configs/robot/*.yaml, type: sim)."""
    kwargs = dict(robot_cfg.get("env_kwargs") or {})
    max_steps = task_cfg.get("max_episode_steps") if task_cfg is not None else None
    return SimTask(robot_cfg.env_id, kwargs, max_steps)
