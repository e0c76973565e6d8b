"""The camera contract: connect / read_latest / disconnect, features declared up front, typed errors.

A camera runs its own reader thread; `read_latest()` hands the control loop the newest frame without ever
waiting on the device (lerobot cameras/camera.py `read_latest` works the same way), and refuses a frame older than
the allowed age. Frames carry the device's timestamp and its clock domain next to the host's receipt time.

Camera types are a registry (configs/cameras/*.yaml `list:` entries, `type:`), like robot types.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


class CameraError(RuntimeError):
    """Base class of camera errors; messages say what to check."""


class CameraNotFoundError(CameraError, ConnectionError):
    """No (or not the configured) camera is attached."""


class CameraTimeoutError(CameraError, TimeoutError):
    """The camera stopped delivering frames and reconnecting did not bring it back."""


class StaleFrameError(CameraError):
    """No frame yet, or the newest frame is older than the allowed age."""


@dataclass(frozen=True)
class Frame:
    color: np.ndarray  # (height, width, 3) uint8 RGB
    depth: np.ndarray | None  # (height, width) uint16, aligned to colour; metres = depth * depth_scale
    depth_scale: float | None
    timestamp_ms: float  # device timestamp of the colour frame
    timestamp_domain: str  # its clock: hardware_clock | global_time | system_time
    frame_number: int
    received_s: float  # host time.monotonic() when the reader thread got it
    serial: str


class Camera(ABC):
    name: str
    serial: str | None
    width: int
    height: int
    fps: float
    use_depth: bool

    @property
    def features(self) -> dict[str, tuple[tuple[int, ...], str]]:
        feats = {f"{self.name}.color": ((self.height, self.width, 3), "uint8")}
        if self.use_depth:
            feats[f"{self.name}.depth"] = ((self.height, self.width), "uint16")
        return feats

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def read_latest(self, max_age_s: float | None = None) -> Frame:
        """The newest frame, at once; StaleFrameError when there is none younger than `max_age_s`."""

    @abstractmethod
    def disconnect(self) -> None: ...

    def __enter__(self) -> Camera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


CAMERA_TYPES = {"realsense": "drivers.realsense:RealSenseCamera"}


def make_camera(cam_cfg: Any, calibration_dir: Any = None, **kwargs: Any) -> Camera:
    kind = cam_cfg.get("type")
    if kind not in CAMERA_TYPES:
        raise CameraError(f"unknown camera type {kind!r}; valid types: {', '.join(CAMERA_TYPES)}")
    module, cls = CAMERA_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), cls)(cam_cfg, calibration_dir, **kwargs)


def make_cameras(cameras_cfg: Any, **kwargs: Any) -> dict[str, Camera]:
    """Every camera of configs/cameras/<name>.yaml, by name (not connected)."""
    cams: dict[str, Camera] = {}
    for cam_cfg in (cameras_cfg or {}).get("list") or []:
        cam = make_camera(cam_cfg, (cameras_cfg or {}).get("calibration_dir"), **kwargs)
        if cam.name in cams:
            raise CameraError(f"two cameras are named {cam.name!r}: names must be unique")
        cams[cam.name] = cam
    return cams


class CameraRig:
    """Every configured camera, read together without waiting: what a driver publishes next to the state.

    `snapshot()` gives arrays named by `features` ("<name>.color" (H, W, 3) uint8 RGB, "<name>.depth" (H, W)
    uint16) and per-camera metadata (device timestamp and clock domain, frame number, age at read time), or raises
    the first camera's CameraError (a stalled or lost camera must not pass silently as an old image).
    """

    def __init__(self, cameras: dict[str, Camera]):
        self.cameras = cameras

    @property
    def features(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: v for cam in self.cameras.values() for k, v in cam.features.items()}

    def connect(self) -> None:
        try:
            for cam in self.cameras.values():
                cam.connect()
        except CameraError:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        for cam in self.cameras.values():
            cam.disconnect()

    def snapshot(self, max_age_s: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        import time

        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, dict] = {}
        for name, cam in self.cameras.items():
            f = cam.read_latest(max_age_s)
            arrays[f"{name}.color"] = f.color
            if f.depth is not None:
                arrays[f"{name}.depth"] = f.depth
            meta[name] = {
                "serial": f.serial, "t_ms": f.timestamp_ms, "domain": f.timestamp_domain, "frame": f.frame_number,
                "age_ms": 1e3 * (time.monotonic() - f.received_s), "depth_scale": f.depth_scale,
            }  # fmt: skip
        return arrays, meta

    def __enter__(self) -> CameraRig:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
