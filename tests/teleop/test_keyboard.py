"""Keyboard and lerobot device handling without a person or a display: injected key sources, a pty, mocks."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from drivers.teleop import (
    KeyboardTeleop,
    LerobotTeleop,
    QueueKeys,
    TakeoverSchedule,
    TeleopContext,
    TeleopError,
    TeleopNotConnectedError,
    TerminalKeys,
    make_teleop,
)
from expo_robot.config import load_config

pytestmark = pytest.mark.timeout(30)


class PandaSpec:
    action_dim = 4
    action_low = np.array([-1, -1, -1, 0], np.float32)
    action_high = np.array([1, 1, 1, 2], np.float32)


CTX = TeleopContext(np.zeros(21, np.float32), episode=0, step=0)


def keyboard(engaged=True, source=None):
    cfg = load_config(["teleop=keyboard", f"teleop.engaged={str(engaged).lower()}"]).teleop
    return KeyboardTeleop(cfg, PandaSpec(), source or QueueKeys())


def test_not_connected_is_a_typed_error():
    with pytest.raises(TeleopNotConnectedError, match="connect"):
        keyboard().read(CTX)


def test_held_motion_keys_move_on_their_axes_and_gripper_keys_latch():
    keys = QueueKeys()
    with keyboard(source=keys) as kb:
        np.testing.assert_array_equal(kb.read(CTX), [0, 0, 0, 1])  # engaged, nothing held: stand still, hold
        keys.push("w")
        keys.push("a")
        keys.push("w")  # auto-repeat of a held key changes nothing
        np.testing.assert_array_equal(kb.read(CTX), [1, 1, 0, 1])
        keys.push("w", pressed=False)
        keys.push("f")
        keys.tap("c")
        np.testing.assert_array_equal(kb.read(CTX), [0, 1, -1, 2])  # gripper closed and stays closed
        keys.push("a", pressed=False)
        keys.push("f", pressed=False)
        np.testing.assert_array_equal(kb.read(CTX), [0, 0, 0, 2])
        keys.tap("o")
        assert kb.read(CTX)[3] == 0.0
        keys.push("w")
        keys.push("s")  # opposite keys cancel
        assert kb.read(CTX)[0] == 0.0


def test_takeover_key_toggles_and_operator_keys_are_reported_once():
    keys = QueueKeys()
    with keyboard(engaged=False, source=keys) as kb:
        assert kb.read(CTX) is None  # the policy drives
        keys.tap("t")
        assert kb.read(CTX) is not None  # the operator holds the robot
        for k in ("y", "n", "b", "x", "z", "q", "k"):  # k is not mapped: ignored
            keys.tap(k)
        assert kb.events() == ["success", "failure", "rerecord", "estop", "clear_estop", "quit"]
        assert kb.events() == []
        keys.tap("t")
        assert kb.read(CTX) is None


def test_terminal_keys_through_a_pty_release_after_the_last_repeat():
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as stream:
        src = TerminalKeys(release_s=0.1, stream=stream)
        src.start()
        try:
            os.write(master, b"wW")
            deadline, got = time.monotonic() + 5, []
            while time.monotonic() < deadline and ("w", False) not in got:
                got += src.poll()
                time.sleep(0.02)
            assert got[0] == ("w", True) and got.count(("w", True)) == 1  # a repeat is not a new press
            assert ("w", False) in got  # released 0.1 s after the last repeat
        finally:
            src.stop()
            os.close(master)


def test_keys_typed_in_the_launchers_terminal_reach_a_driver_without_one():
    """`finetune` starts the driver in its own session (no controlling terminal) and names the launcher's terminal."""
    from expo_robot.runtime.launcher import operator_terminal

    master, slave = os.openpty()
    try:
        cfg = OmegaConf.create({"teleop": {"type": "keyboard", "source": "terminal", "tty": None}})
        with os.fdopen(os.dup(slave)) as stdin:
            (override,) = operator_terminal(cfg, stdin)
        assert override == f"teleop.tty={os.ttyname(slave)}"
        tty = override.split("=", 1)[1]
        reader = textwrap.dedent(f"""
            import os, time
            from drivers.teleop import TerminalKeys
            os.setsid()  # like the launcher's children: a new session, no controlling terminal
            src = TerminalKeys(path={tty!r}); src.start(); print("ready", flush=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                keys = [k for k, down in src.poll() if down]
                if keys:
                    print("keys", keys, flush=True); break
                time.sleep(0.02)
            src.stop()
        """)
        proc = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        os.write(master, b"t")
        out, _ = proc.communicate(timeout=20)
        assert "keys ['t']" in out
        with open(os.devnull) as not_a_tty:  # CI / a service: nothing to pass on
            assert operator_terminal(cfg, not_a_tty) == []
            assert operator_terminal(OmegaConf.create({"teleop": {"type": "scripted"}}), not_a_tty) == []
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_keys_refuse_a_non_terminal():
    with open(os.devnull) as f, pytest.raises(TeleopError, match="terminal"):
        TerminalKeys(stream=f).start()


