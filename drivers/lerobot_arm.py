"""Any lerobot robot (SO-100/SO-101 follower, Koch follower, ...) behind our Robot contract.

Actions are absolute joint positions in lerobot's normalised units (degrees with `use_degrees`, else -100..100;
grippers 0..100), in the order of the robot's `action_features`. This file holds no motor-bus code: lerobot's robot
class talks to the bus. What it adds:
- joint limits = config limits intersected with the calibrated range of motion (what the safety layer clamps to);
- calibration from our own file (calibration/robots/<id>.json, checked against the id, type and adapter serial)
  installed into lerobot's robot at connect; a missing or foreign file refuses to start;
- hold / safe state that keep torque on at the present pose, and torque left on at disconnect unless configured
  otherwise, so a stopped arm does not fall onto the table.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from calibration.files import calibration_root, load_robot
from drivers.robot import Robot, RobotError, StepResult, config_vector

log = logging.getLogger(__name__)


def port_serial(port: str) -> str | None:
    """USB serial number of the adapter behind a serial port, or None when unknown (no such port, no pyserial)."""
    try:
        from serial.tools import list_ports
    except ImportError:
        return None
    real = str(Path(port).resolve()) if Path(port).exists() else port
    for info in list_ports.comports():
        if port in (info.device, getattr(info, "usb_description", None)) or info.device == real:
            return info.serial_number
    return None


def register_lerobot_robot_configs() -> None:
    """lerobot registers a robot type when its config module is imported: import them all (they are light)."""
    import lerobot.robots

    for pkg in pkgutil.iter_modules(lerobot.robots.__path__):
        if not pkg.ispkg:
            continue
        sub = importlib.import_module(f"lerobot.robots.{pkg.name}").__path__
        for mod in pkgutil.iter_modules(sub):
            if mod.name.startswith("config"):
                try:
                    importlib.import_module(f"lerobot.robots.{pkg.name}.{mod.name}")
                except ImportError as e:  # a robot whose SDK is not installed: not selectable here
                    log.debug("lerobot robot %s unavailable: %s", pkg.name, e)


def build_lerobot_robot(robot_cfg: Any, calibration_dir: Path) -> Any:
    """lerobot's robot for `robot.lerobot_type` (any registered type), without touching the hardware."""
    from lerobot.robots import RobotConfig
    from lerobot.robots.utils import make_robot_from_config

    kind = str(robot_cfg.lerobot_type)
    if kind not in RobotConfig.get_known_choices():
        register_lerobot_robot_configs()
    try:
        config_cls = RobotConfig.get_choice_class(kind)
    except KeyError as e:
        raise RobotError(
            f"lerobot has no robot type {kind!r}; valid: {', '.join(sorted(RobotConfig.get_known_choices()))}"
        ) from e
    known = {f.name for f in fields(config_cls)}
    kwargs = dict(robot_cfg.get("lerobot") or {})
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise RobotError(
            f"robot.lerobot keys {unknown} are not fields of {config_cls.__name__}: {sorted(known)}"
        )
    if "disable_torque_on_disconnect" in known:
        kwargs["disable_torque_on_disconnect"] = bool(robot_cfg.get("disable_torque_on_disconnect", False))
    if "port" in known:
        kwargs["port"] = str(robot_cfg.port)
    cfg = config_cls(id=str(robot_cfg.id), calibration_dir=calibration_dir, **kwargs)
    try:
        return make_robot_from_config(cfg)
    except ImportError as e:  # the motor SDK is an optional lerobot extra
        raise RobotError(f"lerobot's {kind} cannot be built here: {e}") from e


def buses(robot: Any) -> list[Any]:
    """The motor buses of a lerobot robot (one for single arms; bimanual robots hold one per arm)."""
    return [v for k, v in vars(robot).items() if "bus" in k and hasattr(v, "sync_read")]


def calibrated_range(bus: Any, motor: str) -> tuple[float, float]:
    """The normalised range lerobot maps this motor's calibrated range of motion to."""
    from lerobot.motors import MotorNormMode

    m, cal = bus.motors[motor], bus.calibration[motor]
    if m.norm_mode is MotorNormMode.RANGE_M100_100:
        return -100.0, 100.0
    if m.norm_mode is MotorNormMode.RANGE_0_100:
        return 0.0, 100.0
    half = (cal.range_max - cal.range_min) / 2 * 360 / (bus.model_resolution_table[m.model] - 1)
    return -half, half


