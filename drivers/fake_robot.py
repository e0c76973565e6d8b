"""A fake twin: a point robot with the Panda task's spaces, selectable by config (configs/robot/fake.yaml).

Its end effector moves exactly `ee_step_m` metres per action unit (no physics), so tests of the driver loop, the
protocol and the safety layer are fast and exact. Every executed action, hold and safe state is recorded so tests can
check that nothing outside the limits ever reached "the motors".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drivers.robot import Robot, StepResult, config_vector, spec_from_config


class FakeRobot(Robot):
    def __init__(self, robot_cfg: Any, task_cfg: Any | None = None):
        super().__init__()
        self.name = str(robot_cfg.get("name", "fake"))
        self.action_low = config_vector(robot_cfg.action_low, None, "robot.action_low")
        self.action_dim = int(self.action_low.shape[0])
        self.action_high = config_vector(robot_cfg.action_high, self.action_dim, "robot.action_high")
        self.state_dim = int(robot_cfg.get("state_dim", 21))
        spec_from_config(self, robot_cfg, self.action_dim)
        self.start = np.asarray(robot_cfg.get("start_position", [0.4, 0.0, 0.25]), dtype=np.float64)
        self.max_steps = int(task_cfg.get("max_episode_steps", 100)) if task_cfg is not None else 100
        self.step_delay_s = float(robot_cfg.get("step_delay_s", 0.0))
        self.pos = self.start.copy()
        self.gripper = 0.0
        self.steps = 0
        self.sent: list[np.ndarray] = []  # every executed action, in order
        self.events: list[str] = []  # "send" / "hold" / "safe_state" / "reset", in order
        self.positions: list[np.ndarray] = []  # ee position after every executed action
        self.holds = 0
        self.safe_states = 0
        self.resets = 0

    def _connect(self) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    def _state(self) -> np.ndarray:
        state = np.zeros(self.state_dim, dtype=np.float32)
        state[:3] = self.pos
        state[3] = self.gripper
        return state

    def _reset(self, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        self.pos = self.start + rng.uniform(-0.02, 0.02, size=3)
        self.gripper, self.steps = 0.0, 0
        self.resets += 1
        self.events.append("reset")
        return self._state()

    def _observe(self) -> np.ndarray:
        return self._state()

    def _send(self, action: np.ndarray) -> StepResult:
        if self.step_delay_s:
            import time

            time.sleep(self.step_delay_s)
        self.sent.append(action.copy())
        self.events.append("send")
        self.pos = self.pos + action[:3].astype(np.float64) * (self.ee_step_m or 0.0)
        self.positions.append(self.pos.copy())
        if self.action_dim > 3:
            self.gripper = float(np.clip(self.gripper + (action[3] - 1.0), 0.0, 1.0))
        self.steps += 1
        return StepResult(self._state(), action, 0.0, False, self.steps >= self.max_steps, False)

    def _hold(self) -> None:
        self.holds += 1
        self.events.append("hold")

    def _safe_state(self) -> None:
        self.safe_states += 1
        self.events.append("safe_state")

    def ee_position(self) -> np.ndarray | None:
        return self.pos.copy()