def test_takeover_schedule():
    s = TakeoverSchedule(engaged=False, every=2, first=1, start_step=3, steps=2)
    held = {(e, t) for e in range(6) for t in range(10) if s.holds(e, t)}
    assert held == {(e, t) for e in (1, 3, 5) for t in (3, 4)}
    assert TakeoverSchedule(engaged=True).holds(0, 99)
    with pytest.raises(TeleopError):
        TakeoverSchedule.from_config(OmegaConf.create({"engaged": False, "takeover": {"every": -1}}))


class FakeGamepad:
    """Stands in for lerobot's GamepadTeleop: same action dict and event names."""

    def __init__(self):
        self.connected, self.action, self.events = False, {}, {}

    def connect(self):
        self.connected = True

    def disconnect(self):
        self.connected = False

    def get_action(self):
        return dict(self.action)

    def get_teleop_events(self):
        return dict(self.events)


def test_lerobot_gamepad_mapping_and_events():
    from lerobot.teleoperators.utils import TeleopEvents

    cfg = load_config(["teleop=gamepad"]).teleop
    pad = FakeGamepad()
    dev = LerobotTeleop(cfg, PandaSpec(), teleoperator=pad)
    with dev:
        assert pad.connected
        pad.events = {TeleopEvents.IS_INTERVENTION: False}
        assert dev.read(CTX) is None  # intervention button not held: the policy drives
        pad.events = {TeleopEvents.IS_INTERVENTION: True}
        pad.action = {"delta_x": 0.5, "delta_y": -2.0, "delta_z": 0.0, "gripper": 0}  # lerobot: 0 = close
        np.testing.assert_allclose(dev.read(CTX), [0.5, -1.0, 0.0, 2.0])  # clipped; Panda: 2 = close
        pad.action["gripper"] = 2  # lerobot: open
        assert dev.read(CTX)[3] == 0.0
        pad.events = {TeleopEvents.SUCCESS: True, TeleopEvents.TERMINATE_EPISODE: False}
        dev.read(CTX)
        dev.read(CTX)  # still held: reported once
        pad.events = {TeleopEvents.SUCCESS: False}  # released
        dev.read(CTX)
        pad.events = {TeleopEvents.TERMINATE_EPISODE: True, TeleopEvents.RERECORD_EPISODE: False}
        dev.read(CTX)
        assert dev.events() == ["success", "failure"]
    assert not pad.connected


def test_lerobot_device_errors_say_what_to_change():
    cfg = load_config(["teleop=gamepad", "teleop.action_keys=[delta_x]"]).teleop
    with pytest.raises(TeleopError, match="action_keys"):
        LerobotTeleop(cfg, PandaSpec(), teleoperator=FakeGamepad())
    cfg = load_config(["teleop=gamepad", "teleop.lerobot.type=no_such_device"]).teleop
    with pytest.raises(TeleopError, match="known"):
        LerobotTeleop(cfg, PandaSpec())
    with pytest.raises(TeleopError, match="valid types"):
        make_teleop({"type": "telepathy"}, PandaSpec())
    assert make_teleop(load_config([]).teleop, PandaSpec()) is None
    with pytest.raises(TeleopError, match="simulated robot"):
        make_teleop(load_config(["teleop=scripted"]).teleop, PandaSpec())