class LerobotArm(Robot):
    def __init__(self, robot_cfg: Any, task_cfg: Any | None = None):
        super().__init__()
        self.cfg = robot_cfg
        self.name = str(robot_cfg.get("name", robot_cfg.lerobot_type))
        self.device_id = str(robot_cfg.id)
        self.calibration_root = calibration_root(robot_cfg.get("calibration_dir"))
        # lerobot's own calibration folder is a throw-away: our file (checked, with serial and date) is the source.
        with tempfile.TemporaryDirectory(prefix="lerobot-cal-") as tmp:
            self.lerobot = build_lerobot_robot(robot_cfg, Path(tmp))
        self.joints = [k.removesuffix(".pos") for k in self.lerobot.action_features]
        self.action_dim = self.state_dim = len(self.joints)
        self.state_names = [f"{j}.pos" for j in self.joints]  # lerobot's own names for these values
        self.fps = float(robot_cfg.get("fps", 30))
        self.max_steps = int(task_cfg.get("max_episode_steps", 1000)) if task_cfg is not None else 1000
        self.config_low = config_vector(robot_cfg.joint_low, self.action_dim, "robot.joint_low")
        self.config_high = config_vector(robot_cfg.joint_high, self.action_dim, "robot.joint_high")
        self.action_low, self.action_high = self.config_low.copy(), self.config_high.copy()
        hold = robot_cfg.get("hold_action") or [None] * self.action_dim
        self.hold_template = config_vector(hold, self.action_dim, "robot.hold_action")  # NaN: keep the pose
        self.calibration_record: dict | None = None
        self.steps = 0

    # ---- lifecycle ----
    def _connect(self) -> None:
        serial = port_serial(str(self.cfg.get("port", "")))
        motors, self.calibration_record = load_robot(
            self.calibration_root, self.device_id, str(self.cfg.lerobot_type), serial
        )
        self._install(motors)
        try:
            self.lerobot.connect(calibrate=False)  # never start lerobot's interactive flow inside a session
        except (OSError, ConnectionError) as e:
            raise RobotError(
                f"cannot open {self.name} on port {self.cfg.get('port')!r} ({e}): is it plugged in and powered? "
                "`expo-robot check` lists the serial ports it sees"
            ) from e
        try:
            if not self.lerobot.is_calibrated:
                self._on_motor_calibration_mismatch()
            self._set_limits()
        except RobotError:
            self._disconnect()  # leave the port free for the next try
            raise
        log.info(
            "%s connected: joints %s, limits %s..%s",
            self.name,
            self.joints,
            self.action_low,
            self.action_high,
        )

    def _install(self, motors: dict) -> None:
        self.lerobot.calibration = motors
        for bus in buses(self.lerobot):
            bus.calibration = {m: motors[m] for m in bus.motors if m in motors}
            missing = sorted(set(bus.motors) - set(motors))
            if missing:
                raise RobotError(f"calibration of {self.device_id!r} lacks motors {missing}: recalibrate")

    def _on_motor_calibration_mismatch(self) -> None:
        """The motors hold another calibration than our file: write ours (default) or refuse."""
        if not self.cfg.get("write_calibration_to_motors", True):
            raise RobotError(
                f"the motors of {self.device_id!r} hold another calibration than its file: run "
                f"`expo-robot calibrate robot robot.id={self.device_id}` or allow robot.write_calibration_to_motors"
            )
        log.warning(
            "motor calibration of %s differs from its file: writing the file's calibration", self.name
        )
        for bus in buses(self.lerobot):
            bus.write_calibration(bus.calibration)

    def _set_limits(self) -> None:
        """Config limits narrowed to the calibrated range of motion; none left means a bad config."""
        low, high = self.config_low.copy(), self.config_high.copy()
        for bus in buses(self.lerobot):
            for motor in bus.motors:
                i = self.joints.index(motor)
                lo, hi = calibrated_range(bus, motor)
                low[i], high[i] = max(low[i], lo), min(high[i], hi)
        if np.any(low >= high):
            bad = [self.joints[i] for i in np.flatnonzero(low >= high)]
            raise RobotError(f"joints {bad}: robot.joint_low/high leave nothing inside the calibrated range")
        self.action_low, self.action_high = low.astype(np.float32), high.astype(np.float32)

    def _disconnect(self) -> None:
        if self.lerobot.is_connected:
            self.lerobot.disconnect()

    # ---- operations ----
    def _positions(self) -> np.ndarray:
        obs = self.lerobot.get_observation()
        return np.asarray([obs[f"{j}.pos"] for j in self.joints], dtype=np.float32)

    def _observe(self) -> np.ndarray:
        return self._positions()

    def _reset(self, seed: int | None) -> np.ndarray:
        """A real arm is not teleported: the episode starts where it is (the operator resets the scene)."""
        self.steps = 0
        return self._positions()

    def _send(self, action: np.ndarray) -> StepResult:
        sent = self.lerobot.send_action(
            {f"{j}.pos": float(a) for j, a in zip(self.joints, action, strict=True)}
        )
        executed = np.asarray([sent[f"{j}.pos"] for j in self.joints], dtype=np.float32)
        self.steps += 1
        return StepResult(self._positions(), executed, 0.0, False, self.steps >= self.max_steps, False)

    def _hold(self) -> None:
        """Goal = present position: the arm stops where it is, torque on."""
        self.lerobot.send_action(
            {f"{j}.pos": float(p) for j, p in zip(self.joints, self._positions(), strict=True)}
        )

    def hold_action(self, last_executed: np.ndarray | None) -> np.ndarray:
        """ "Keep" dims take the last executed command, or the measured pose before any step, so the start-up
        guard ramps from where the arm really is."""
        if last_executed is None and self.is_connected:
            last_executed = self._positions()
        return super().hold_action(last_executed)
