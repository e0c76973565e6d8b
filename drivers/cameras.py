"""The camera contract: connect / read_latest / disconnect, features declared up front, typed errors.

A camera runs its own reader thread; `read_latest()` hands the control loop the newest frame without ever
waiting on the device (lerobot cameras/camera.py `read_latest` works the same way), and refuses a frame older than
the allowed age. Frames carry the device's timestamp and its clock domain next to the host's receipt time.

Camera types are a registry (configs/cameras/*.yaml `list:` entries, `type:`), like robot types. A type whose
class sets `needs_robot` gets the driver's robot (the `sim` camera renders the simulated robot's scene).
"""

from __future__ import annotations

import importlib
import itertools
import time
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
    # True: read_latest captures the frame itself, now (a simulator render), so it shows the published state;
    # False: a reader thread delivers frames and read_latest hands over the newest without waiting.
    synchronous: bool = False
    needs_robot: bool = False  # make_camera passes robot= (the robot the driver runs)

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

    def timing(self) -> dict[str, float]:
        """Figures about producing frames that the driver publishes with its loop's (a render's time); none here."""
        return {}

    def __enter__(self) -> Camera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


class SimCamera(Camera):
    """A MuJoCo camera of the simulated robot the driver runs (configs/cameras/sim.yaml), rendered on read.

    Rendering is synchronous (it is the simulator): the frame shows exactly the state it is published with. How the
    scene is drawn (shadows, multisampling, ...) is the robot's render profile (configs/robot/sim_*.yaml `render`).
    """

    synchronous = True
    needs_robot = True

    def __init__(self, cam_cfg: Any, calibration_dir: Any = None, robot: Any = None):
        self.name = str(cam_cfg.get("name", "camera"))
        self.camera = cam_cfg.get("camera")  # MuJoCo camera name; None: the default free camera
        self.serial = f"sim:{self.camera or 'free'}"
        self.width, self.height = int(cam_cfg.get("width", 96)), int(cam_cfg.get("height", 96))
        self.fps = float(cam_cfg.get("fps", 0) or 0)  # renders on demand: no rate of its own
        self.use_depth = False
        self.robot = robot
        self._task: Any = None
        self._frames = itertools.count()

    @property
    def is_connected(self) -> bool:
        return self._task is not None

    def connect(self) -> None:
        task = getattr(self.robot, "task", None)
        if not callable(getattr(task, "render", None)):
            what = (
                f"robot {self.robot.name!r} is not simulated"
                if self.robot is not None
                else "there is no robot"
            )
            raise CameraNotFoundError(
                f"camera {self.name!r} (type sim) renders the simulated robot, but {what}: "
                "use cameras=none or a real camera (cameras=realsense) with this robot"
            )
        if self.camera is not None and self.camera not in task.camera_names():
            raise CameraNotFoundError(
                f"camera {self.name!r}: the simulator has no camera {self.camera!r}; "
                f"its cameras: {task.camera_names()} (camera: null is the free camera)"
            )
        self._task = task

    def read_latest(self, max_age_s: float | None = None) -> Frame:
        if self._task is None:
            raise CameraError(f"camera {self.name} is not connected: call connect() first")
        try:
            color = self._task.render(self.camera, self.height, self.width)
        except Exception as e:  # MuJoCo/GL failures: the driver's camera-lost path (e-stop), not a dead loop
            raise CameraError(f"camera {self.name}: rendering failed: {e}") from e
        sim_ms = 1e3 * self._task.sim_time()
        return Frame(color, None, None, sim_ms, "sim_time", next(self._frames), time.monotonic(), self.serial)

    def timing(self) -> dict[str, float]:
        """render_frames, render_ms (mean) and max_render_ms of the simulator's renders since it started."""
        return self._task.render_times.summary() if self._task is not None else {}

    def disconnect(self) -> None:
        self._task = None


def configured_shapes(cameras_cfg: Any) -> dict[str, tuple[int, int, int]]:
    """name -> (height, width, 3) of a configs/cameras entry: the frames a driver with this config publishes."""
    cams = (cameras_cfg or {}).get("list") or []
    return {str(c["name"]): (int(c["height"]), int(c["width"]), 3) for c in cams}


CAMERA_TYPES = {"realsense": "drivers.realsense:RealSenseCamera", "sim": "drivers.cameras:SimCamera"}


def make_camera(cam_cfg: Any, calibration_dir: Any = None, robot: Any = None, **kwargs: Any) -> Camera:
    kind = cam_cfg.get("type")
    if kind not in CAMERA_TYPES:
        raise CameraError(f"unknown camera type {kind!r}; valid types: {', '.join(CAMERA_TYPES)}")
    module, name = CAMERA_TYPES[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    if cls.needs_robot:
        kwargs["robot"] = robot
    return cls(cam_cfg, calibration_dir, **kwargs)


def make_cameras(cameras_cfg: Any, robot: Any = None, **kwargs: Any) -> dict[str, Camera]:
    """Every camera of configs/cameras/<name>.yaml, by name (not connected). `robot`: for cameras that render it."""
    cams: dict[str, Camera] = {}
    for cam_cfg in (cameras_cfg or {}).get("list") or []:
        cam = make_camera(cam_cfg, (cameras_cfg or {}).get("calibration_dir"), robot, **kwargs)
        if cam.name in cams:
            raise CameraError(f"two cameras are named {cam.name!r}: names must be unique")
        cams[cam.name] = cam
    return cams


class CameraRig:
    """Every configured camera, connected and disconnected together. The driver reads each one per observation
    (drivers/server.py `_grab`): a stale frame is counted and published with its age, a lost camera latches the
    e-stop."""

    def __init__(self, cameras: dict[str, Camera]):
        self.cameras = cameras

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

    def timing(self) -> dict[str, float]:
        """Every camera's timing figures in one dict (simulated cameras share their renderer's)."""
        return {k: v for cam in self.cameras.values() for k, v in cam.timing().items()}

    def __enter__(self) -> CameraRig:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
