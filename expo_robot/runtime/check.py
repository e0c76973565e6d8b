"""`expo-robot check`: preflight of the configured setup before anything moves.

Devices found (serial ports and RealSense serials), calibration present and matching, safety limits sane, runtime
ports free, the robot answering, camera frame rate and age, and one policy step within the control period. Prints
a pass/fail table with what to do for each failure; exit code 1 when anything failed.

expo-robot check robot=so101 cameras=realsense
"""

from __future__ import annotations

import errno
import logging
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from calibration.files import CalibrationError, calibration_root, load_robot
from drivers.cameras import CameraError, make_camera
from drivers.robot import Robot, RobotError, make_robot
from drivers.safety import Limits, SafetyConfig, SafetyConfigError
from expo_robot.transport.keys import curve_keys, public_keys
from expo_robot.transport.sockets import TransportError

log = logging.getLogger(__name__)
PORTS = ("obs", "cmd", "weights", "transitions")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped (not applicable, or blocked by an earlier failure)
    detail: str
    fix: str = ""


# ---- devices ----
def serial_ports() -> list[tuple[str, str | None]] | None:
    """(device, USB serial) of every serial port; None when pyserial (a lerobot motor extra) is missing."""
    try:
        from serial.tools import list_ports
    except ImportError:
        return None
    return [(p.device, p.serial_number) for p in list_ports.comports()]


def realsense_serials() -> list[str]:
    from drivers.realsense import connected_devices, device_serial

    try:
        return [device_serial(d) for d in connected_devices()]
    except RuntimeError as e:
        log.warning("librealsense cannot list devices: %s", e)
        return []


def check_robot_device(robot_cfg: Any) -> Check:
    if robot_cfg.type != "lerobot_arm":
        return Check("robot device", True, f"{robot_cfg.type} robot {robot_cfg.name}: no hardware")
    from drivers.lerobot_arm import port_serial

    port, ports = str(robot_cfg.port), serial_ports()
    if ports is None:
        seen = "unknown (pyserial is not installed: it comes with lerobot[feetech] / lerobot[dynamixel])"
    else:
        seen = ", ".join(f"{d} ({s or 'no serial'})" for d, s in ports) or "none"
    if not Path(port).exists():
        return Check("robot device", False, f"port {port} not found; serial ports here: {seen}",
                     "plug the arm's USB adapter in and power the arm, then set robot.port=<one of the ports>")  # fmt: skip
    return Check("robot device", True, f"port {port}, adapter serial {port_serial(port) or 'unknown'}")


def check_robot_calibration(robot_cfg: Any) -> Check:
    if robot_cfg.type != "lerobot_arm":
        return Check("robot calibration", None, "not needed for this robot type")
    from drivers.lerobot_arm import port_serial

    try:
        _, record = load_robot(calibration_root(robot_cfg.get("calibration_dir")), str(robot_cfg.id),
                               str(robot_cfg.lerobot_type), port_serial(str(robot_cfg.port)))  # fmt: skip
    except CalibrationError as e:
        return Check("robot calibration", False, str(e).split(": run")[0],
                     f"expo-robot calibrate robot robot={robot_cfg.name} robot.id={robot_cfg.id} "
                     f"robot.port={robot_cfg.port}")  # fmt: skip
    return Check(
        "robot calibration", True, f"{record['device_id']}, {record['date']}, serial {record['serial']}"
    )


# ---- limits ----
def check_limits(cfg: DictConfig, robot: Robot) -> Check:
    try:
        safety = SafetyConfig.from_config(cfg.get("safety"), cfg.robot)
        limits = Limits.build(safety, robot, cfg.robot.get("workspace"))
    except (SafetyConfigError, RobotError) as e:
        return Check("safety limits", False, str(e), "fix configs/safety or robot.safety")
    problems = limit_problems(safety, limits, robot)
    if problems:
        return Check("safety limits", False, "; ".join(problems), "fix robot.safety / robot.joint_low/high")
    span = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in zip(limits.low, limits.high, strict=True))
    return Check("safety limits", True, f"bounds {span}; step change {limits.max_change.tolist()}")


