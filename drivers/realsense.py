"""Intel RealSense cameras through pyrealsense2: colour (and depth aligned to it) at a configured mode.

The reader thread owns the device. It opens the sensors into a syncer, keeps the newest frame, and reconnects when
no frame arrives within `frame_timeout_s`; after `max_reconnects` reconnects in a row without a frame it stops with
a CameraTimeoutError that `read_latest` raises (a clear error instead of a control loop fed stale images).
The sensor API is used instead of rs.pipeline because it works the same on a real device, on a recording played
back from a .db3/.bag file and on rs.software_device, which is how this file is tested without hardware.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyrealsense2 as rs

from calibration.files import calibration_root, load_camera
from drivers.cameras import (
    Camera,
    CameraError,
    CameraNotFoundError,
    CameraTimeoutError,
    Frame,
    StaleFrameError,
)

log = logging.getLogger(__name__)
DEVICE_TYPE = "realsense"


def connected_devices() -> list[Any]:
    return list(rs.context().query_devices())


def device_serial(device: Any) -> str:
    return str(device.get_info(rs.camera_info.serial_number))


def intrinsics_dict(profile: Any) -> dict:
    i = profile.as_video_stream_profile().get_intrinsics()
    return {
        "width": i.width, "height": i.height, "fx": i.fx, "fy": i.fy, "ppx": i.ppx, "ppy": i.ppy,
        "model": i.model.name, "coeffs": [float(c) for c in i.coeffs],
    }  # fmt: skip


def find_device(devices: Iterable[Any], serial: str | None) -> Any:
    """The device with this serial, or the only one when no serial is configured; clear errors otherwise."""
    devices = list(devices)
    serials = [device_serial(d) for d in devices]
    if not devices:
        raise CameraNotFoundError(
            "no RealSense camera found: plug it into a USB 3 port (a USB 2 port or hub often fails), "
            "check that `rs-enumerate-devices` lists it, and that your user may access it (udev rules)"
        )
    if serial is None:
        if len(devices) > 1:
            raise CameraNotFoundError(
                f"{len(devices)} RealSense cameras found ({serials}): set each camera's serial"
            )
        return devices[0]
    if str(serial) not in serials:
        raise CameraNotFoundError(f"no RealSense with serial {serial}; connected: {serials or 'none'}")
    return devices[serials.index(str(serial))]


class RealSenseCamera(Camera):
    def __init__(
        self, cam_cfg: Any, calibration_dir: Any = None, device_source: Callable[[], Iterable] | None = None
    ):
        self.name = str(cam_cfg.get("name", "camera"))
        serial = cam_cfg.get("serial")
        self.serial = None if serial is None else str(serial)
        self.width, self.height = int(cam_cfg.get("width", 640)), int(cam_cfg.get("height", 480))
        self.fps = float(cam_cfg.get("fps", 30))
        self.use_depth = bool(cam_cfg.get("depth", False))
        self.global_time = bool(cam_cfg.get("global_time", True))
        self.frame_timeout_s = float(cam_cfg.get("frame_timeout_s", 0.5))
        self.max_reconnects = int(cam_cfg.get("max_reconnects", 3))
        self.warmup_frames = int(cam_cfg.get("warmup_frames", 15))
        self.warmup_timeout_s = float(cam_cfg.get("warmup_timeout_s", 5.0))
        self.max_age_s = float(cam_cfg.get("max_age_s", 3.0 / self.fps))
        self.require_calibration = bool(cam_cfg.get("require_calibration", True))
        self.calibration_root = calibration_root(calibration_dir)
        self._devices = device_source or connected_devices
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._error: CameraError | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._open_sensors: list[Any] = []
        self.calibration: dict | None = None  # the stored file's record (data: intrinsics, extrinsics)
        self.intrinsics: dict[str, dict] = {}
        self.depth_scale: float | None = None
        self.frames = self.timeouts = self.reconnects = 0

    # ---- lifecycle ----
    @property
    def is_connected(self) -> bool:
        return self._thread is not None

    def connect(self) -> None:
        if self.is_connected:
            raise CameraError(f"camera {self.name} is already connected")
        device = find_device(self._list_devices(), self.serial)
        self.serial = device_serial(device)
        if self.require_calibration:
            self.calibration = load_camera(
                self.calibration_root, self.serial, DEVICE_TYPE, (self.width, self.height)
            )
        self._open(device)
        self._stop.clear()
        self._latest, self._error = None, None
        self._thread = threading.Thread(target=self._run, name=f"realsense-{self.name}", daemon=True)
        self._thread.start()
        self._warm_up()
        log.info("camera %s (RealSense %s) streaming %dx%d@%g%s", self.name, self.serial, self.width,
                 self.height, self.fps, " + aligned depth" if self.use_depth else "")  # fmt: skip

    def _warm_up(self) -> None:
        """Auto-exposure settles over the first frames; a camera that never delivers fails here, not mid-run."""
        deadline = time.monotonic() + self.warmup_timeout_s
        while self.frames < self.warmup_frames and self._error is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.frames < self.warmup_frames:
            error = self._error
            self.disconnect()
            raise CameraTimeoutError(
                f"camera {self.name} ({self.serial}) delivered {self.frames}/{self.warmup_frames} warm-up frames in "
                f"{self.warmup_timeout_s:g} s: check the cable (USB 3) and that no other program uses the camera"
            ) from error

    def disconnect(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=max(2.0, 3 * self.frame_timeout_s))
        if self._thread.is_alive():
            log.warning("camera %s reader thread did not stop", self.name)
        self._thread = None
        self._close()

    def _list_devices(self) -> list[Any]:
        try:
            return list(self._devices())
        except RuntimeError as e:
            raise CameraNotFoundError(f"librealsense cannot list devices ({e}): is libusb installed?") from e

    def _open(self, device: Any) -> None:
        wanted = [(rs.stream.color, rs.format.rgb8)] + (
            [(rs.stream.depth, rs.format.z16)] if self.use_depth else []
        )
        self._sync = rs.syncer()
        self._align = rs.align(rs.stream.color) if self.use_depth else None
        for stream, fmt in wanted:
            sensor, profile = self._find_profile(device, stream, fmt)
            if self.global_time and sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1)  # timestamps on the host clock domain
            if stream == rs.stream.depth and sensor.supports(rs.option.depth_units):
                self.depth_scale = float(sensor.get_option(rs.option.depth_units))
            self.intrinsics[stream.name] = intrinsics_dict(profile)
            sensor.open(profile)
            self._open_sensors.append(sensor)
        for sensor in self._open_sensors:
            sensor.start(self._sync)

    def _find_profile(self, device: Any, stream: Any, fmt: Any) -> tuple[Any, Any]:
        modes = []
        for sensor in device.query_sensors():
            for p in sensor.get_stream_profiles():
                if p.stream_type() != stream or p.format() != fmt:
                    continue
                v = p.as_video_stream_profile()
                modes.append(f"{v.width()}x{v.height()}@{p.fps()}")
                if (v.width(), v.height(), p.fps()) == (self.width, self.height, int(self.fps)):
                    return sensor, p
        raise CameraError(
            f"camera {self.name} ({self.serial}) has no {stream.name} {fmt.name} mode "
            f"{self.width}x{self.height}@{self.fps:g}; available: {sorted(set(modes)) or 'none'}"
        )

    def _close(self) -> None:
        for sensor in self._open_sensors:
            for step in (sensor.stop, sensor.close):
                try:
                    step()
                except RuntimeError as e:  # already stopped, or the device is gone: nothing left to release
                    log.debug("camera %s: %s", self.name, e)
        self._open_sensors = []

    # ---- reader thread ----
    def _run(self) -> None:
        failures = 0  # reconnects in a row without a frame
        while not self._stop.is_set():
            ok, frames = self._sync.try_wait_for_frames(int(self.frame_timeout_s * 1000))
            if ok:
                failures = 0
                self._keep(frames)
                continue
            if self._stop.is_set():
                break
            self.timeouts += 1
            if failures >= self.max_reconnects:
                self._fail(failures)
                break
            failures += 1
            self._reconnect(failures)

    def _keep(self, frames: Any) -> None:
        color = frames.get_color_frame()
        depth = frames.get_depth_frame() if self.use_depth else None
        if not color or (self.use_depth and not depth):
            return  # an incomplete set (the syncer matches depth and colour by time): wait for the next
        if depth:
            depth = self._align.process(frames).get_depth_frame()
        frame = Frame(
            color=np.asanyarray(color.get_data()).copy(),  # the SDK recycles its buffer after this call
            depth=np.asanyarray(depth.get_data()).copy() if depth else None,
            depth_scale=self.depth_scale if depth else None,
            timestamp_ms=float(color.get_timestamp()),
            timestamp_domain=color.get_frame_timestamp_domain().name,
            frame_number=int(color.get_frame_number()),
            received_s=time.monotonic(),
            serial=str(self.serial),
        )
        with self._lock:
            self._latest = frame
            self.frames += 1

    def _reconnect(self, attempt: int) -> None:
        log.warning("camera %s (%s): no frame for %.2f s, reconnecting (%d/%d)", self.name, self.serial,
                    self.frame_timeout_s, attempt, self.max_reconnects)  # fmt: skip
        self.reconnects += 1
        self._close()
        try:
            self._open(find_device(self._list_devices(), self.serial))
        except CameraError as e:  # unplugged for now: the next timeout tries again
            log.warning("camera %s: reconnect failed: %s", self.name, e)
            self._stop.wait(self.frame_timeout_s)

    def _fail(self, failures: int) -> None:
        error = CameraTimeoutError(
            f"camera {self.name} ({self.serial}) delivered no frame for {self.frame_timeout_s:g} s after "
            f"{failures} reconnects: check the USB cable and port (USB 3), the camera's power, and that no other "
            "program holds it; `expo-robot check` tests it"
        )
        log.error("%s", error)
        with self._lock:
            self._error = error

    # ---- frames ----
    def read_latest(self, max_age_s: float | None = None) -> Frame:
        if not self.is_connected:
            raise CameraError(f"camera {self.name} is not connected: call connect() first")
        with self._lock:
            frame, error = self._latest, self._error
        if error is not None:
            raise error
        limit = self.max_age_s if max_age_s is None else max_age_s
        if frame is None:
            raise StaleFrameError(f"camera {self.name} has no frame yet")
        age = time.monotonic() - frame.received_s
        if age > limit:
            raise StaleFrameError(
                f"newest frame of camera {self.name} is {age * 1e3:.0f} ms old (max {limit * 1e3:.0f} ms): "
                "the camera is stalling (see the log for reconnects)"
            )
        return frame
