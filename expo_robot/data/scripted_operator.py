"""Scripted noisy "operators" for the simulated tasks: they stand in for a person with a teleop device.

Each operator is a closed-loop controller that solves its task every time without noise; Gaussian noise of standard
deviation `sigma` (in action units) on every action dimension makes it fail part of the time, so the success rate of
the seed data it records is set by `sigma`: `sigma_for_success(robot_cfg, 0.4)` reads it off measured figures.

    op = make_operator(robot_cfg, sigma=1.0, rng=np.random.default_rng(0))
    state = task.reset(seed); op.reset()
    action = op.act(task, state)     # clipped to the task's action bounds: this is what the robot executes
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from drivers.sim_env import SimTask


class OperatorError(ValueError):
    """No scripted operator exists for this robot/task, or it was given a state it cannot read."""


class Operator(Protocol):
    def reset(self) -> None: ...

    def act(self, task: SimTask, state: np.ndarray) -> np.ndarray: ...


class _NoisyOperator:
    """Adds N(0, sigma^2) noise to a clean controller's action, then clips it to the task's bounds."""

    def __init__(self, sigma: float, rng: np.random.Generator):
        if sigma < 0:
            raise OperatorError(f"sigma must be >= 0 (got {sigma})")
        self.sigma = float(sigma)
        self.rng = rng

    def reset(self) -> None:
        raise NotImplementedError

    def clean_action(self, task: SimTask, state: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def act(self, task: SimTask, state: np.ndarray) -> np.ndarray:
        action = self.clean_action(task, state).astype(np.float64)
        if self.sigma > 0:
            action = action + self.rng.normal(0.0, self.sigma, size=action.shape)
        return np.clip(action, task.action_low, task.action_high).astype(np.float32)


# Panda pick-cube (gym-hil): state = 18 robot values + block xyz; action = xyz deltas (0.025 m/unit) + gripper
# command (0 open, 1 hold, 2 close).
_PANDA_STEP_M = 0.025
_PANDA_ABOVE_M = 0.05  # hover height above the block centre before descending
_PANDA_XY_TOL_M = 0.008
_PANDA_Z_TOL_M = 0.008
_PANDA_CLOSE_STEPS = 3  # the fingers need a few control steps to close on the block
_OPEN, _CLOSE = 0.0, 2.0


class PandaPickOperator(_NoisyOperator):
    """Above the cube, descend, close, lift. Phase is re-derived from the state each step, so a noisy slip
    (block dropped, gripper knocked open) is recovered from rather than followed blindly."""

    def reset(self) -> None:
        self._closed_steps = 0

    def clean_action(self, task: SimTask, state: np.ndarray) -> np.ndarray:
        ee = task.ee_position()
        if ee is None:
            raise OperatorError(f"{task.env_id} gives no end-effector position; the Panda operator needs it")
        block = np.asarray(state[-3:], dtype=np.float64)
        err_xy = block[:2] - ee[:2]
        grasp_z = block[2]
        if self._closed_steps > 0:
            return self._lift_or_regrasp(ee, block)
        if np.linalg.norm(err_xy) > _PANDA_XY_TOL_M:
            # Line up above the block first, at hover height, so the fingers never sweep it away.
            target_z = max(ee[2], grasp_z + _PANDA_ABOVE_M) if np.linalg.norm(err_xy) > 0.02 else ee[2]
            return self._move(np.array([*block[:2], target_z]) - ee, _OPEN)
        if ee[2] - grasp_z > _PANDA_Z_TOL_M:
            return self._move(np.array([*err_xy, grasp_z - ee[2]]), _OPEN)
        self._closed_steps = 1
        return self._move(np.zeros(3), _CLOSE)

    def _lift_or_regrasp(self, ee: np.ndarray, block: np.ndarray) -> np.ndarray:
        self._closed_steps += 1
        if self._closed_steps <= _PANDA_CLOSE_STEPS:
            return self._move(np.zeros(3), _CLOSE)
        if np.linalg.norm(block - ee) > 0.04:  # the block is not between the fingers: open and start over
            self._closed_steps = 0
            return self._move(np.zeros(3), _OPEN)
        return self._move(np.array([0.0, 0.0, 1.0]) * _PANDA_STEP_M, _CLOSE)

    @staticmethod
    def _move(delta_m: np.ndarray, gripper: float) -> np.ndarray:
        return np.array([*np.clip(delta_m / _PANDA_STEP_M, -1.0, 1.0), gripper])


class So101PickPlaceOperator(_NoisyOperator):
    """The lerobot-env-so101 package's own `PickPlaceController` (hover, descend, close, lift, traverse, lower,
    open, retreat), fed the grasp point `ik_point_pos` and the block/goal positions from the flat state."""

    def __init__(self, sigma: float, rng: np.random.Generator, action_scale: float):
        super().__init__(sigma, rng)
        from lerobot_env_so101.scripted import PickPlaceController

        self._controller = PickPlaceController(action_scale=action_scale)

    def reset(self) -> None:
        self._controller.reset()

    def clean_action(self, task: SimTask, state: np.ndarray) -> np.ndarray:
        grasp = task.ee_position()
        if grasp is None:
            raise OperatorError(
                f"{task.env_id} gives no grasp point (ik_point_pos); the SO-101 operator needs it"
            )
        # environment_state = block xyz then goal xyz, at the end of the flat state.
        block, goal = state[-6:-3], state[-3:]
        return self._controller.act(grasp, block, goal)


def _panda(robot_cfg: Any, sigma: float, rng: np.random.Generator) -> Operator:
    return PandaPickOperator(sigma, rng)


def _so101(robot_cfg: Any, sigma: float, rng: np.random.Generator) -> Operator:
    scale = float((robot_cfg.get("env_kwargs") or {}).get("action_scale", 1.0))
    return So101PickPlaceOperator(sigma, rng, action_scale=scale)


# Bump when an operator's behaviour changes: cached seed datasets are keyed by it.
OPERATOR_VERSION = 2

# Measured (sigma, success rate) of each operator, episodes pooled over seeds (counts in brackets); reproduce with
# `ensure_seed_dataset(cfg.robot, cfg.task, n, sigma, seed)`, which writes the rate to seed.json.
SUCCESS_VS_SIGMA = {
    # Panda pick-cube, 100-step episodes: [3], [20], [80], [80], [100]
    "gym_hil/PandaPickCube-v0": ((0.0, 1.0), (0.5, 0.95), (0.7, 0.56), (0.85, 0.39), (1.0, 0.28)),
    # SO-101 pick-place, 300-step episodes, fixed block/goal (the robot config does not randomise them): [10], [30],
    # [40], [30]
    "lerobot_env_so101/SO101PickPlace-v0": ((0.0, 1.0), (0.15, 0.83), (0.2, 0.45), (0.25, 0.10)),
}

# Noise that gives ~40% success, per task (from the table above).
DEFAULT_SIGMA = {
    "gym_hil/PandaPickCube-v0": 0.85,
    "lerobot_env_so101/SO101PickPlace-v0": 0.2,
}

# gymnasium id -> operator factory (a registry, not an if/elif chain).
OPERATORS: dict[str, Callable[[Any, float, np.random.Generator], Operator]] = {
    "gym_hil/PandaPickCube-v0": _panda,
    "lerobot_env_so101/SO101PickPlace-v0": _so101,
}


def make_operator(robot_cfg: Any, sigma: float, rng: np.random.Generator) -> Operator:
    """The scripted noisy operator for the simulated task named by `robot_cfg.env_id`."""
    env_id = robot_cfg.get("env_id")
    if env_id not in OPERATORS:
        raise OperatorError(
            f"no scripted operator for robot '{robot_cfg.get('name')}' (env_id {env_id}); "
            f"available for: {', '.join(OPERATORS)} (robot=sim_panda or robot=sim_so101)"
        )
    return OPERATORS[env_id](robot_cfg, sigma, rng)


def default_sigma(robot_cfg: Any) -> float:
    """The noise that seeds this task with a ~40-50% success dataset."""
    env_id = robot_cfg.get("env_id")
    if env_id not in DEFAULT_SIGMA:
        raise OperatorError(f"no default operator noise for {env_id}; pass sigma explicitly")
    return DEFAULT_SIGMA[env_id]


def sigma_for_success(robot_cfg: Any, target: float) -> float:
    """Operator noise expected to give `target` success, interpolated in the measured table (SUCCESS_VS_SIGMA)."""
    env_id = robot_cfg.get("env_id")
    if env_id not in SUCCESS_VS_SIGMA:
        raise OperatorError(f"no measured success-vs-noise figures for {env_id}; pass sigma explicitly")
    sigmas, rates = zip(*SUCCESS_VS_SIGMA[env_id], strict=True)
    lowest, highest = min(rates), max(rates)
    if not lowest <= target <= highest:
        raise OperatorError(
            f"target success {target} is outside the measured range {lowest}-{highest} for {env_id}"
        )
    return float(np.interp(target, rates[::-1], sigmas[::-1]))  # success falls as sigma grows
