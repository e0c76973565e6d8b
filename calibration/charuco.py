"""Camera-to-robot extrinsics from one image of a ChArUco board lying at a known pose in the robot's base frame.

The board's pose in the camera comes from its corners (OpenCV aruco) and the stored intrinsics; with the board's
pose in the robot frame (measured once, from the config) the camera's pose in the robot frame follows:
robot_from_camera = robot_from_board @ inverse(camera_from_board). Needs OpenCV with the aruco module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.files import CalibrationError


def _cv2() -> Any:
    try:
        import cv2

        cv2.aruco.CharucoDetector  # noqa: B018 (present from OpenCV 4.7)
    except (ImportError, AttributeError) as e:
        raise CalibrationError(
            "ChArUco extrinsics need OpenCV >= 4.7 with the aruco module (opencv-python)"
        ) from e
    return cv2


def make_board(board_cfg: Any) -> Any:
    """squares_x, squares_y, square_m, marker_m, dictionary (an OpenCV name such as DICT_5X5_100)."""
    cv2 = _cv2()
    name = str(board_cfg.get("dictionary", "DICT_5X5_100"))
    if not hasattr(cv2.aruco, name):
        raise CalibrationError(f"unknown ArUco dictionary {name!r} (use e.g. DICT_5X5_100)")
    dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))
    size = (int(board_cfg["squares_x"]), int(board_cfg["squares_y"]))
    return cv2.aruco.CharucoBoard(
        size, float(board_cfg["square_m"]), float(board_cfg["marker_m"]), dictionary
    )


def camera_matrix(intrinsics: dict) -> tuple[np.ndarray, np.ndarray]:
    k = np.array(
        [[intrinsics["fx"], 0, intrinsics["ppx"]], [0, intrinsics["fy"], intrinsics["ppy"]], [0, 0, 1]]
    )
    return k, np.asarray(intrinsics.get("coeffs", [0.0] * 5), np.float64)


def pose_matrix(xyz_rpy: Any) -> np.ndarray:
    """4x4 transform from [x, y, z, roll, pitch, yaw] (metres, radians; R = Rz(yaw) Ry(pitch) Rx(roll))."""
    x, y, z, r, p, w = (float(v) for v in xyz_rpy)
    cr, sr, cp, sp, cw, sw = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(w), np.sin(w)
    rot = np.array([[cw, -sw, 0], [sw, cw, 0], [0, 0, 1]]) @ np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    t = np.eye(4)
    t[:3, :3] = rot @ np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    t[:3, 3] = (x, y, z)
    return t


def board_in_camera(
    image_rgb: np.ndarray, intrinsics: dict, board: Any, min_corners: int = 6
) -> tuple[np.ndarray, dict]:
    """camera_from_board (4x4) and the fit's quality (corners used, mean reprojection error in pixels)."""
    cv2 = _cv2()
    gray = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(gray)
    n = 0 if ids is None else len(ids)
    if n < min_corners:
        raise CalibrationError(
            f"found {n} ChArUco corners (need {min_corners}): show the whole board to the camera, well lit, "
            "and check the board settings (squares, sizes, dictionary)"
        )
    obj, img = board.matchImagePoints(corners, ids)
    k, dist = camera_matrix(intrinsics)
    ok, rvec, tvec = cv2.solvePnP(obj, img, k, dist)
    if not ok:
        raise CalibrationError("the board pose could not be solved: move the board or the camera and retry")
    projected, _ = cv2.projectPoints(obj, rvec, tvec, k, dist)
    err = float(np.linalg.norm(projected.reshape(-1, 2) - img.reshape(-1, 2), axis=1).mean())
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    return t, {"corners": n, "reprojection_px": err}


def robot_from_camera(image_rgb: np.ndarray, intrinsics: dict, board_cfg: Any) -> dict:
    """The extrinsics record stored in the camera's calibration file."""
    cam_board, quality = board_in_camera(image_rgb, intrinsics, make_board(board_cfg))
    robot_board = pose_matrix(board_cfg["board_in_robot"])
    return {
        "robot_from_camera": (robot_board @ np.linalg.inv(cam_board)).tolist(),
        "board": {k: board_cfg[k] for k in ("squares_x", "squares_y", "square_m", "marker_m", "dictionary")},
        "board_in_robot": [float(v) for v in board_cfg["board_in_robot"]],
        **quality,
    }
