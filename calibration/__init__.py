"""Calibration files: one JSON file per device id, with the date and the device serial (see files.py).

Per-device files live in calibration/robots/<id>.json and calibration/cameras/<serial>.json; drivers load them at
connect and refuse to start when one is missing or belongs to another device.
"""

from calibration.files import (
    CalibrationError,
    CalibrationMismatchError,
    CalibrationMissingError,
    calibration_root,
    camera_file,
    load_camera,
    load_robot,
    robot_file,
    save_camera,
    save_robot,
)

__all__ = [
    "CalibrationError",
    "CalibrationMismatchError",
    "CalibrationMissingError",
    "calibration_root",
    "camera_file",
    "load_camera",
    "load_robot",
    "robot_file",
    "save_camera",
    "save_robot",
]
