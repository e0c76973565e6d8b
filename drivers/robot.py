"""The device contract every robot driver implements, its typed errors, and the registry of robot types.

Like lerobot's Robot: connect / observe / send / disconnect, features declared up front (so configs, buffers and
networks can size themselves without hardware), context manager, typed errors. `send` returns what was really
executed, which is what gets recorded and learned from. The safety layer sits in front of `send` (drivers/server.py).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RobotError(RuntimeError):
    """Base class of driver errors."""


class DeviceNotConnectedError(RobotError, ConnectionError):
    """The device is used before `connect()` (or after `disconnect()`): call `connect()` first."""


class DeviceAlreadyConnectedError(RobotError, ConnectionError):
    """`connect()` was called twice: disconnect first, or reuse the connected device."""


@dataclass
class StepResult:
    state: np.ndarray
    action: np.ndarray  # what was executed
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    info: dict = field(default_factory=dict)


class Robot(ABC):
    """A robot as the driver loop sees it. Subclasses set the spec attributes in __init__."""

    name: str
    state_dim: int
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    fps: float
    # Hold command: zero motion; NaN entries mean "keep the last executed value" (e.g. an absolute gripper).
    hold_template: np.ndarray
    state_names: list[str] | None = None  # a name per state value (the layout datasets record), when known
    ee_step_m: float | None = (
        None  # metres per action unit on the first three dims (EE-delta robots), else None
    )

    def __init__(self) -> None:
        self._connected = False

    # ---- declared features ----
    @property
    def observation_features(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"state": ((self.state_dim,), "float32")}

    @property
    def action_features(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"action": ((self.action_dim,), "float32")}

    # ---- lifecycle ----
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            raise DeviceAlreadyConnectedError(f"{self.name} is already connected")
        self._connect()
        self._connected = True

    def disconnect(self) -> None:
        if self._connected:
            self._disconnect()
            self._connected = False

    def _require(self) -> None:
        if not self._connected:
            raise DeviceNotConnectedError(f"{self.name} is not connected: call connect() first")

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ---- operations (public wrappers check the connection) ----
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode; returns the first state."""
        self._require()
        return self._reset(seed)

    def observe(self) -> np.ndarray:
        self._require()
        return self._observe()

    def send(self, action: np.ndarray) -> StepResult:
        """Execute one (already safety-filtered) action for one control period."""
        self._require()
        return self._send(np.asarray(action, dtype=np.float32))

    def hold(self) -> None:
        """Keep the current pose without advancing the episode (no command is due, or the watchdog fired)."""
        self._require()
        self._hold()

    def safe_state(self) -> None:
        """Enter the configured safe state (the policy process has been silent for long)."""
        self._require()
        self._safe_state()

    def ee_position(self) -> np.ndarray | None:
        """End-effector position (world frame, metres) when kinematics are known, else None."""
        return None

    def hold_action(self, last_executed: np.ndarray | None) -> np.ndarray:
        """The hold command; "keep" dims take the last executed value, or stay NaN (unknown) before any step.
        The safety layer treats an unknown dim as "wherever the first command puts it" (no ramp on it)."""
        hold = self.hold_template.astype(np.float32).copy()
        if last_executed is not None:
            keep = np.isnan(hold)
            hold[keep] = last_executed[keep]
        return hold

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _reset(self, seed: int | None) -> np.ndarray: ...

    @abstractmethod
    def _observe(self) -> np.ndarray: ...

    @abstractmethod
    def _send(self, action: np.ndarray) -> StepResult: ...

    def _hold(self) -> None:  # noqa: B027 (optional hook with a default)
        """Default: nothing to do (a simulator that is not stepped holds perfectly)."""

    def _safe_state(self) -> None:
        self._hold()


# type (configs/robot/*.yaml `type:`) -> "module:Class(robot_cfg, task_cfg)". A registry, not an if/elif.
ROBOT_TYPES = {
    "sim": "drivers.sim_robot:SimRobot",
    "fake": "drivers.fake_robot:FakeRobot",
    "lerobot_arm": "drivers.lerobot_arm:LerobotArm",  # any lerobot robot: configs/robot/so101.yaml, koch.yaml
}


def make_robot(robot_cfg: Any, task_cfg: Any | None = None) -> Robot:
    kind = robot_cfg.get("type")
    if kind not in ROBOT_TYPES:
        raise RobotError(f"unknown robot type {kind!r}; valid types: {', '.join(ROBOT_TYPES)}")
    module, cls = ROBOT_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), cls)(robot_cfg, task_cfg)


def config_vector(values: Any, n: int | None, what: str) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float32)
    if n is not None and arr.shape != (n,):
        raise RobotError(f"{what} has {arr.shape[0]} entries, the robot has {n} action dims")
    return arr


def spec_from_config(robot: Robot, robot_cfg: Any, action_dim: int) -> None:
    """Fill the config-given parts of a robot's spec (fps, hold template, ee step) with clear errors."""
    robot.fps = float(robot_cfg.get("fps", 10))
    hold = robot_cfg.get("hold_action")
    robot.hold_template = (
        config_vector(hold, action_dim, "robot.hold_action")
        if hold is not None
        else np.zeros(action_dim, dtype=np.float32)
    )
    step = robot_cfg.get("ee_step_m")
    robot.ee_step_m = float(step) if step is not None else None
