"""Teleop devices: what the operator holds. They run inside the driver process, so their commands pass the same
safety layer as a policy's and a takeover never depends on another process or the network.

    device = make_teleop(cfg.teleop, robot)      # None for teleop=none
    device.connect()
    action = device.read(TeleopContext(state, episode, step, robot))   # the operator's command, or None
    for key in device.events(): ...                                     # success, failure, rerecord, quit, ...
    device.disconnect()

`read` returns None while the operator does not hold the robot (the policy drives); a command means "the operator
holds it now": the driver executes it instead of the policy's chunk and flags the step as an intervention.

Devices: `keyboard` (any KeySource: the terminal, pynput through lerobot, or a queue in tests), `scripted` (the
noisy scripted operator of expo_robot.data.scripted_operator, for CI and demos, with a takeover schedule), and
`lerobot` (gamepad, SpaceMouse-like, SO-101 leader arm ... through lerobot's teleoperator classes).
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

# Operator keys a device can report; the driver counts them (obs counters `operator.<event>`), acts on e-stop keys
# itself, and the recorder / actor act on the rest.
EVENTS = ("success", "failure", "rerecord", "quit", "estop", "clear_estop")


class TeleopError(RuntimeError):
    """A teleop device cannot be built or used as configured; the message says what to change."""


class TeleopNotConnectedError(TeleopError, ConnectionError):
    """The device is used before connect(): call connect() first."""


@dataclass
class TeleopContext:
    """What a device may look at when asked for a command (the scripted operator needs the simulator)."""

    state: np.ndarray
    episode: int
    step: int  # executed steps in this episode
    robot: Any = None


class TeleopDevice(ABC):
    """The contract: connect / read -> command or None / events / disconnect."""

    name = "teleop"
    # True: a person; in lock-step the driver reads it at control rate on the wall clock, not as fast as it can.
    paced = True

    def __init__(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connect()
        self._connected = True

    def disconnect(self) -> None:
        if self._connected:
            self._disconnect()
            self._connected = False

    def read(self, ctx: TeleopContext) -> np.ndarray | None:
        if not self._connected:
            raise TeleopNotConnectedError(
                f"teleop device '{self.name}' is not connected: call connect() first"
            )
        return self._read(ctx)

    def events(self) -> list[str]:
        """Operator keys pressed since the last call (names from EVENTS)."""
        return []

    def __enter__(self) -> TeleopDevice:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def _connect(self) -> None:  # noqa: B027 (optional hook)
        pass

    def _disconnect(self) -> None:  # noqa: B027 (optional hook)
        pass

    @abstractmethod
    def _read(self, ctx: TeleopContext) -> np.ndarray | None: ...


# ── keyboard ────────────────────────────────────────────────────────────────────────────────────────────────────
class KeySource(Protocol):
    """Where key presses come from: (key name, pressed) pairs since the last poll. Injectable: tests use QueueKeys."""

    def start(self) -> None: ...

    def poll(self) -> list[tuple[str, bool]]: ...

    def stop(self) -> None: ...


class QueueKeys:
    """Keys pushed by code (tests, a GUI, a remote panel): push("w"), push("w", pressed=False)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()

    def push(self, key: str, pressed: bool = True) -> None:
        self._q.put((key, pressed))

    def tap(self, key: str) -> None:
        self.push(key, True)
        self.push(key, False)

    def start(self) -> None:
        pass

    def poll(self) -> list[tuple[str, bool]]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        pass


