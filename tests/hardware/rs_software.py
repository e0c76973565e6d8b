"""A RealSense made of software: pyrealsense2's `software_device` with a colour (and depth) sensor, fed by a thread.

The driver under test opens its sensors exactly as it opens a real camera's; `pause()` stops the frames (an
injected timeout), `resume()` restarts them.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pyrealsense2 as rs


def _intrinsics(w: int, h: int, focal: float) -> rs.intrinsics:
    i = rs.intrinsics()
    i.width, i.height, i.fx, i.fy, i.ppx, i.ppy = w, h, focal, focal, w / 2, h / 2
    i.model, i.coeffs = rs.distortion.none, [0.0] * 5
    return i


class SoftwareRealSense:
    def __init__(
        self,
        serial: str = "000111222333",
        w: int = 64,
        h: int = 48,
        fps: int = 30,
        depth: bool = False,
        image: np.ndarray | None = None,
        focal: float = 60.0,
    ):
        self.serial, self.w, self.h, self.fps, self.focal = serial, w, h, fps, focal
        self.image = image  # a fixed colour image (else a grey level = frame number)
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.name, "Intel RealSense (software)")
        self.sensors: list[tuple[rs.software_sensor, rs.stream_profile, int]] = []
        if depth:
            self._add("Stereo Module", rs.stream.depth, rs.format.z16, 2, uid=0)
            self.sensors[0][0].add_read_only_option(rs.option.depth_units, 0.001)
        self._add("RGB Camera", rs.stream.color, rs.format.rgb8, 3, uid=1)
        if depth:
            same_place = (
                rs.extrinsics()
            )  # depth and colour share an optical centre: aligned depth = raw depth
            same_place.rotation, same_place.translation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], [0.0, 0.0, 0.0]
            self.sensors[0][1].register_extrinsics_to(self.sensors[1][1], same_place)
        self.device.create_matcher(rs.matchers.default)
        self.pushed = 0
        self._run = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)

    def _add(self, name: str, stream: rs.stream, fmt: rs.format, bpp: int, uid: int) -> None:
        sensor = self.device.add_sensor(name)
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height = stream, 0, uid, self.w, self.h
        vs.fps, vs.bpp, vs.fmt, vs.intrinsics = self.fps, bpp, fmt, _intrinsics(self.w, self.h, self.focal)
        self.sensors.append((sensor, sensor.add_video_stream(vs), bpp))

    def devices(self) -> list:
        return [self.device]

    def start(self) -> SoftwareRealSense:
        self._run.set()
        self._thread.start()
        return self

    def pause(self) -> None:
        self._run.clear()

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(timeout=2)

    def push(self, i: int) -> None:
        t_ms = 1_000.0 + i * 1000.0 / self.fps  # a device clock that starts at 1 s
        for sensor, profile, bpp in self.sensors:
            f = rs.software_video_frame()
            if bpp == 2:
                f.pixels = np.full((self.h, self.w), 500 + i % 100, np.uint16)
                f.depth_units = 0.001
            else:
                f.pixels = (
                    self.image if self.image is not None else np.full((self.h, self.w, 3), i % 256, np.uint8)
                )
            f.bpp, f.stride, f.timestamp, f.frame_number = bpp, self.w * bpp, t_ms, i
            f.domain, f.profile = rs.timestamp_domain.hardware_clock, profile.as_video_stream_profile()
            sensor.on_video_frame(f)

    def _feed(self) -> None:
        while not self._stop.is_set():
            self._run.wait()
            if self._stop.is_set():
                return
            self.push(self.pushed)
            self.pushed += 1
            time.sleep(1.0 / self.fps)
