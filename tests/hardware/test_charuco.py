"""Camera-to-robot extrinsics from a synthetic ChArUco view: the software camera shows a board at a known pose."""

import cv2
import numpy as np
import pytest
from rs_software import SoftwareRealSense

from calibration.charuco import board_in_camera, make_board, pose_matrix
from calibration.files import CalibrationError, load_camera
from expo_robot.config import load_config
from expo_robot.runtime import calibrate

pytestmark = pytest.mark.timeout(120)
BOARD = {"squares_x": 5, "squares_y": 7, "square_m": 0.04, "marker_m": 0.03, "dictionary": "DICT_5X5_100",
         "board_in_robot": [0.3, 0.05, 0.0, 0.0, 0.0, 0.5]}  # fmt: skip
INTR = {"fx": 600.0, "fy": 600.0, "ppx": 320.0, "ppy": 240.0, "coeffs": [0.0] * 5}
CAMERA_FROM_BOARD = pose_matrix([-0.1, -0.14, 0.6, 0.3, -0.2, 0.1])


def board_view(w=640, h=480, ppm=2000):
    """What a pinhole camera (INTR) sees of the board at CAMERA_FROM_BOARD: the board image warped by K [r1 r2 t]."""
    board = make_board(BOARD)
    flat = board.generateImage((int(0.2 * ppm), int(0.28 * ppm)), marginSize=0)
    k = np.array([[INTR["fx"], 0, INTR["ppx"]], [0, INTR["fy"], INTR["ppy"]], [0, 0, 1.0]])
    plane = np.column_stack([CAMERA_FROM_BOARD[:3, 0], CAMERA_FROM_BOARD[:3, 1], CAMERA_FROM_BOARD[:3, 3]])
    warped = cv2.warpPerspective(flat, k @ plane @ np.diag([1 / ppm, 1 / ppm, 1]), (w, h), flags=cv2.INTER_AREA,
                                 borderValue=255)  # fmt: skip
    return np.ascontiguousarray(np.repeat(warped[..., None], 3, axis=2))


def test_board_pose_is_recovered_to_a_millimetre():
    est, quality = board_in_camera(board_view(), INTR, make_board(BOARD))
    assert quality["corners"] >= 20 and quality["reprojection_px"] < 0.5
    np.testing.assert_allclose(est[:3, 3], CAMERA_FROM_BOARD[:3, 3], atol=1e-3)
    np.testing.assert_allclose(est[:3, :3], CAMERA_FROM_BOARD[:3, :3], atol=5e-3)


def test_no_board_in_view_is_a_clear_error():
    with pytest.raises(CalibrationError, match="found 0 ChArUco corners"):
        board_in_camera(np.full((480, 640, 3), 255, np.uint8), INTR, make_board(BOARD))


def test_calibrate_camera_charuco_stores_robot_from_camera(tmp_path):
    sw = SoftwareRealSense(serial="888", w=640, h=480, image=board_view(), focal=600.0).start()
    try:
        cfg = load_config(["cameras=realsense", f"cameras.calibration_dir={tmp_path}", "cameras.list.0.warmup_frames=2",
                           f"cameras.charuco.board_in_robot={BOARD['board_in_robot']}"])  # fmt: skip
        calibrate.calibrate_cameras(cfg.cameras, [], charuco=True, device_source=sw.devices)
    finally:
        sw.stop()
    stored = load_camera(tmp_path, "888", "realsense", (640, 480))["data"]
    assert stored["intrinsics"]["color"]["fx"] == 600.0  # read from the device, used for the fit
    ext = stored["extrinsics"]
    assert ext["corners"] >= 20 and ext["board_in_robot"] == BOARD["board_in_robot"]
    expected = pose_matrix(BOARD["board_in_robot"]) @ np.linalg.inv(CAMERA_FROM_BOARD)
    np.testing.assert_allclose(np.asarray(ext["robot_from_camera"]), expected, atol=2e-3)