class TerminalKeys:
    """Keys typed in the controlling terminal (/dev/tty: no display needed, works over ssh, and from the driver's
    child process, whose stdin is not the terminal). A terminal sends no key-up: a key counts as held while it
    repeats (auto-repeat) and released `release_s` after its last repeat."""

    def __init__(self, release_s: float = 0.12, stream: Any = None, path: str | None = None):
        self.release_s = release_s
        self.stream = stream
        self.path = (
            path or "/dev/tty"
        )  # `expo-robot finetune` names its own terminal for the driver it starts
        self._inner = QueueKeys()
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: Any = None
        self._owned = False

    def start(self) -> None:
        import termios
        import tty

        if self.stream is None:
            try:  # O_NOCTTY: reading the keys must not make it this process's controlling terminal
                fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY)
                self.stream = open(fd, "rb", buffering=0)  # noqa: SIM115 (closed in stop())
                self._owned = True
            except OSError as e:
                raise TeleopError(
                    f"teleop.source=terminal needs a terminal ({self.path}: {e}); run from one, or use "
                    "teleop.source=pynput"
                ) from e
        if not self.stream.isatty():
            raise TeleopError(
                "teleop.source=terminal needs an interactive terminal (its key stream is not a tty)"
            )
        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # characters arrive one by one, without Enter; Ctrl-C still works
        self._thread = threading.Thread(target=self._run, name="terminal-keys", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self.stream.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                ch = os.read(fd, 1).decode(errors="ignore")
                if ch:
                    self._inner.push(" " if ch == " " else ch.lower(), True)

    def poll(self) -> list[tuple[str, bool]]:
        now = time.monotonic()
        out = []
        for key, pressed in self._inner.poll():
            if key not in self._last:
                out.append((key, pressed))
            self._last[key] = now
        for key in [k for k, t in self._last.items() if now - t > self.release_s]:
            del self._last[key]
            out.append((key, False))
        return out

    def stop(self) -> None:
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
        if self._owned:
            self.stream.close()


class PynputKeys:
    """Key-down / key-up events from the desktop, through lerobot's KeyboardTeleop (pynput; needs a display)."""

    def __init__(self) -> None:
        self._teleop: Any = None

    def start(self) -> None:
        from lerobot.teleoperators.keyboard import KeyboardTeleop, KeyboardTeleopConfig

        self._teleop = KeyboardTeleop(KeyboardTeleopConfig())
        try:
            self._teleop.connect()
        except Exception as e:  # lerobot raises several types when pynput has no display
            raise TeleopError(
                f"the desktop keyboard is not available ({e}); use teleop.source=terminal instead"
            ) from e

    def poll(self) -> list[tuple[str, bool]]:
        out = []
        q = self._teleop.event_queue
        while not q.empty():
            key, pressed = q.get_nowait()
            name = getattr(key, "char", None) or getattr(key, "name", None) or str(key)
            out.append((" " if name == "space" else str(name).lower(), bool(pressed)))
        return out

    def stop(self) -> None:
        if self._teleop is not None and self._teleop.is_connected:
            self._teleop.disconnect()


KEY_SOURCES: dict[str, Callable[[Any], KeySource]] = {
    "terminal": lambda cfg: TerminalKeys(path=cfg.get("tty")),
    "pynput": lambda cfg: PynputKeys(),
}


class KeyboardTeleop(TeleopDevice):
    """End-effector teleop with keys: held motion keys give +-speed on their axis; gripper keys set the gripper.

    keys (configs/teleop/keyboard.yaml): motion "x+", "x-", ...; "gripper_close", "gripper_open"; "takeover" (toggle:
    hold / release the robot); operator keys from EVENTS.
    """

    def __init__(self, cfg: Any, robot: Any, source: KeySource | None = None):
        super().__init__()
        self.name = "keyboard"
        self.source = source or KEY_SOURCES[str(cfg.get("source", "terminal"))](cfg)
        self.action_dim = int(robot.action_dim)
        self.low, self.high = (
            np.asarray(robot.action_low, np.float32),
            np.asarray(robot.action_high, np.float32),
        )
        self.speed = float(cfg.get("speed", 1.0))
        keys = dict(cfg.get("keys") or {})
        self.motion: dict[str, tuple[int, float]] = {}
        for axis, dim in zip("xyz", range(3), strict=False):
            for sign, s in (("+", 1.0), ("-", -1.0)):
                if f"{axis}{sign}" in keys:
                    self.motion[str(keys[f"{axis}{sign}"])] = (dim, s)
        grip = cfg.get("gripper") or {}
        self.gripper_dim = grip.get("dim")
        self.gripper = {str(keys.get("gripper_close", "c")): float(grip.get("close", 0.0)),
                        str(keys.get("gripper_open", "o")): float(grip.get("open", 0.0))}  # fmt: skip
        self.gripper_value = float(grip.get("hold", grip.get("open", 0.0))) if grip else 0.0
        self.events_by_key = {str(keys[e]): e for e in EVENTS if e in keys}
        self.takeover_key = str(keys.get("takeover", "t"))
        self.engaged = bool(cfg.get("engaged", True))
        self.held: set[str] = set()
        self._events: list[str] = []

    def _connect(self) -> None:
        self.source.start()

    def _disconnect(self) -> None:
        self.source.stop()

    def _drain(self) -> None:
        for key, pressed in self.source.poll():
            if not pressed:
                self.held.discard(key)
                continue
            if key in self.held:
                continue  # auto-repeat of a held key
            self.held.add(key)
            if key == self.takeover_key:
                self.engaged = not self.engaged
                log.info("operator %s the robot", "takes" if self.engaged else "releases")
            elif key in self.events_by_key:
                self._events.append(self.events_by_key[key])
            elif key in self.gripper and self.gripper_dim is not None:
                self.gripper_value = self.gripper[key]

    def events(self) -> list[str]:
        self._drain()
        out, self._events = self._events, []
        return out

    def _read(self, ctx: TeleopContext) -> np.ndarray | None:
        self._drain()
        if not self.engaged:
            return None
        action = np.zeros(self.action_dim, np.float32)
        for key in self.held:
            if key in self.motion:
                dim, sign = self.motion[key]
                action[dim] += sign * self.speed
        if self.gripper_dim is not None:
            action[int(self.gripper_dim)] = self.gripper_value
        return np.clip(action, self.low, self.high)


# ── scripted operator ───────────────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class TakeoverSchedule:
    """When a scripted operator holds the robot: always (`engaged`), or in every `every`-th episode (counted from
    `first`) from step `start_step` for `steps` steps. Deterministic, so a test knows which steps are flagged."""

    engaged: bool = True
    every: int = 0
    first: int = 0
    start_step: int = 0
    steps: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> TakeoverSchedule:
        t = cfg.get("takeover") or {}
        s = cls(bool(cfg.get("engaged", True)), int(t.get("every", 0)), int(t.get("first", 0)),
                int(t.get("start_step", 0)), int(t.get("steps", 0)))  # fmt: skip
        if min(s.every, s.first, s.start_step, s.steps) < 0:
            raise TeleopError(f"teleop.takeover values must be >= 0, got {t}")
        return s

    def holds(self, episode: int, step: int) -> bool:
        if self.engaged:
            return True
        if self.every <= 0 or episode < self.first or (episode - self.first) % self.every:
            return False
        return self.start_step <= step < self.start_step + self.steps


class ScriptedTeleop(TeleopDevice):
    """The scripted noisy operator (make_operator) as a device; it needs the simulated robot (its kinematics)."""

    paced = False  # a script: in lock-step it drives as fast as the simulator steps

    def __init__(self, cfg: Any, robot: Any):
        super().__init__()
        self.name = "scripted"
        self.robot_cfg = robot.robot_cfg if hasattr(robot, "robot_cfg") else None
        if self.robot_cfg is None or getattr(robot, "task", "missing") == "missing":
            raise TeleopError("teleop=scripted needs a simulated robot (robot=sim_panda or robot=sim_so101)")
        from expo_robot.data.scripted_operator import default_sigma

        sigma = cfg.get("sigma")
        self.sigma = float(default_sigma(self.robot_cfg) if sigma is None else sigma)
        self.seed = int(cfg.get("seed", 0))
        self.schedule = TakeoverSchedule.from_config(cfg)
        self._operator: Any = None
        self._episode = -1
        self._holding = False

    def _read(self, ctx: TeleopContext) -> np.ndarray | None:
        from expo_robot.data.scripted_operator import make_operator

        if not self.schedule.holds(ctx.episode, ctx.step):
            self._holding = False
            return None
        if ctx.episode != self._episode:  # per-episode noise: the same episode gets the same operator
            rng = np.random.default_rng([self.seed, max(ctx.episode, 0)])
            self._operator, self._episode = make_operator(self.robot_cfg, self.sigma, rng), ctx.episode
            self._holding = False
        if not self._holding:  # a new takeover: the operator looks at the scene afresh
            self._operator.reset()
            self._holding = True
        return self._operator.act(ctx.robot.task, ctx.state)


# ── lerobot teleoperators (gamepad, leader arms, ...) ───────────────────────────────────────────────────────────
class LerobotTeleop(TeleopDevice):
    """A lerobot Teleoperator (configs/teleop/gamepad.yaml, so101_leader.yaml): its action dict is read in the order
    of `action_keys`, scaled, and clipped to the robot's bounds; `get_teleop_events` (where the class has it) gives
    the takeover flag and the operator keys. Device-bus code stays in lerobot."""

    def __init__(self, cfg: Any, robot: Any, teleoperator: Any | None = None):
        super().__init__()
        spec = dict(cfg.get("lerobot") or {})
        self.name = f"lerobot:{spec.get('type', '?')}"
        self.keys = [str(k) for k in cfg.get("action_keys") or []]
        if len(self.keys) != int(robot.action_dim):
            raise TeleopError(
                f"teleop.action_keys lists {len(self.keys)} keys, the robot has {robot.action_dim} action dims: "
                "name one key of the teleoperator's action dict per robot action dim"
            )
        self.scale = np.asarray(cfg.get("scale") or [1.0] * len(self.keys), np.float32)
        self.offset = np.asarray(cfg.get("offset") or [0.0] * len(self.keys), np.float32)
        self.low, self.high = (
            np.asarray(robot.action_low, np.float32),
            np.asarray(robot.action_high, np.float32),
        )
        self.engaged = bool(cfg.get("engaged", True))
        self._teleop = teleoperator if teleoperator is not None else _build_lerobot_teleop(spec)
        self._events: list[str] = []
        self._was_ending = False

    def _connect(self) -> None:
        try:
            self._teleop.connect()
        except Exception as e:  # device SDKs raise many types: keep the cause, say what to check
            raise TeleopError(f"{self.name}: cannot connect ({e}); is it plugged in and calibrated?") from e

    def _disconnect(self) -> None:
        self._teleop.disconnect()

    def _poll_events(self) -> bool:
        """Update the operator keys; return whether the operator holds the robot."""
        get = getattr(self._teleop, "get_teleop_events", None)
        if get is None:
            return self.engaged
        raw = {getattr(k, "value", k): v for k, v in get().items()}
        ending = bool(raw.get("terminate_episode") or raw.get("success") or raw.get("rerecord_episode"))
        if ending and not self._was_ending:  # report a held button once
            if raw.get("rerecord_episode"):
                self._events.append("rerecord")
            elif raw.get("success"):
                self._events.append("success")
            else:
                self._events.append("failure")
        self._was_ending = ending
        return self.engaged or bool(raw.get("is_intervention"))

    def events(self) -> list[str]:
        out, self._events = self._events, []
        return out

    def _read(self, ctx: TeleopContext) -> np.ndarray | None:
        if not self._poll_events():
            return None
        raw = self._teleop.get_action()
        missing = [k for k in self.keys if k not in raw]
        if missing:
            raise TeleopError(f"{self.name} gives no {missing}; its action keys are {sorted(raw)}")
        action = np.asarray([float(raw[k]) for k in self.keys], np.float32) * self.scale + self.offset
        return np.clip(action, self.low, self.high)


def _build_lerobot_teleop(spec: dict) -> Any:
    from lerobot.teleoperators.config import TeleoperatorConfig
    from lerobot.teleoperators.utils import make_teleoperator_from_config

    kind = spec.pop("type", None)
    try:
        config_cls = TeleoperatorConfig.get_choice_class(kind)
    except Exception as e:  # draccus raises its own KeyError subtype
        known = ", ".join(sorted(TeleoperatorConfig.get_known_choices()))
        raise TeleopError(f"unknown lerobot teleoperator type {kind!r}; known: {known}") from e
    return make_teleoperator_from_config(config_cls(**spec))


# type -> factory(cfg, robot). A registry, not an if/elif chain.
DEVICES: dict[str, Callable[[Any, Any], TeleopDevice]] = {
    "keyboard": KeyboardTeleop,
    "scripted": ScriptedTeleop,
    "lerobot": LerobotTeleop,
}


def make_teleop(cfg: Any, robot: Any) -> TeleopDevice | None:
    """The device named by configs/teleop/<name>.yaml (`type:`), or None for type none."""
    kind = (cfg or {}).get("type", "none")
    if kind in (None, "none"):
        return None
    if kind not in DEVICES:
        raise TeleopError(f"unknown teleop type {kind!r}; valid types: none, {', '.join(DEVICES)}")
    return DEVICES[kind](cfg, robot)
