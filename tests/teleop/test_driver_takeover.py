"""The takeover path in the driver (fake robot, real sockets): the operator's commands replace the policy's chunk,
pass the same safety filter, and are published with intervention=True; operator keys reach clients as counters."""

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from driver_helpers import make_cfg

from drivers.robot import make_robot
from drivers.server import TELEOP_CHUNK_ID, Driver
from drivers.teleop import KeyboardTeleop, QueueKeys
from expo_robot.transport import RobotClient

pytestmark = pytest.mark.timeout(60)
POLICY = np.array([0.2, 0.0, 0.0, 1.0], np.float32)


def until(robot, pred, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        obs = robot.recv_obs(0.2)
        if obs is not None and pred(obs):
            return obs
    raise AssertionError("condition not seen in time")


def keyboard_driver(cfg, engaged: bool):
    """A driver whose keyboard reads keys pushed by the test (no person, no display)."""
    robot = make_robot(cfg.robot, cfg.task)
    cfg.teleop.engaged = engaged
    keys = QueueKeys()
    return Driver(cfg, robot=robot, teleop=KeyboardTeleop(cfg.teleop, robot, source=keys)), keys


@contextmanager
def running(driver: Driver):
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    thread.start()
    assert driver.ready.wait(30), "driver did not start"
    try:
        yield driver
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_realtime_takeover_replaces_the_policy_and_is_flagged(tmp_path):
    cfg = make_cfg(tmp_path, "teleop=keyboard", "robot.mode=realtime", "robot.fps=20")
    driver, keys = keyboard_driver(cfg, engaged=False)
    with running(driver) as drv, RobotClient(cfg.runtime) as robot:
        robot.connect(10)
        obs = robot.reset(seed=0, wait_s=10)
        robot.send_chunk(np.tile(POLICY, (200, 1)), t0=obs.t + 0.05, chunk_id=1)
        policy_steps = [until(robot, lambda o: o.step >= 1) for _ in range(3)]
        assert not any(o.intervention for o in policy_steps) and all(o.chunk_id == 1 for o in policy_steps)

        keys.tap("t")  # take over, and hold "w" (x+ at full speed: 1.0)
        keys.push("w")
        held = until(robot, lambda o: o.intervention)
        assert held.chunk_id == TELEOP_CHUNK_ID
        # the same safety filter: the per-step change limit (0.5) ramps 0.2 -> 0.7 -> 1.0
        assert held.action[0] == pytest.approx(min(1.0, policy_steps[-1].action[0] + 0.5), abs=1e-5)
        nxt = until(robot, lambda o: o.step == held.step + 1)
        assert nxt.intervention and nxt.action[0] == pytest.approx(1.0)
        n_sent = len(drv.robot.sent)
        np.testing.assert_allclose(
            drv.robot.sent[-1], nxt.action, atol=1e-6
        )  # what was executed is published
        robot.send_chunk(np.tile(-POLICY, (50, 1)), t0=nxt.t + 0.05, chunk_id=2)  # ignored while held
        later = [until(robot, lambda o: True) for _ in range(3)]
        assert all(o.intervention and o.action[0] > 0 for o in later)
        assert len(drv.robot.sent) > n_sent

        keys.push("w", pressed=False)
        keys.tap("t")  # release: the policy drives again with its next chunk
        released = until(robot, lambda o: not o.intervention)
        robot.send_chunk(np.tile(-POLICY, (50, 1)), t0=released.t + 0.05, chunk_id=3)
        back = until(robot, lambda o: o.chunk_id == 3)
        assert not back.intervention
        assert back.counters["takeovers"] == 1 and back.counters["releases"] == 1
        assert back.counters["steps_intervention"] >= 5

        keys.tap("y")  # operator keys: counted in every observation, so a missed message loses nothing
        seen = until(robot, lambda o: o.counters.get("operator.success") == 1)
        assert seen.counters.get("operator.failure", 0) == 0
        keys.tap("x")  # e-stop key: latched at once in the driver
        robot.latest_obs(0.5)
        deadline = time.monotonic() + 5
        while robot.latest.safety.get("state") != "estop" and time.monotonic() < deadline:
            robot.latest_obs(0.2)
        assert robot.latest.safety["state"] == "estop"
        n = len(drv.robot.sent)
        keys.tap("t")
        keys.push("w")  # the operator cannot drive through a latched e-stop
        time.sleep(0.3)
        assert len(drv.robot.sent) == n


def test_lockstep_person_device_is_paced_at_control_rate(tmp_path):
    cfg = make_cfg(tmp_path, "teleop=keyboard", "robot.fps=20")  # lock-step
    driver, keys = keyboard_driver(cfg, engaged=True)
    with running(driver), RobotClient(cfg.runtime) as robot:
        robot.connect(10)
        robot.reset(seed=0, wait_s=10)
        keys.push("a")
        first = until(robot, lambda o: o.step == 1)
        t0 = time.monotonic()
        last = until(robot, lambda o: o.step == 11)
        rate = 10 / (time.monotonic() - t0)
        assert first.intervention and last.intervention and last.action[1] == pytest.approx(1.0)
        assert 10 < rate < 25, f"a person's device in lock-step ran at {rate:.1f} Hz, expected ~20"
