"""Real hardware, behind the `hardware` marker (deselected by default): `pytest -m hardware tests/hardware`.

Uses the configured devices as they are: robot=so101 on its port with its calibration file, one RealSense.
"""

import numpy as np
import pytest

from drivers.realsense import RealSenseCamera
from drivers.robot import make_robot
from expo_robot.config import load_config

pytestmark = [pytest.mark.hardware, pytest.mark.timeout(60)]


def test_real_arm_observes_and_holds_its_pose():
    cfg = load_config(["robot=so101"])
    with make_robot(cfg.robot, cfg.task) as arm:
        before = arm.observe()
        arm.hold()
        after = arm.observe()
    assert before.shape == (arm.state_dim,) and np.all(np.abs(after - before) < 2.0)  # degrees


def test_real_realsense_streams_fresh_frames():
    with RealSenseCamera({"name": "real", "require_calibration": False}) as cam:
        frame = cam.read_latest()
    assert frame.color.shape == (480, 640, 3) and frame.timestamp_ms > 0
