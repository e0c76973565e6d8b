"""Write, read and check per-device calibration files.

A file is JSON: {"kind", "device_id", "serial", "date", "device_type", "data"}. `kind` is "robot" or "camera";
`device_id` is the lerobot robot id (robots) or the camera serial (cameras); `serial` is what the hardware reported
when it was calibrated (a robot's USB adapter serial, None when unknown). Loading checks all of them, so a file
copied from another arm or camera is refused instead of silently moving the wrong joints.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lerobot.motors import MotorCalibration

ROOT = Path(__file__).resolve().parent
FORMAT = 1


class CalibrationError(RuntimeError):
    """A calibration file is unusable; the message says which file and what to run."""


class CalibrationMissingError(CalibrationError, FileNotFoundError):
    """No calibration file for this device: run `expo-robot calibrate ...` first."""


class CalibrationMismatchError(CalibrationError):
    """The calibration file belongs to another device (or another setting): recalibrate this device."""


def calibration_root(configured: Any = None) -> Path:
    """The folder holding calibration files: the configured one, else this package's folder."""
    return Path(configured) if configured else ROOT


def _safe(name: str) -> str:
    if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name.startswith("."):
        raise CalibrationError(f"device id {name!r} is not a valid file name (letters, digits, _ . - only)")
    return name


def robot_file(root: Path, device_id: str) -> Path:
    return Path(root) / "robots" / f"{_safe(device_id)}.json"


def camera_file(root: Path, serial: str) -> Path:
    return Path(root) / "cameras" / f"{_safe(serial)}.json"


def _write(path: Path, kind: str, device_id: str, serial: str | None, device_type: str, data: dict) -> Path:
    record = {
        "format": FORMAT,
        "kind": kind,
        "device_id": device_id,
        "serial": serial,
        "device_type": device_type,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)  # atomic: a crash mid-write never leaves half a calibration
    return path


def _read(path: Path, kind: str, device_id: str, device_type: str, what: str, how: str) -> dict:
    if not path.is_file():
        raise CalibrationMissingError(f"no calibration for {what} (expected {path}): run `{how}`")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"calibration file {path} is unreadable ({e}): run `{how}` again") from e
    found = (record.get("kind"), record.get("device_id"), record.get("device_type"))
    if found != (kind, device_id, device_type):
        raise CalibrationMismatchError(
            f"{path} is a {found[0]} calibration of {found[2]} {found[1]!r}, not of {device_type} {device_id!r}: "
            f"run `{how}`"
        )
    return record


def _check_serial(record: dict, serial: str | None, path: Path, how: str) -> None:
    """Refuse a file taken on another unit; unknown serials (None) on either side are not evidence."""
    stored = record.get("serial")
    if stored is not None and serial is not None and str(stored) != str(serial):
        raise CalibrationMismatchError(
            f"{path} was calibrated on device serial {stored} ({record.get('date')}), but the connected device "
            f"is serial {serial}: run `{how}` for this device"
        )


# ---- robots ----
def _robot_how(device_id: str) -> str:
    return f"expo-robot calibrate robot robot.id={device_id}"


def save_robot(
    root: Path, device_id: str, robot_type: str, serial: str | None, motors: dict[str, MotorCalibration]
) -> Path:
    data = {"motors": {name: asdict(cal) for name, cal in motors.items()}}
    return _write(robot_file(root, device_id), "robot", device_id, serial, robot_type, data)


def load_robot(
    root: Path, device_id: str, robot_type: str, serial: str | None
) -> tuple[dict[str, MotorCalibration], dict]:
    """The motor calibration of robot `device_id` and the file's record (date, serial)."""
    path, how = robot_file(root, device_id), _robot_how(device_id)
    record = _read(path, "robot", device_id, robot_type, f"robot {device_id!r} ({robot_type})", how)
    _check_serial(record, serial, path, how)
    try:
        motors = {name: MotorCalibration(**cal) for name, cal in record["data"]["motors"].items()}
    except (KeyError, TypeError) as e:
        raise CalibrationError(f"{path} has no valid motor calibration ({e}): run `{how}` again") from e
    return motors, record


# ---- cameras ----
def _camera_how(serial: str) -> str:
    return "expo-robot calibrate camera cameras=<the config naming this camera>"


def save_camera(
    root: Path, serial: str, device_type: str, intrinsics: dict, extrinsics: dict | None = None
) -> Path:
    """`intrinsics`: {stream: {width, height, fx, fy, ppx, ppy, model, coeffs}}; `extrinsics`: camera-to-robot."""
    data = {"intrinsics": intrinsics, "extrinsics": extrinsics}
    return _write(camera_file(root, serial), "camera", serial, serial, device_type, data)


def load_camera(root: Path, serial: str, device_type: str, resolution: tuple[int, int] | None = None) -> dict:
    """The camera's stored data; with `resolution` (width, height), the colour intrinsics must be for it."""
    path, how = camera_file(root, serial), _camera_how(serial)
    record = _read(path, "camera", serial, device_type, f"camera {serial}", how)
    _check_serial(record, serial, path, how)
    color = record["data"].get("intrinsics", {}).get("color")
    if resolution is not None and (color is None or (color["width"], color["height"]) != tuple(resolution)):
        got = None if color is None else f"{color['width']}x{color['height']}"
        raise CalibrationMismatchError(
            f"{path} holds colour intrinsics for {got}, the camera is configured for "
            f"{resolution[0]}x{resolution[1]}: run `{how}` with this resolution"
        )
    return record
