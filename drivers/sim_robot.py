"""The simulated robot (MuJoCo through gymnasium) behind the device contract.

Default: gym-hil PandaPickCube-v0; the SO-101 twin and any gymnasium id come from configs/robot/*.yaml (env_id,
env_kwargs). The simulator only advances in `send`: holding means not stepping it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from drivers.robot import Robot, RobotError, StepResult, config_vector, spec_from_config
from drivers.sim_env import SimTask, make_sim_task

log = logging.getLogger(__name__)


class SimRobot(Robot):
    def __init__(self, robot_cfg: Any, task_cfg: Any | None = None):
        super().__init__()
        self.robot_cfg, self.task_cfg = robot_cfg, task_cfg
        self.name = str(robot_cfg.get("name", robot_cfg.env_id))
        self.task: SimTask | None = None
        self._state: np.ndarray | None = None

    def _connect(self) -> None:
        self.task = make_sim_task(self.robot_cfg, self.task_cfg)
        self.state_dim, self.action_dim = self.task.state_dim, self.task.action_dim
        self.state_names = self.task.state_names
        low, high = self.robot_cfg.get("action_low"), self.robot_cfg.get("action_high")
        self.action_low = (
            config_vector(low, self.action_dim, "robot.action_low") if low else self.task.action_low
        )
        self.action_high = (
            config_vector(high, self.action_dim, "robot.action_high") if high else self.task.action_high
        )
        if np.any(self.action_low < self.task.action_low) or np.any(self.action_high > self.task.action_high):
            raise RobotError(
                f"robot.action_low/high {self.action_low}/{self.action_high} exceed the simulator's action space "
                f"{self.task.action_low}/{self.task.action_high}: tighten them in configs/robot/{self.name}.yaml"
            )
        spec_from_config(self, self.robot_cfg, self.action_dim)

    def _disconnect(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None

    def _reset(self, seed: int | None) -> np.ndarray:
        self._state = self.task.reset(seed)
        return self._state

    def _observe(self) -> np.ndarray:
        if self._state is None:
            self._state = self.task.reset()
        return self._state

    def _send(self, action: np.ndarray) -> StepResult:
        r = self.task.step(action)
        self._state = r.state
        return StepResult(r.state, action, r.reward, r.terminated, r.truncated, r.success, r.info)

    def _safe_state(self) -> None:
        log.warning("%s: safe state (simulator paused until the next reset)", self.name)

    def ee_position(self) -> np.ndarray | None:
        return self.task.ee_position() if self.task is not None else None
