"""The lerobot-arm driver against lerobot's real SO-101 / Koch robot classes with a mocked motor bus."""

import copy
import functools
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mock_bus import calibration_for, mocked_buses
from omegaconf import OmegaConf
from test_robot_contract import RobotContract

from calibration.files import CalibrationMismatchError, CalibrationMissingError, load_robot, save_robot
from drivers import lerobot_arm
from drivers.lerobot_arm import LerobotArm
from drivers.robot import Robot, RobotError, make_robot
from drivers.safety import Limits, SafetyConfig
from expo_robot.config import load_config

SO101_MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


@functools.cache
def base_config(robot):
    return load_config([f"robot={robot}", "robot.port=/dev/mock0"])  # composing is slow: once per robot


def arm_config(tmp_path, robot="so101", *overrides):
    cfg = copy.deepcopy(base_config(robot))
    cfg.robot.calibration_dir = str(tmp_path)
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value))
    return cfg


def calibrate(tmp_path, cfg, serial=None):
    """What `expo-robot calibrate robot` leaves behind, for the bus the mock builds (buses are mocked)."""
    motors = LerobotArm(cfg.robot).lerobot.bus.motors
    save_robot(tmp_path, cfg.robot.id, cfg.robot.lerobot_type, serial, calibration_for(motors))


@pytest.fixture(autouse=True)
def buses():
    with mocked_buses() as created:
        yield created


class TestSO101Arm(RobotContract):
    @pytest.fixture(autouse=True)
    def _calibrated(self, tmp_path):
        self.cfg = arm_config(tmp_path)
        calibrate(tmp_path, self.cfg)

    def make_robot_under_test(self) -> Robot:
        return make_robot(self.cfg.robot, self.cfg.task)


class TestKochArm(TestSO101Arm):
    @pytest.fixture(autouse=True)
    def _calibrated(self, tmp_path):
        self.cfg = arm_config(tmp_path, "koch")
        calibrate(tmp_path, self.cfg)


@pytest.fixture
def so101(tmp_path):
    cfg = arm_config(tmp_path)
    calibrate(tmp_path, cfg)
    return cfg


def test_features_are_lerobots_joints_and_limits_come_from_calibration(so101, buses):
    arm = make_robot(so101.robot, so101.task)
    assert arm.joints == SO101_MOTORS and arm.state_dim == arm.action_dim == 6
    with arm:
        # 2048-tick range on a 4096-tick servo = +-90 degrees, narrower than the config's +-110 / +-160
        np.testing.assert_allclose(arm.action_low[:5], -2048 / 2 * 360 / 4095, rtol=1e-6)
        assert arm.action_high[0] == pytest.approx(2048 / 2 * 360 / 4095)
        assert (arm.action_low[5], arm.action_high[5]) == (0.0, 100.0)  # gripper 0..100
        limits = Limits.build(SafetyConfig.from_config(so101.safety, so101.robot), arm, None)
        np.testing.assert_allclose(limits.max_change, [3, 3, 3, 4, 6, 10])
        np.testing.assert_allclose(limits.high, arm.action_high)


def test_send_reaches_the_motors_in_lerobots_units(so101, buses):
    with make_robot(so101.robot, so101.task) as arm:
        target = np.array([10, -20, 30, 0, 5, 80], np.float32)
        result = arm.send(target)
        np.testing.assert_allclose(result.action, target)
        assert buses[-1].goal_writes[-1] == dict(zip(SO101_MOTORS, target.tolist(), strict=True))
        np.testing.assert_allclose(result.state, target)


def test_hold_action_starts_from_the_measured_pose(so101, buses):
    with make_robot(so101.robot, so101.task) as arm:
        buses[-1].present.update(shoulder_pan=12.0, gripper=40.0)
        hold = arm.hold_action(None)
        assert hold[0] == 12.0 and hold[5] == 40.0 and np.isfinite(hold).all()
        arm.safe_state()
        assert buses[-1].goal_writes[-1]["shoulder_pan"] == 12.0  # goal = present: it stops where it is
        assert buses[-1].torque


def test_torque_stays_on_at_disconnect_unless_configured(tmp_path, buses):
    for disable in (False, True):
        cfg = arm_config(tmp_path, "so101", f"robot.disable_torque_on_disconnect={disable}")
        calibrate(tmp_path, cfg)
        with make_robot(cfg.robot, cfg.task):
            pass
        assert buses[-1].disconnect_disable_torque is disable and buses[-1].torque is not disable


def test_missing_calibration_refuses_to_connect(tmp_path):
    cfg = arm_config(tmp_path)
    arm = make_robot(cfg.robot, cfg.task)
    with pytest.raises(CalibrationMissingError, match=r"expo-robot calibrate robot robot\.id=so101_follower"):
        arm.connect()
    assert not arm.is_connected


def test_calibration_of_another_adapter_is_refused(tmp_path, monkeypatch):
    cfg = arm_config(tmp_path)
    calibrate(tmp_path, cfg, serial="5A46081234")
    monkeypatch.setattr(lerobot_arm, "port_serial", lambda port: "58FA0999")
    with pytest.raises(CalibrationMismatchError, match=r"serial 5A46081234.*serial 58FA0999"):
        make_robot(cfg.robot, cfg.task).connect()


