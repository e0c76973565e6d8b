"""`expo-robot calibrate robot|camera`: calibrate a device and store its file under calibration/.

robot:  lerobot's own interactive flow (middle pose, then each joint through its range), stored as
        calibration/robots/<robot.id>.json with the date and the USB adapter's serial.
        expo-robot calibrate robot robot=so101 robot.id=left_arm robot.port=/dev/ttyACM0
camera: intrinsics read from each configured RealSense (or the named ones) at its configured mode, stored as
        calibration/cameras/<serial>.json; with the word `charuco`, also the camera-to-robot extrinsics from a
        ChArUco board lying at `cameras.charuco.board_in_robot` (calibration/charuco.py).
        expo-robot calibrate camera cameras=realsense [front] [charuco]
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from calibration.charuco import robot_from_camera
from calibration.files import calibration_root, save_camera, save_robot
from drivers.cameras import make_camera
from drivers.lerobot_arm import build_lerobot_robot, port_serial
from drivers.realsense import DEVICE_TYPE
from expo_robot.config import ConfigError

log = logging.getLogger(__name__)
USAGE = "usage: expo-robot calibrate robot|camera [CAMERA NAME ...] [overrides]"


def calibrate_robot(robot_cfg: Any) -> Path:
    if robot_cfg.get("type") != "lerobot_arm":
        raise ConfigError(f"robot {robot_cfg.get('name')} ({robot_cfg.get('type')}) has nothing to calibrate: "
                          "choose a hardware robot, e.g. robot=so101")  # fmt: skip
    # lerobot's flow starts from scratch when its calibration folder is empty; ours is the stored copy.
    with tempfile.TemporaryDirectory(prefix="lerobot-cal-") as tmp:
        robot = build_lerobot_robot(robot_cfg, Path(tmp))
        robot.connect(calibrate=False)
        try:
            robot.calibrate()
        finally:
            robot.disconnect()
    path = save_robot(calibration_root(robot_cfg.get("calibration_dir")), str(robot_cfg.id),
                      str(robot_cfg.lerobot_type), port_serial(str(robot_cfg.port)), robot.calibration)  # fmt: skip
    log.info("robot %s calibrated: %s", robot_cfg.id, path)
    return path


def calibrate_cameras(
    cameras_cfg: Any, names: list[str], charuco: bool = False, **camera_kwargs: Any
) -> list[Path]:
    board_cfg = (cameras_cfg or {}).get("charuco") if charuco else None
    if charuco and not board_cfg:
        raise ConfigError(
            "`charuco` needs a cameras.charuco section (board size, dictionary, board_in_robot)"
        )
    listed = list((cameras_cfg or {}).get("list") or [])
    chosen = [c for c in listed if not names or c.get("name") in names]
    if not chosen:
        have = [c.get("name") for c in listed]
        raise ConfigError(f"no camera to calibrate (configured: {have or 'none'}): choose cameras=realsense")
    root = calibration_root(cameras_cfg.get("calibration_dir"))
    paths = []
    for cam_cfg in chosen:
        plain = OmegaConf.to_container(cam_cfg) if isinstance(cam_cfg, DictConfig) else dict(cam_cfg)
        with make_camera({**plain, "require_calibration": False}, root, **camera_kwargs) as cam:
            extrinsics = None
            if board_cfg:
                extrinsics = robot_from_camera(
                    cam.read_latest(max_age_s=1.0).color, cam.intrinsics["color"], board_cfg
                )
                log.info("camera %s: board found, %d corners, reprojection %.2f px", cam.name,
                         extrinsics["corners"], extrinsics["reprojection_px"])  # fmt: skip
            paths.append(save_camera(root, str(cam.serial), DEVICE_TYPE, cam.intrinsics, extrinsics))
        log.info("camera %s (%s) intrinsics stored: %s", cam.name, cam.serial, paths[-1])
    return paths


def main(cfg: DictConfig, words: list[str]) -> int:
    if not words or words[0] not in ("robot", "camera"):
        raise ConfigError(USAGE)
    if words[0] == "robot":
        print(f"calibration stored: {calibrate_robot(cfg.robot)}")
    else:
        names = [w for w in words[1:] if w != "charuco"]
        for path in calibrate_cameras(cfg.get("cameras"), names, charuco="charuco" in words[1:]):
            print(f"calibration stored: {path}")
    return 0
