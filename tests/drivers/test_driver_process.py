"""The driver as a real process: `expo-robot driver` exits cleanly on SIGTERM, and the Panda simulator in lock-step
runs a scripted pick to success through the protocol, deterministically."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from driver_helpers import REPO, driver_process, observer, wait_for

from expo_robot.config import load_config
from expo_robot.transport import RobotClient
from expo_robot.transport.sockets import Puller, free_tcp_ports


@pytest.mark.timeout(90)
def test_cli_driver_estop_on_sigusr1_and_safe_state_on_sigterm(tmp_path):
    obs, cmd = free_tcp_ports(2)
    args = ["robot=fake", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}", f"run_dir={tmp_path}"]
    cfg = load_config(args)
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.Popen([sys.executable, "-m", "expo_robot.cli", "driver", *args], cwd=REPO, env=env)
    try:
        with RobotClient(cfg.runtime) as robot, observer(cfg) as sub:
            assert robot.connect(30).robot == "fake"
            wait_for(lambda: sub.recv(0.1) is not None, 10, "the observer to join")
            proc.send_signal(signal.SIGUSR1)  # the operator's e-stop
            wait_for(lambda: (o := robot.latest_obs(0.1)) and o.safety["state"] == "estop", 10, "the e-stop")
            assert "SIGUSR1" in robot.latest.safety["reason"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            states = []
            while (msg := sub.recv(0.5)) is not None:
                states.append(msg.meta["safety"] if msg.type == "obs" else None)
            assert {"state": "safe_state", "reason": "driver shutting down"}.items() <= [
                s for s in states if s
            ][-1].items()
    finally:
        proc.kill()
        proc.wait()
    log = (tmp_path / "driver.log").read_text()
    assert "SIGTERM received" in log and (tmp_path / "config.yaml").exists()


@pytest.mark.timeout(90)
def test_cli_driver_port_in_use_is_a_one_line_error(tmp_path):
    obs, cmd = free_tcp_ports(2)
    args = ["robot=fake", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}", f"run_dir={tmp_path}"]
    with Puller(f"tcp://127.0.0.1:{obs}"):  # someone else holds the observation port
        out = subprocess.run(
            [sys.executable, "-m", "expo_robot.cli", "driver", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert "cannot bind" in out.stderr and "Traceback" not in out.stderr


def scripted_pick(state: np.ndarray, phase: dict) -> np.ndarray:
    """Above the cube, descend, close, lift (state: 18 robot values with the tcp at 15:18, cube at 18:21)."""
    ee, cube = state[15:18], state[18:21]
    target, grip = cube + np.array([0.0, 0.0, 0.06]), 1.0
    if phase["name"] == "above" and np.linalg.norm(target - ee) < 0.012:
        phase["name"] = "descend"
    if phase["name"] == "descend":
        target = cube + np.array([0.0, 0.0, 0.005])
        if abs(ee[2] - target[2]) < 0.01:
            phase["name"], phase["closing"] = "close", 0
    if phase["name"] == "close":
        target, grip = ee, 2.0
        phase["closing"] += 1
        if phase["closing"] >= 6:
            phase["name"] = "lift"
    if phase["name"] == "lift":
        target, grip = ee + np.array([0.0, 0.0, 0.05]), 2.0
    xyz = np.clip((target - ee) / 0.025, -1.0, 1.0)
    return np.array([*xyz, grip], dtype=np.float32)


def run_episode(robot: RobotClient, seed: int, max_steps: int = 100) -> tuple[list, list, bool]:
    obs = robot.reset(seed=seed, wait_s=30)
    phase = {"name": "above"}
    states, actions = [obs.state.copy()], []
    for i in range(max_steps):
        robot.send_chunk(scripted_pick(obs.state, phase)[None], t0=obs.t + 0.1, chunk_id=i)
        nxt = robot.recv_obs(10.0)
        assert nxt is not None, f"no observation for step {i + 1}"
        assert (nxt.episode, nxt.step) == (obs.episode, obs.step + 1) and nxt.t == pytest.approx(obs.t + 0.1)
        obs = nxt
        states.append(obs.state.copy())
        actions.append(obs.action.copy())
        if obs.terminated or obs.truncated:
            return states, actions, obs.success
    return states, actions, False


@pytest.mark.timeout(240)
def test_panda_lockstep_scripted_pick_succeeds_and_is_deterministic(tmp_path):
    obs_port, cmd_port = free_tcp_ports(2)
    overrides = [
        "robot=sim_panda",
        f"runtime.obs_port={obs_port}",
        f"runtime.cmd_port={cmd_port}",
        f"run_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(overrides)
    with driver_process(*overrides, log_path=tmp_path / "driver.log"), RobotClient(cfg.runtime) as robot:
        spec = robot.connect(120)
        assert (spec.robot, spec.state_dim, spec.action_dim, spec.mode) == ("sim_panda", 21, 4, "lockstep")
        t = time.monotonic()
        states_a, actions_a, success_a = run_episode(robot, seed=5)
        elapsed = time.monotonic() - t
        states_b, actions_b, success_b = run_episode(robot, seed=5)
    assert success_a and success_b, f"scripted pick failed (steps: {len(actions_a)})"
    assert len(actions_a) < 60
    np.testing.assert_array_equal(np.array(states_a), np.array(states_b))  # lock-step: timing does not matter
    np.testing.assert_array_equal(np.array(actions_a), np.array(actions_b))
    print(
        f"pick succeeded in {len(actions_a)} steps, {len(actions_a) / elapsed:.0f} steps/s through the driver"
    )
