"""`expo-robot check` and `expo-robot calibrate` through their real entry points (mocked bus, software camera)."""

import socket

import pytest
from mock_bus import mocked_buses
from rs_software import SoftwareRealSense

from calibration.files import load_camera, load_robot
from expo_robot.cli import main as cli_main
from expo_robot.config import load_config
from expo_robot.runtime import calibrate, check
from expo_robot.transport.sockets import free_tcp_ports

pytestmark = pytest.mark.timeout(240)


def port_overrides(ports):
    return [f"runtime.{name}_port={p}" for name, p in zip(check.PORTS, ports, strict=True)]


def rows(checks):
    return {c.name: c for c in checks}


def test_default_sim_setup_passes(capsys):
    cfg = load_config(port_overrides(free_tcp_ports(4)))
    assert check.main(cfg, []) == 0
    out = capsys.readouterr().out
    for name in ("robot connect", "safety limits", "port obs", "keys", "policy step"):
        assert name in out
    assert "FAIL" not in out


def test_busy_port_fails_with_advice():
    ports = free_tcp_ports(4)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[1]))
        busy.listen()
        cfg = load_config(["robot=fake", *port_overrides(ports)])
        checks = rows(check.run_checks(cfg))
    assert checks["port cmd"].ok is False and checks["port obs"].ok is True
    assert (
        "runtime.cmd_port=<port>" in checks["port cmd"].fix
        and f"sport = :{ports[1]}" in checks["port cmd"].fix
    )


def test_missing_robot_calibration_fails_with_the_command_to_run(tmp_path):
    with mocked_buses():
        cfg = load_config(["robot=so101", f"robot.calibration_dir={tmp_path}", "robot.port=/dev/mock0",
                           *port_overrides(free_tcp_ports(4))])  # fmt: skip
        checks = rows(check.run_checks(cfg))
    assert checks["robot calibration"].ok is False
    assert "no calibration for robot 'so101_follower'" in checks["robot calibration"].detail
    assert checks["robot calibration"].fix.startswith(
        "expo-robot calibrate robot robot=so101 robot.id=so101_follower"
    )
    assert (
        checks["robot device"].ok is False and "robot.port=" in checks["robot device"].fix
    )  # /dev/mock0: no such port
    assert checks["robot connect"].ok is None  # not attempted with a failing calibration


def test_cli_exit_code_is_non_zero_on_failure(tmp_path, capfd):
    argv = ["check", "robot=so101", f"robot.calibration_dir={tmp_path}", *port_overrides(free_tcp_ports(4))]
    with mocked_buses():
        assert cli_main(argv) == 1
    assert "FAIL" in capfd.readouterr().out


def test_calibrate_robot_runs_lerobots_flow_and_the_arm_then_connects(tmp_path, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *_: "")  # the operator presses ENTER at each prompt
    with mocked_buses() as buses:
        cfg = load_config(["robot=so101", f"robot.calibration_dir={tmp_path}", "robot.port=/dev/mock0",
                           *port_overrides(free_tcp_ports(4))])  # fmt: skip
        assert calibrate.main(cfg, ["robot"]) == 0
        motors, _ = load_robot(tmp_path, "so101_follower", "so101_follower", None)
        assert (
            motors["elbow_flex"].range_min == 1024 and motors["wrist_roll"].range_max == 4095
        )  # lerobot's flow
        assert buses[0].motor_calibration == motors  # written to the motors too
        checks = rows(check.run_checks(cfg))
    assert checks["robot calibration"].ok and checks["robot connect"].ok and checks["safety limits"].ok


def test_calibrate_and_check_a_camera(tmp_path):
    sw = SoftwareRealSense(serial="777").start()
    try:
        cfg = load_config(["robot=fake", "cameras=realsense", f"cameras.calibration_dir={tmp_path}",
                           "cameras.list.0.width=64", "cameras.list.0.height=48", "cameras.list.0.warmup_frames=3",
                           "cameras.list.0.max_age_s=0.2", *port_overrides(free_tcp_ports(4))])  # fmt: skip
        missing = check.check_camera(cfg.cameras.list[0], tmp_path, seconds=0.3, device_source=sw.devices)
        assert missing.ok is False and "no calibration for camera 777" in missing.detail
        (_,) = calibrate.calibrate_cameras(cfg.cameras, ["front"], device_source=sw.devices)
        assert (
            load_camera(tmp_path, "777", "realsense", (64, 48))["data"]["intrinsics"]["color"]["fx"] == 60.0
        )
        ok = check.check_camera(cfg.cameras.list[0], tmp_path, seconds=0.5, device_source=sw.devices)
    finally:
        sw.stop()
    assert ok.ok, ok.detail
    assert "serial 777" in ok.detail and "fps" in ok.detail


def test_no_camera_attached_fails_with_the_serials_seen():
    cfg = load_config(["cameras=realsense"])
    result = check.check_camera(cfg.cameras.list[0], None, seconds=0.2)
    assert result.ok is False and "no RealSense camera found" in result.detail
    assert "RealSense serials here: none" in result.fix


def test_calibrate_usage_and_nothing_to_calibrate_are_one_line_errors(capfd):
    assert cli_main(["calibrate"]) == 2
    assert "usage: expo-robot calibrate robot|camera" in capfd.readouterr().err
    assert cli_main(["calibrate", "robot"]) == 2  # the default robot is the simulator
    assert "has nothing to calibrate: choose a hardware robot, e.g. robot=so101" in capfd.readouterr().err
    assert cli_main(["calibrate", "camera"]) == 2  # cameras=none
    assert "no camera to calibrate" in capfd.readouterr().err