def limit_problems(safety: SafetyConfig, limits: Limits, robot: Robot) -> list[str]:
    out = []
    if np.any(limits.max_change <= 0):
        out.append("max_step_change must be > 0 on every dim")
    if np.any(limits.max_change >= limits.high - limits.low):
        out.append("max_step_change lets a dim cross its whole range in one step")
    hold = robot.hold_action((limits.low + limits.high) / 2)
    if np.any(hold < limits.low) or np.any(hold > limits.high):
        out.append(f"hold action {hold.tolist()} is outside the bounds")
    if safety.startup_ramp_steps < 1 or safety.startup_max_jump <= 0:
        out.append("startup_ramp_steps must be >= 1 and startup_max_jump > 0")
    if safety.watchdog_safe_state_s <= safety.watchdog_hold_periods / robot.fps:
        out.append("watchdog_safe_state_s must be longer than the hold delay")
    return out


# ---- ports ----
def port_free(host: str, port: int) -> tuple[bool, str]:
    """Can a driver/learner bind host:port? (SO_REUSEADDR as ZeroMQ sets it: only listening sockets block.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False, "in use"
            return False, f"cannot bind ({e.strerror})"
    return True, "free"


def check_ports(runtime: Any) -> list[Check]:
    host = str(runtime.get("host", "127.0.0.1"))
    out = []
    for name in PORTS:
        port = int(runtime[f"{name}_port"])
        ok, why = port_free(host, port)
        fix = "" if ok else (
            f"another expo-robot process (or program) holds it: stop it (`ss -ltnp 'sport = :{port}'` shows "
            f"which) or choose another port with runtime.{name}_port=<port>"
            if why == "in use" else f"runtime.host={host} is not an address of this machine: run check there"
        )  # fmt: skip
        out.append(Check(f"port {name}", ok, f"{host}:{port} {why}", fix))
    return out


def check_keys(runtime: Any) -> Check:
    """The CurveZMQ keys every socket will use (on one machine made now, as the first process would make them)."""
    try:
        keys = curve_keys(runtime)
    except TransportError as e:
        return Check("keys", False, str(e), "`expo-robot keys init` (README, Security)")
    allowed, operators = public_keys(keys.authorized_clients_dir), public_keys(keys.operator_keys_dir)
    detail = f"{len(allowed)} client key(s) allowed, {len(operators)} may clear an e-stop"
    return Check("keys", True, f"{Path(keys.server_public_key_file).parent}: {detail}")


# ---- robot and cameras ----
def check_robot_connect(robot: Robot) -> Check:
    try:
        robot.connect()
    except (RobotError, CalibrationError, OSError) as e:
        return Check("robot connect", False, str(e), "see the rows above; `expo-robot driver` logs the same")
    try:
        robot.reset(seed=0)
        t = []
        for _ in range(10):
            t0 = time.perf_counter()
            robot.observe()
            t.append(1e3 * (time.perf_counter() - t0))
    finally:
        robot.disconnect()
    return Check(
        "robot connect",
        True,
        f"{robot.name}: {robot.state_dim} state dims, observe {statistics.median(t):.2f} ms",
    )


def check_camera(cam_cfg: Any, calibration_dir: Any, seconds: float = 1.0, **kwargs: Any) -> Check:
    name = f"camera {cam_cfg.get('name')}"
    try:
        cam = make_camera(cam_cfg, calibration_dir, **kwargs)
        cam.connect()
    except CalibrationError as e:
        return Check(
            name, False, str(e).split(": run")[0], "expo-robot calibrate camera (with this camera attached)"
        )
    except CameraError as e:
        return Check(name, False, str(e), f"RealSense serials here: {realsense_serials() or 'none'}")
    try:
        first = cam.frames
        ages, t0 = [], time.monotonic()
        while time.monotonic() - t0 < seconds:
            ages.append(1e3 * (time.monotonic() - cam.read_latest(max_age_s=1.0).received_s))
            time.sleep(0.01)
        fps = (cam.frames - first) / (time.monotonic() - t0)
    except CameraError as e:
        return Check(name, False, str(e), "check the cable (USB 3) and the configured mode")
    finally:
        cam.disconnect()
    ok = fps >= 0.8 * cam.fps and max(ages) <= 1e3 * cam.max_age_s
    detail = f"serial {cam.serial}, {fps:.1f} fps (of {cam.fps:g}), frame age median {statistics.median(ages):.1f} ms, max {max(ages):.1f} ms"
    return Check(name, ok, detail, "" if ok else "lower the resolution / fps, or use a dedicated USB 3 port")


def check_policy_step(cfg: DictConfig, robot: Robot, steps: int = 30) -> Check:
    import torch

    from expo_robot.agent import AgentSpec, make_agent
    from expo_robot.bench.policy import time_policy_steps

    torch.set_num_threads(1)  # as in the actor
    low, high = robot.action_low.tolist(), robot.action_high.tolist()
    spec = AgentSpec(int(robot.state_dim), robot.action_dim, low, high, cfg.agent.chunk)
    agent = make_agent(
        cfg.agent, spec, device=str(cfg.get("device", "auto")), seed=0, profile=cfg.get("profile")
    )
    ms = sorted(time_policy_steps(agent, spec, steps))
    p95, period = ms[int(0.95 * (len(ms) - 1))], 1e3 / float(robot.fps)
    ok = p95 < period
    return Check("policy step", ok, f"{cfg.agent.name}: median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms "
                 f"(control period {period:.0f} ms)",
                 "" if ok else "use a GPU (device=cuda), a smaller profile, or a lower robot.fps")  # fmt: skip


# ---- all together ----
def run_checks(
    cfg: DictConfig, robot_factory: Callable[..., Robot] = make_robot, **camera_kwargs: Any
) -> list[Check]:
    checks: list[Check] = []
    try:
        robot = robot_factory(cfg.robot, cfg.get("task"))
        checks.append(Check("robot config", True, f"{robot.name} ({cfg.robot.type})"))
    except (RobotError, OSError) as e:
        robot = None
        checks.append(Check("robot config", False, str(e), f"fix configs/robot/{cfg.robot.get('name')}.yaml"))
    checks.append(check_robot_device(cfg.robot))
    checks.append(calib := check_robot_calibration(cfg.robot))
    if robot is not None and calib.ok is not False:
        checks.append(conn := check_robot_connect(robot))
        if conn.ok:
            checks.append(check_limits(cfg, robot))
    else:
        checks.append(Check("robot connect", None, "skipped: fix the rows above first"))
    checks.extend(check_ports(cfg.runtime))
    checks.append(check_keys(cfg.runtime))
    cams = (cfg.get("cameras") or {}).get("list") or []
    for cam_cfg in cams:
        checks.append(check_camera(cam_cfg, cfg.cameras.get("calibration_dir"), **camera_kwargs))
    if not cams:
        checks.append(Check("cameras", None, "none configured (cameras=none)"))
    if robot is not None and getattr(robot, "state_dim", None):
        checks.append(check_policy_step(cfg, robot))
    return checks


def render(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="expo-robot check")
    for col in ("check", "result", "detail", "what to do"):
        table.add_column(col, overflow="fold")
    marks = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]skip[/]"}
    for c in checks:
        table.add_row(c.name, marks[c.ok], c.detail, c.fix)
    Console(width=160).print(table)


def main(cfg: DictConfig, words: list[str]) -> int:
    checks = run_checks(cfg)
    render(checks)
    failed = [c.name for c in checks if c.ok is False]
    if failed:
        log.error("check failed: %s", ", ".join(failed))
        return 1
    return 0
