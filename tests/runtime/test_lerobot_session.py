"""End to end with a lerobot policy as the base: `expo-robot finetune agent.base.kind=lerobot` runs driver, learner
and actor over real sockets in lock-step on the simulated Panda, proposing with a tiny random-weight DiffusionPolicy
that lerobot's own save_pretrained wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from expo_robot.runtime.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from test_lerobot_base import tiny_diffusion


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_finetune_session_runs_with_a_frozen_lerobot_base(processes, tmp_path):
    policy = tmp_path / "policy"
    tiny_diffusion(
        policy
    )  # (the session.pretrain_steps of processes.common() are skipped) 18 robot values + the block's 3 coordinates in, xyz + gripper out
    run = tmp_path / "run"
    args = [
        *processes.common(),
        *processes.robot_ports(),
        "session.env_steps=60",
        f"run_dir={run}",
        "agent.base.kind=lerobot",
        f"agent.base.path={policy}",
        'agent.base.observation_map=["observation.state=state[0:18]","observation.environment_state=state[18:21]"]',
        "agent.profiles.demo.select.proposal_steps=null",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "finetune", *args],
        capture_output=True,
        text=True,
        timeout=500,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    counters = load_checkpoint(run)["counters"]
    assert counters["env_steps"] >= 60 and counters["updates"] > 0
    actor = json.loads((run / "actor-0.json").read_text())
    assert actor["env_steps"] == counters["env_steps"]
