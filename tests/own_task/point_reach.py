"""A gymnasium env the project has no config for: a point on a plane driven to a goal (the end-to-end test of
'Your own task'). Importing this module registers `PointReach-v0`; configs name it `point_reach:PointReach-v0`, which
makes gymnasium import the module (it must be importable: installed, or on PYTHONPATH)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

STEP = 0.2  # distance per action unit
REACHED = 0.15  # success radius


class PointReach(gym.Env):
    """State {agent_pos: xy, environment_state: goal xy}; action: xy velocity in [-1, 1]; success ends the episode
    with reward 1 (info['is_success'])."""

    def __init__(self):
        box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Dict({"agent_pos": box, "environment_state": box})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self) -> dict:
        return {"agent_pos": self.pos.copy(), "environment_state": self.goal.copy()}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2, np.float32)
        self.goal = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + STEP * np.clip(action, -1, 1), -1, 1).astype(np.float32)
        success = bool(np.linalg.norm(self.pos - self.goal) < REACHED)
        return self._obs(), float(success), success, False, {"is_success": success}


gym.register("PointReach-v0", entry_point=PointReach, max_episode_steps=20)
