"""The RealSense driver on pyrealsense2's software device and on a recording played back from a .db3 file."""

import contextlib
import shutil
import time

import numpy as np
import pyrealsense2 as rs
import pytest
from rs_software import SoftwareRealSense

from calibration.files import (
    CalibrationMismatchError,
    CalibrationMissingError,
    camera_file,
    load_camera,
    save_camera,
)
from drivers.cameras import (
    CameraError,
    CameraNotFoundError,
    CameraRig,
    CameraTimeoutError,
    StaleFrameError,
    make_cameras,
)
from drivers.realsense import RealSenseCamera

pytestmark = pytest.mark.timeout(60)


def cam_cfg(**kw):
    cfg = {"type": "realsense", "name": "wrist", "width": 64, "height": 48, "fps": 30, "require_calibration": False,
           "warmup_frames": 3, "frame_timeout_s": 0.15, "max_reconnects": 2}  # fmt: skip
    return {**cfg, **kw}


@pytest.fixture
def sw():
    dev = SoftwareRealSense().start()
    yield dev
    dev.stop()


def wait_for(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_frames_match_the_declared_features_and_carry_device_timestamps(sw):
    with RealSenseCamera(cam_cfg(), device_source=sw.devices) as cam:
        assert cam.features == {"wrist.color": ((48, 64, 3), "uint8")}
        first = cam.read_latest()
        assert wait_for(lambda: cam.read_latest().frame_number > first.frame_number + 2)
        last = cam.read_latest()
    for f in (first, last):
        assert f.color.shape == (48, 64, 3) and f.color.dtype == np.uint8 and f.depth is None
        assert f.timestamp_domain == "hardware_clock" and f.serial == sw.serial
        assert f.timestamp_ms == pytest.approx(1000.0 + f.frame_number * 1000.0 / 30)  # the device's clock
        assert f.color[0, 0, 0] == f.frame_number % 256
    assert last.received_s > first.received_s


def test_aligned_depth_comes_with_the_colour_frame():
    dev = SoftwareRealSense(depth=True).start()
    try:
        with RealSenseCamera(cam_cfg(depth=True), device_source=dev.devices) as cam:
            assert cam.features["wrist.depth"] == ((48, 64), "uint16")
            f = cam.read_latest()
    finally:
        dev.stop()
    assert f.depth.shape == (48, 64) and f.depth.dtype == np.uint16
    assert f.depth[24, 32] == 500 + f.frame_number % 100 and f.depth_scale == pytest.approx(0.001)


def test_reconnects_after_injected_timeouts_and_delivers_again(sw):
    with RealSenseCamera(cam_cfg(max_reconnects=5), device_source=sw.devices) as cam:
        sw.pause()
        assert wait_for(lambda: cam.reconnects >= 1)
        with pytest.raises(StaleFrameError, match="ms old"):
            time.sleep(0.1)
            cam.read_latest(max_age_s=0.05)
        seen = cam.frames
        sw.resume()
        assert wait_for(lambda: cam.frames > seen + 3)
        assert cam.read_latest().frame_number >= seen


def test_gives_up_with_a_clear_error_after_n_reconnects(sw):
    with RealSenseCamera(cam_cfg(), device_source=sw.devices) as cam:
        sw.pause()
        assert wait_for(lambda: cam._error is not None)
        with pytest.raises(CameraTimeoutError, match="after 2 reconnects: check the USB cable"):
            cam.read_latest()
        assert cam.reconnects == 2


def test_read_latest_never_waits_for_the_device(sw):
    with RealSenseCamera(cam_cfg(), device_source=sw.devices) as cam:
        sw.pause()
        t0 = time.perf_counter()
        for _ in range(100):
            with contextlib.suppress(StaleFrameError):
                cam.read_latest()
        assert (time.perf_counter() - t0) / 100 < 0.005


def test_no_device_is_a_clear_error():
    with pytest.raises(CameraNotFoundError, match="no RealSense camera found: plug it into a USB 3 port"):
        RealSenseCamera(cam_cfg()).connect()  # the real librealsense context: nothing attached here
    with pytest.raises(CameraNotFoundError, match="no RealSense camera found"):
        RealSenseCamera(cam_cfg(), device_source=list).connect()


def test_wrong_serial_and_mode_name_what_is_there(sw):
    with pytest.raises(CameraNotFoundError, match=r"serial 999; connected: \['000111222333'\]"):
        RealSenseCamera(cam_cfg(serial="999"), device_source=sw.devices).connect()
    with pytest.raises(CameraError, match=r"no color rgb8 mode 1280x720@30; available: \['64x48@30'\]"):
        RealSenseCamera(cam_cfg(width=1280, height=720), device_source=sw.devices).connect()


def test_several_cameras_by_serial_read_together():
    a, b = SoftwareRealSense("111").start(), SoftwareRealSense("222", depth=True).start()
    cfg = {"list": [cam_cfg(name="left", serial="222", depth=True), cam_cfg(name="right", serial="111")]}
    rig = CameraRig(make_cameras(cfg, device_source=lambda: [a.device, b.device]))
    try:
        with rig:
            frames = {name: cam.read_latest() for name, cam in rig.cameras.items()}
            assert frames["left"].depth is not None and frames["right"].depth is None
            assert frames["left"].serial == "222" and frames["right"].serial == "111"
            assert all(f.timestamp_domain == "hardware_clock" for f in frames.values())
            assert all(time.monotonic() - f.received_s < 1.0 for f in frames.values())
            b.pause()
            time.sleep(0.2)
            with pytest.raises(StaleFrameError, match="camera left"):
                rig.cameras["left"].read_latest(max_age_s=0.1)
    finally:
        a.stop(), b.stop()


def test_camera_calibration_round_trip_and_refusals(sw, tmp_path):
    cfg = cam_cfg(require_calibration=True)
    with pytest.raises(
        CalibrationMissingError, match=r"camera 000111222333 .*expo-robot calibrate camera cameras="
    ):
        RealSenseCamera(cfg, tmp_path, device_source=sw.devices).connect()
    with RealSenseCamera(cam_cfg(), device_source=sw.devices) as probe:
        intrinsics = probe.intrinsics
    assert intrinsics["color"] == {"width": 64, "height": 48, "fx": 60.0, "fy": 60.0, "ppx": 32.0, "ppy": 24.0,
                                   "model": "none", "coeffs": [0.0] * 5}  # fmt: skip
    save_camera(tmp_path, sw.serial, "realsense", intrinsics)
    with RealSenseCamera(cfg, tmp_path, device_source=sw.devices) as cam:
        assert cam.calibration["data"]["intrinsics"]["color"]["fx"] == 60.0
    with pytest.raises(CalibrationMismatchError, match="for 64x48, the camera is configured for 32x24"):
        load_camera(tmp_path, sw.serial, "realsense", (32, 24))
    shutil.copy(camera_file(tmp_path, sw.serial), camera_file(tmp_path, "555"))  # another camera's file
    with pytest.raises(CalibrationMismatchError, match="'000111222333', not of realsense '555'"):
        load_camera(tmp_path, "555", "realsense")


def test_recorded_session_plays_back_through_the_driver(sw, tmp_path):
    path = str(tmp_path / "session.db3")
    recording = [rs.recorder(path, sw.device)]
    with RealSenseCamera(cam_cfg(), device_source=lambda: recording) as cam:
        assert wait_for(lambda: cam.frames >= 10)
    recording.clear()  # the recorder closes its file when released
    playback = rs.context().load_device(path)
    with RealSenseCamera(cam_cfg(), device_source=lambda: [playback]) as cam:
        f = cam.read_latest(max_age_s=1.0)
    assert f.serial == sw.serial and f.timestamp_ms == pytest.approx(1000.0 + f.frame_number * 1000.0 / 30)
    assert f.color[0, 0, 0] == f.frame_number % 256