def test_calibration_of_another_robot_type_is_refused(tmp_path):
    koch = arm_config(tmp_path, "koch", "robot.id=arm1")
    calibrate(tmp_path, koch)
    so101 = arm_config(tmp_path, "so101", "robot.id=arm1")
    with pytest.raises(CalibrationMismatchError, match="koch_follower 'arm1', not of so101_follower"):
        make_robot(so101.robot, so101.task).connect()


def test_motors_holding_another_calibration_get_the_files_or_refuse(so101, buses):
    with make_robot(so101.robot, so101.task):
        pass
    bus = buses[-1]
    assert bus.motor_calibration == bus.calibration  # the mock's motors started with the file's calibration
    so101.robot.write_calibration_to_motors = False
    arm = make_robot(so101.robot, so101.task)
    arm.lerobot.bus.motor_calibration = calibration_for(arm.lerobot.bus.motors, span=1000)
    with pytest.raises(RobotError, match="hold another calibration"):
        arm.connect()
    assert not arm.lerobot.bus.is_connected  # the port is released for the next try


def test_robot_calibration_round_trip(tmp_path):
    cfg = arm_config(tmp_path)
    calibrate(tmp_path, cfg, serial="ABC")
    motors, record = load_robot(tmp_path, "so101_follower", "so101_follower", "ABC")
    assert set(motors) == set(SO101_MOTORS) and motors["gripper"].range_max == 3072
    assert record["serial"] == "ABC" and record["date"][:2] == "20"
    with pytest.raises(CalibrationMismatchError):
        load_robot(tmp_path, "so101_follower", "so101_follower", "XYZ")
    with pytest.raises(CalibrationMissingError):
        load_robot(tmp_path, "other_arm", "so101_follower", None)


def test_port_that_does_not_open_is_a_clear_error(so101, monkeypatch):
    arm = make_robot(so101.robot, so101.task)
    arm.lerobot.bus.fail_connect = ConnectionError("could not open port /dev/mock0")
    with pytest.raises(RobotError, match="plugged in and powered"):
        arm.connect()


def test_unknown_lerobot_type_lists_valid_ones(tmp_path):
    cfg = arm_config(tmp_path, "so101", "robot.lerobot_type=nope")
    with pytest.raises(RobotError, match="so101_follower"):
        make_robot(cfg.robot, cfg.task)


@pytest.mark.timeout(90)
def test_driver_ramps_and_rate_limits_the_arm_through_the_safety_layer(tmp_path, buses):
    """The whole driver (sockets, safety layer) in front of the arm: a far target is approached gently."""
    from driver_helpers import running_driver

    from expo_robot.transport import RobotClient
    from expo_robot.transport.sockets import free_tcp_ports

    obs_port, cmd_port = free_tcp_ports(2)
    cfg = arm_config(tmp_path, "so101", "robot.mode=lockstep", f"runtime.obs_port={obs_port}",
                     f"runtime.cmd_port={cmd_port}")  # fmt: skip
    calibrate(tmp_path, cfg)
    target = np.array([60, 0, 0, 0, 0, 50], np.float32)
    with running_driver(cfg) as driver, RobotClient(cfg.runtime) as client:
        spec = client.connect(10)
        assert spec.action_dim == 6 and spec.action_high[0] == pytest.approx(2048 / 2 * 360 / 4095)
        obs = client.reset(seed=0, wait_s=30)
        np.testing.assert_allclose(obs.state, [0, 0, 0, 0, 0, 50])
        client.send_chunk(np.tile(target, (12, 1)), t0=obs.t + 1 / spec.fps, chunk_id=1)
        got = [client.recv_obs(5.0) for _ in range(12)]
    pan = np.array([0.0] + [o.action[0] for o in got])
    assert np.all(np.diff(pan) > 0) and np.all(np.diff(pan) <= 3.0 + 1e-4)  # max_step_change: 3 degrees
    assert pan[-1] < 60 and "startup_ramp" in got[0].safety["reasons"]
    # what reached the motors = what was published (holds re-send the present pose: drop the repeats)
    written = [w["shoulder_pan"] for w in buses[-1].goal_writes]
    moves = [v for i, v in enumerate(written) if v > 0 and (i == 0 or v != written[i - 1])]
    np.testing.assert_allclose(moves, pan[1:], atol=1e-4)
    assert driver.robot.lerobot.bus.torque  # stopped driver: the arm still holds its pose


@pytest.mark.timeout(120)
def test_a_fresh_process_finds_lerobots_robot_types():
    """lerobot registers robot types on import: our driver imports them itself (no test mock doing it for us)."""
    code = (
        "from omegaconf import OmegaConf\n"
        "from drivers.robot import RobotError, make_robot\n"
        "cfg = OmegaConf.load('configs/robot/so101.yaml')\n"
        "try:\n"
        "    print('built', make_robot(cfg).joints)\n"
        "except RobotError as e:\n"
        "    print('error', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=100, check=True
    )
    assert "no robot type" not in out.stdout
    # built where lerobot's Feetech extra is installed; else a clear pointer to it
    assert "built ['shoulder_pan'" in out.stdout or "lerobot[feetech]" in out.stdout, out.stdout + out.stderr
