"""A stateful stand-in for lerobot's Feetech / Dynamixel motor buses, patched in where lerobot's robot classes build
their bus, as lerobot's own tests do (tests/robots/test_so100_follower.py patches the bus class with a mock).

Goal positions become present positions at once (an ideal servo); torque, calibration on the motors and every
write are recorded so tests can check what "reached the motors". Normalised units throughout (no encoder maths).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ClassVar
from unittest.mock import patch

from lerobot.motors import MotorCalibration

RESOLUTION = {"sts3215": 4096, "xl430-w250": 4096, "xl330-m288": 4096}


def calibration_for(motors: dict, span: int = 2048) -> dict[str, MotorCalibration]:
    """A plausible calibration: each joint centred on 2048 with `span` ticks of range (180 degrees)."""
    return {
        name: MotorCalibration(id=m.id, drive_mode=0, homing_offset=0, range_min=2048 - span // 2,
                               range_max=2048 + span // 2)
        for name, m in motors.items()
    }  # fmt: skip


class MockMotorsBus:
    instances: ClassVar[list[MockMotorsBus]] = []
    model_resolution_table = RESOLUTION

    def __init__(self, port: str, motors: dict, calibration: dict | None = None, **_: object):
        self.port, self.motors = port, motors
        self.calibration = calibration if calibration else {}
        self.motor_calibration = calibration_for(motors)  # what the motors themselves hold
        self.is_connected = False
        self.torque = False
        self.present = {name: (50.0 if name == "gripper" else 0.0) for name in motors}
        self.goal_writes: list[dict] = []
        self.writes: list[tuple] = []
        self.disconnect_disable_torque: bool | None = None
        self.fail_connect: Exception | None = None
        MockMotorsBus.instances.append(self)

    def connect(self, handshake: bool = True) -> None:
        if self.fail_connect is not None:
            raise self.fail_connect
        self.is_connected, self.torque = True, True

    def disconnect(self, disable_torque: bool = True) -> None:
        self.disconnect_disable_torque = disable_torque
        if disable_torque:
            self.torque = False
        self.is_connected = False

    @property
    def is_calibrated(self) -> bool:
        return self.calibration == self.motor_calibration

    def read_calibration(self) -> dict:
        return dict(self.motor_calibration)

    def write_calibration(self, calibration: dict, cache: bool = True) -> None:
        self.motor_calibration = dict(calibration)
        if cache:
            self.calibration = dict(calibration)

    def sync_read(self, data_name: str, motors=None, **_: object) -> dict:
        if data_name != "Present_Position":
            raise NotImplementedError(data_name)
        return dict(self.present)

    def sync_write(self, data_name: str, values: dict, **_: object) -> None:
        if data_name == "Goal_Position":
            self.goal_writes.append(dict(values))
            if self.torque:
                self.present.update(values)

    def write(self, data_name: str, motor: str, value: object, **_: object) -> None:
        self.writes.append((data_name, motor, value))

    def read(self, data_name: str, motor: str, **_: object) -> object:
        return self.present[motor] if data_name == "Present_Position" else 0

    def torque_disabled(self, motors=None):
        return nullcontext()

    def configure_motors(self, *_: object, **__: object) -> None:
        pass

    def enable_torque(self, *_: object, **__: object) -> None:
        self.torque = True

    def disable_torque(self, *_: object, **__: object) -> None:
        self.torque = False

    # lerobot's interactive calibration flow
    def set_half_turn_homings(self, motors=None) -> dict[str, int]:
        return {name: 0 for name in self.motors}

    def record_ranges_of_motion(self, motors=None, display_values: bool = True):
        names = motors or list(self.motors)
        return {n: 1024 for n in names}, {n: 3072 for n in names}


@contextmanager
def mocked_buses():
    """Every lerobot arm built inside gets a MockMotorsBus; yields the list of buses created."""
    MockMotorsBus.instances = []
    with (
        patch("lerobot.robots.so_follower.so_follower.FeetechMotorsBus", MockMotorsBus),
        patch("lerobot.robots.koch_follower.koch_follower.DynamixelMotorsBus", MockMotorsBus),
    ):
        yield MockMotorsBus.instances
