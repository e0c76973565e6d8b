"""The driver process: owns the robot, runs the fixed-rate loop, executes timestamped chunks through the safety layer.

    expo-robot driver robot=sim_panda                 # until SIGINT/SIGTERM, then safe state and a clean exit
    python -m drivers.server robot=fake runtime.obs_port=6000 runtime.cmd_port=6001
    run_driver(cfg, stop_event)                       # in-process (tests, launcher)

Timing. Step k of a chunk is due at t0 + k/fps on the driver clock (the step nearest in time, within half a period);
older unexecuted steps are skipped (counted), never replayed. The newest chunk replaces the previous one.
Observations carry t, the time the state was produced (in real time the scheduled time of the tick that stepped it,
so a slow step does not push the answer a tick late); a policy answering it sends t0 = obs.t + 1/fps (the next tick).
- realtime: the driver clock is the monotonic clock; one tick per period; no due step -> hold.
- lockstep: the driver clock is virtual (executed steps / fps). The simulator steps as soon as a step is due at the
  current virtual time, otherwise the driver waits for commands. The watchdog still runs on the wall clock, but a
  watchdog hold changes nothing the episode does (no virtual time passes, the start-up guard is not re-armed): the
  same seed and commands give the same steps under any load. Only its safe state (a policy silent for
  watchdog_safe_state_s) ends an episode, as a recorded stop.
Commands: their values are checked as they are read (protocol.check_command; a bad one is counted in the inbox's
`invalid.<reason>` and dropped). The watchdog follows the sender of the chunk being executed: hold when that client
is silent, whatever other clients send; with no chunk, any client keeps the driver out of the safe state. Any
unexpected exception in the loop: hold, safe state (published with the error as its reason), exit code 70.
Episodes: on terminated/truncated (or a safety episode limit) the driver holds until a `reset` command, then
publishes step 0 of the next episode.
Teleop (configs/teleop): the operator's device runs here, in the loop. While it returns a command the operator holds
the robot: that command is executed (through the same safety filter) instead of the policy's chunk, and the step is
published with intervention=True. Operator keys are counted in the observation counters (`operator.<key>`), so a
recorder or actor that misses one message still sees them; e-stop keys act here at once.
Cameras (configs/cameras): connected at start; every observation carries each camera's newest colour frame as
`image.<name>` and its capture time (driver clock) in meta `image_time`. A camera with a reader thread (RealSense)
never makes the loop wait: a frame older than its max_age_s is counted (`camera.<name>.stale`) and the newest one
is published anyway (its image_time shows its age); a lost camera latches the e-stop. A simulator camera renders
on each new state (synchronously: it is the simulator) and its frame is republished while the state stands still.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.cameras import Camera, CameraError, CameraRig, StaleFrameError, make_cameras
from drivers.clock import Deadline, LoopStats, MonotonicClock
from drivers.robot import Robot, RobotError, make_robot
from drivers.safety import ActionFilter, Limits, SafetyConfig, SafetyConfigError, SafetyMonitor
from drivers.sim_env import SimUnavailableError
from drivers.teleop import TeleopContext, TeleopDevice, TeleopError, make_teleop
from expo_robot.runtime.scheduling import apply as apply_scheduling
from expo_robot.runtime.scheduling import freeze_heap
from expo_robot.transport.keys import curve_keys, public_keys
from expo_robot.transport.protocol import (
    PROTOCOL_VERSION,
    RobotSpec,
    check_command,
    driver_inbox,
    image_field,
)
from expo_robot.transport.sockets import Publisher, Puller, TransportError, address
from expo_robot.transport.wire import Message

log = logging.getLogger(__name__)
MODES = ("lockstep", "realtime")
TELEOP_CHUNK_ID = -2  # chunk_id of steps the operator commanded


class DriverConfigError(ValueError):
    """The driver config is wrong (mode, limits); the message names the key."""


@dataclass
class Chunk:
    actions: np.ndarray  # float32 [H, A], a private copy
    t0: float
    chunk_id: int
    client: str
    last_heard: float  # when its sender was last heard from (the watchdog follows it)
    next_k: int = 0  # steps before this are executed or skipped


class Driver:
    """One robot behind two sockets: observations out (PUB), chunks and commands in (PULL)."""

    def __init__(
        self,
        cfg: Any,
        robot: Robot | None = None,
        clock: Any | None = None,
        teleop: TeleopDevice | None = None,
    ):
        self.cfg = cfg
        self.mode = str(cfg.robot.get("mode", "lockstep"))
        if self.mode not in MODES:
            raise DriverConfigError(f"robot.mode must be one of {MODES}, got {self.mode!r}")
        self.robot = robot or make_robot(cfg.robot, cfg.get("task"))
        self.clock = clock or MonotonicClock()
        self.counters: Counter = Counter()
        self.driver_id = uuid.uuid4().hex[:12]
        self.chunk: Chunk | None = None
        # when any client was last heard from; per client only the chunk's sender matters (Chunk.last_heard), so
        # the driver keeps no table that a stream of new client ids could grow
        self.last_heard: float | None = None
        self.episode, self.step, self.vticks = -1, 0, 0
        self.episode_t0 = 0.0
        self.tick_t = self.state_t = (
            0.0  # real time: the scheduled time of this tick; when the state was produced
        )
        self.last_action: np.ndarray | None = None
        self.last_pub = -math.inf
        self.last_result: dict = {}
        self.pub: Publisher | None = None
        self.inbox: Puller | None = None
        self.ready = threading.Event()  # set once the sockets are bound and step 0 is published
        # set from a signal handler or another thread; acted on by the loop
        self._estop_request: str | None = None
        self.last_reasons: list[str] = []
        self.robot_state: np.ndarray | None = None
        self.teleop: TeleopDevice | None = teleop  # None: built from cfg.teleop at open()
        self.takeover = False  # the operator held the robot at the last read of the device
        self._next_teleop_read = -math.inf
        self.rig = CameraRig(make_cameras(cfg.get("cameras"), robot=self.robot))
        self.images: dict[str, np.ndarray] = {}  # camera -> the frame published last
        self.image_time: dict[str, float] = {}  # camera -> its capture time on the driver clock

    # ---- lifecycle ----
    def open(self) -> None:
        self.robot.connect()
        r, rt = self.robot, self.cfg.runtime
        self.fps = float(r.fps)
        self.safety_cfg = SafetyConfig.from_config(self.cfg.get("safety"), self.cfg.robot)
        self.filter = ActionFilter(
            Limits.build(self.safety_cfg, r, self.cfg.robot.get("workspace")), self.safety_cfg
        )
        self.monitor = SafetyMonitor(self.safety_cfg, self.fps)
        self.teleop = self.teleop or make_teleop(self.cfg.get("teleop"), self.robot)
        if self.teleop is not None:
            self.teleop.connect()
        slow = [n for n, cam in self.rig.cameras.items() if cam.synchronous]
        if slow and self.mode == "realtime":
            raise CameraError(
                f"camera(s) {slow} render synchronously (~0.5 s a frame in software here): use them in lock-step "
                "(robot.mode=lockstep; teleop.mode=lockstep for teleop/record), or cameras=none in real time"
            )
        self.rig.connect()  # after the robot: a simulator camera renders its scene
        self.max_chunk_len = int(self.cfg.robot.get("max_chunk_len", 256))
        self.heartbeat_s = float(rt.get("heartbeat_s", 0.5))
        self.spec = RobotSpec(
            PROTOCOL_VERSION, r.name, r.state_dim, r.action_dim, tuple(map(float, r.action_low)),
            tuple(map(float, r.action_high)), self.fps, self.mode, self.max_chunk_len,
            self.monitor.hold_after_s / 4, self.driver_id,
            {name: (cam.height, cam.width, 3) for name, cam in self.rig.cameras.items()},
            tuple(r.state_names or ()),
        )  # fmt: skip
        curve = curve_keys(rt)
        self.operators = public_keys(curve.operator_keys_dir)  # may clear the e-stop over the socket
        hwm = int(rt.get("obs_hwm", 1000))
        self.pub = Publisher(address(rt, "obs"), hwm=hwm, curve=curve, name="driver.obs")
        self.inbox = Puller(
            address(rt, "cmd"),
            driver_inbox(r.action_dim, self.max_chunk_len),
            hwm=hwm,
            curve=curve,
            name="driver.cmd",
            check=lambda msg: check_command(msg, self.now(), self.fps),
        )
        self.loop = LoopStats(1.0 / self.fps)
        # how long the last robot.send took (None: no step since the last tick)
        self.robot_s: float | None = None
        self._idle_since = -math.inf  # when the last tick's work ended
        self._handled_late_s = 0.0  # command handling since then that held up the next tick
        fifo = os.sched_getscheduler(0) == os.SCHED_FIFO  # runtime/scheduling.py
        self.fifo_priority = os.sched_getparam(0).sched_priority if fifo else 0
        self.deadline = Deadline(1.0 / self.fps, self.clock)
        self._reset_episode(self.cfg.get("seed"))
        freeze_heap()
        self.ready.set()
        log.info(
            "driver %s ready: %s %s at %.1f Hz, obs %s, cmd %s",
            self.driver_id, r.name, self.mode, self.fps, self.pub.addr, self.inbox.addr,
        )  # fmt: skip

    def close(self, reason: str = "driver shutting down") -> None:
        """Safe state, a last observation saying so (and why), then everything released (also after a failed
        open)."""
        try:
            if self.robot.is_connected:
                self.robot.hold()
                self.robot.safe_state()
                if self.ready.is_set():
                    self.monitor.shutdown(reason)
                    self._publish(fresh=False)
        finally:
            if self.teleop is not None:
                self.teleop.disconnect()
            self.rig.disconnect()
            self.robot.disconnect()
            if self.inbox is not None:
                self.inbox.close()
            if self.pub is not None:
                self.pub.close(linger_s=0.2)  # let the final safe-state observation out

    def run(self, stop: threading.Event) -> None:
        """The loop until `stop`. Whatever ends it, an unexpected exception included, the robot is held and put in
        its safe state (close) before the exception goes on to the caller."""
        reason = "driver shutting down"
        try:
            self.open()
            while not stop.is_set():
                self.spin_once()
        except Exception as e:
            reason = f"driver error: {one_line(e)}"
            raise
        finally:
            self.close(reason)

    # ---- the loop ----
    def now(self) -> float:
        """The driver clock: virtual in lock-step, monotonic in real time."""
        return self.vticks / self.fps if self.mode == "lockstep" else self.clock.now()

    def state_time(self) -> float:
        """When the published state was produced: the tick of the last step (its scheduled time, on the tick grid;
        after a reset, when the reset ended). One rule for both modes: a policy answering an observation stamps its
        chunk t0 = obs.t + 1/fps, the next tick, however long the step itself took to run."""
        return (self.vticks - 1) / self.fps if self.mode == "lockstep" else self.state_t

    def spin_once(self) -> None:
        if self.mode == "realtime":
            self._spin_realtime()
            return
        due = self.chunk is not None and self._due_index(self.chunk) is not None
        # nothing due: sleep in the poller (a command wakes it at once) but wake for the watchdog, and for
        # the next read of the operator's device
        idle_s = self.monitor.hold_after_s / 4
        if self.teleop is not None:
            next_read = self._next_teleop_read - self.clock.now() if self.teleop.paced else 0.0
            due = due or (self.takeover and next_read <= 0)
            idle_s = min(idle_s, max(next_read, 0.0) if self.takeover else 1.0 / self.fps)
        self._pump(0.0 if due and self.monitor.state == "ok" else idle_s)
        self._tick()

    def _spin_realtime(self) -> None:
        # wait for the next tick in short slices, so the watchdog reacts between ticks too
        self._pump(min(self.deadline.remaining(), self.monitor.hold_after_s / 4))
        self._watch()
        if self.deadline.remaining() > 0:
            return
        now = self.clock.now()
        self.tick_t = self.deadline.next_t
        self.deadline.advance()
        # how long after the loop was free to tick (due, the last tick's work done, commands handled) it ran
        wakeup_late_s = now - max(self.tick_t, self._idle_since) - self._handled_late_s
        self.loop.tick(now, self.robot_s, wakeup_late_s)
        self.robot_s, self._handled_late_s = None, 0.0
        self._tick()
        self._idle_since = self.clock.now()

    def _pump(self, wait_s: float) -> None:
        """Wait up to wait_s for a command, then handle everything queued (all of it: an e-stop is never superseded)."""
        msg = self.inbox.recv(max(0.0, wait_s))
        if msg is None:
            return
        start = self.clock.now()
        while msg is not None:
            self._handle(msg)
            msg = self.inbox.recv(0.0)
        if self.mode == "realtime":
            # handling after the next tick could have run delays it: the loop's own work (LoopStats)
            free = max(self.deadline.next_t, self._idle_since)
            self._handled_late_s += max(0.0, self.clock.now() - max(start, free))

    def _watch(self) -> str | None:
        """Run the watchdog on the wall clock; a change is acted on and published at once."""
        changed = self.monitor.watchdog(self.clock.now(), self._source_heard())
        if changed is not None:
            self._on_state_change(changed)
            self._publish(fresh=False)
        return changed

    def _source_heard(self) -> float | None:
        """When the source of the robot's motion was last heard: the operator's device (read by this loop) while
        they hold the robot; else the sender of the chunk being executed, whatever other clients say; else (nothing
        to execute) any client, which keeps the driver out of the safe state."""
        if self.takeover:
            return self.clock.now()
        return self.chunk.last_heard if self.chunk is not None else self.last_heard

    def _tick(self) -> None:
        if self._estop_request is not None:
            reason, self._estop_request = self._estop_request, None
            self.estop(reason)
            self._publish(fresh=False)
        self._watch()
        held = self._operator_step() if self.teleop is not None else None  # None: the policy drives
        if held is not None:
            executed = held
        elif self.monitor.state == "ok":
            executed = self._execute_due()
        else:
            executed = False
            if self.mode == "realtime":
                self.robot.hold()
        if not executed and self.clock.now() - self.last_pub >= self.heartbeat_s:
            self._publish(fresh=False)
            self.pub.send("spec", meta=self.spec.to_meta())

    def _on_state_change(self, state: str) -> None:
        if state == "hold":
            self.robot.hold()
        elif state == "safe_state":
            self.robot.safe_state()
            self.chunk = None
        elif state == "ok":
            # Real time: the robot held while the policy was silent, so its next command starts from the hold
            # command, behind the start-up guard. Lock-step: no virtual time passed and nothing moved, so a hold
            # (a policy slowed by load, or waiting for its learner) must leave no trace in the episode.
            if self.mode == "realtime":
                self.filter.arm(self.robot.hold_action(self.last_action))
            # (out of a hold through the operator's device: a silent sender's chunk is not resumed)
            alive_after = self.clock.now() - self.monitor.hold_after_s
            if self.chunk is not None and self.chunk.last_heard < alive_after:
                self.chunk = None  # a restarted policy sends its own

    # ---- chunks ----
    def _due_index(self, c: Chunk) -> int | None:
        # Rounded, not floored: a tick that fires a little early or late still runs the step meant for it.
        k = math.floor((self.now() - c.t0) * self.fps + 0.5)
        return k if c.next_k <= k else None

    def _execute_due(self) -> bool:
        c = self.chunk
        k = self._due_index(c) if c is not None else None
        if k is None:
            if self.mode == "realtime":
                self.robot.hold()
            return False
        H = c.actions.shape[0]
        skipped = min(k, H) - c.next_k
        if skipped > 0:
            self.counters["steps_skipped"] += skipped
        if k >= H:
            self.chunk = None
            return False
        c.next_k = k + 1
        return self._execute(c.actions[k], c.chunk_id)

    # ---- the operator ----
    def _operator_keys(self) -> None:
        events = self.teleop.events()
        for event in events:
            self.counters[f"operator.{event}"] += 1
            log.info("driver: operator key '%s'", event)
            if event == "estop":
                self.estop("operator key")
            elif event == "clear_estop" and self.monitor.clear_estop():
                self.filter.arm(self.robot.hold_action(self.last_action))
        if events:
            self._publish(fresh=False)  # keys reach the recorder/actor at once, not at the next step

    def _operator_step(self) -> bool | None:
        """Operator keys, then the operator's command if they hold the robot: True/False (step executed or not),
        None when the policy drives. The device is read in a watchdog hold too: taking over from a silent policy
        is exactly when an operator needs it. A person's device is read once per control period (in lock-step on
        the wall clock)."""
        self._operator_keys()
        if self.monitor.state not in ("ok", "hold"):
            return None
        now = self.clock.now()
        if self.mode == "lockstep" and self.teleop.paced and now < self._next_teleop_read:
            return False if self.takeover else None
        self._next_teleop_read = now + 1.0 / self.fps
        try:
            action = self.teleop.read(TeleopContext(self.robot_state, self.episode, self.step, self.robot))
        except TeleopError as e:
            # the operator lost control: stop, never fall back to the policy silently
            self.estop(f"teleop device failed: {e}")
            log.error("driver: %s", e)
            return False
        if (action is not None) != self.takeover:
            self.takeover = action is not None
            self.counters["takeovers" if self.takeover else "releases"] += 1
            if self.takeover:
                self.chunk = None  # planned for the policy's course, not the operator's
            log.info("driver: operator %s", "takes over" if self.takeover else "releases the robot")
        if action is None:
            return None
        if self.monitor.state == "hold":
            self._watch()  # the operator is in command: out of the watchdog hold (real time: re-arms the start-up guard)
        if self.monitor.state != "ok":
            return False
        return self._execute(np.asarray(action, np.float32), TELEOP_CHUNK_ID, intervention=True)

    def _execute(self, raw: np.ndarray, chunk_id: int, intervention: bool = False) -> bool:
        action, reasons = self.filter(raw, self.robot.ee_position())
        self.monitor.count(reasons)
        self.last_reasons = reasons
        if action is None:
            self.robot.hold()
            self.counters["steps_refused"] += 1
            self._publish(fresh=False)
            return False
        sent_at = self.clock.now()
        result = self.robot.send(action)
        self.robot_s = self.clock.now() - sent_at  # the device's own share of the tick (LoopStats)
        self.state_t = self.tick_t
        self.step += 1
        if self.mode == "lockstep":
            self.vticks += 1
            # lock-step cadence: wall time between executed steps (this one's step included)
            self.loop.tick(self.clock.now(), self.robot_s)
        self.last_action = result.action
        self.counters["steps_executed"] += 1
        limit = self.monitor.episode_limit(self.step, self.now() - self.episode_t0)
        self.last_result = {
            "reward": result.reward,
            "terminated": result.terminated,
            "truncated": result.truncated or limit is not None,
            "success": result.success,
            "chunk_id": chunk_id,
            "intervention": intervention,
        }
        if intervention:
            self.counters["steps_intervention"] += 1
        if result.terminated or result.truncated or limit:
            self.chunk = None
            self.monitor.episode_end(limit or ("terminated" if result.terminated else "truncated"))
        self.robot_state = result.state
        self._publish(fresh=True)
        return True

    # ---- commands ----
    def _handle(self, msg: Message) -> None:
        """One command, its values already checked (protocol.check_command, run by the inbox)."""
        client = msg.meta["client"]
        self.last_heard = self.clock.now()
        if self.chunk is not None and client == self.chunk.client:
            self.chunk.last_heard = self.last_heard
        if msg.type == "chunk":
            self._on_chunk(msg, client)
        elif msg.type == "cmd":
            self._on_cmd(msg)

    def _on_chunk(self, msg: Message, client: str) -> None:
        if self.monitor.state == "estop":
            self.counters["chunks_ignored"] += 1
            return
        if self.chunk is not None:
            self.counters["chunks_superseded"] += 1
        self.counters["chunks"] += 1
        actions = np.array(msg.arrays["actions"], dtype=np.float32)
        self.chunk = Chunk(actions, float(msg.meta["t0"]), msg.meta["chunk_id"], client, self.clock.now())

    def _on_cmd(self, msg: Message) -> None:
        op = msg.meta["op"]
        self.counters[f"cmd.{op}"] += 1
        if op == "hello":
            self.pub.send("spec", meta=self.spec.to_meta())
        elif op == "reset":
            self._reset_episode(msg.meta.get("seed"))
        elif op == "estop":
            reason = msg.meta.get("reason")
            self.chunk = None
            self.monitor.estop(reason[:200] if isinstance(reason, str) else "socket command")
            self.robot.hold()
            self._publish(fresh=False)
        elif op == "clear_estop" and self._operator_sent(msg) and self.monitor.clear_estop():
            self.filter.arm(self.robot.hold_action(self.last_action))
            self._publish(fresh=False)

    def _operator_sent(self, msg: Message) -> bool:
        """Clearing an e-stop is the operator's decision: their key (runtime keys operators/) or their console."""
        if msg.sender in self.operators:
            return True
        self.counters["cmd.clear_estop_refused"] += 1
        n = self.counters["cmd.clear_estop_refused"]
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, ...: no log floods
            log.warning(
                "driver: clear_estop refused from a client without an operator key (%d so far); clear it at the "
                "console (teleop clear_estop key) or from a client with role=operator",
                n,
            )
        return False

    def estop(self, reason: str) -> None:
        """Latch the e-stop (loop thread only; from elsewhere use request_estop)."""
        self.chunk = None
        self.monitor.estop(reason)
        self.robot.hold()

    def request_estop(self, reason: str) -> None:
        """Latch the e-stop from a signal handler, a key listener or another thread: applied on the next tick."""
        self._estop_request = reason

    def _reset_episode(self, seed: int | None) -> None:
        if not self.monitor.new_episode():
            self.counters["resets_refused"] += 1
            log.warning("driver: reset refused while the e-stop is latched; clear it first")
            self._publish(fresh=False)
            return
        self.robot_state = self.robot.reset(seed)
        self.state_t = self.clock.now()
        if self.mode == "realtime":  # ticks start again from the reset, so no step is stamped before it
            self.deadline.restart(self.state_t)
        self.loop.restart()
        self.episode += 1
        self.step = 0
        self.chunk = None
        self.episode_t0 = self.now()
        self.last_action = (
            None  # a reset moves the robot: "keep" dims (an absolute gripper) are unknown again
        )
        self.filter.arm(self.robot.hold_action(None))
        self.last_reasons = []
        self.last_result = {
            "reward": 0.0,
            "terminated": False,
            "truncated": False,
            "success": False,
            "chunk_id": -1,
        }
        self._publish(fresh=True)

    # ---- observations ----
    def _publish(self, fresh: bool) -> None:
        r = self.robot
        action = self.last_action if self.last_action is not None else np.zeros(r.action_dim, np.float32)
        safety = self.monitor.snapshot()
        safety["reasons"] = list(self.last_reasons)
        meta = {
            "t": self.state_time(),
            "episode": self.episode,
            "step": self.step,
            "fresh": fresh,
            "intervention": False,  # a teleop takeover; safety changes are in safety.reasons
            "safety": safety,
            "loop": {
                "mode": self.mode,
                "fifo_priority": self.fifo_priority,
                **self.loop.summary(),
                **self.rig.timing(),
            },
            "counters": {**self.counters, **{f"inbox.{k}": v for k, v in self.inbox.stats().items()}},
            **self.last_result,
        }
        arrays = {"state": np.asarray(self.robot_state, np.float32), "action": action}
        if self.rig.cameras:
            for name, cam in self.rig.cameras.items():
                if fresh or not cam.synchronous or name not in self.images:  # a still scene: same render
                    self._grab(name, cam)
            arrays.update({image_field(name): img for name, img in self.images.items()})
            meta["image_time"] = dict(self.image_time)
        self.pub.send("obs", arrays, meta, stamp=self.now())
        self.last_pub = self.clock.now()

    def _grab(self, name: str, cam: Camera) -> None:
        """The camera's newest frame into self.images / image_time, without waiting on a device."""
        try:
            try:
                frame = cam.read_latest()
            except StaleFrameError:
                self.counters[f"camera.{name}.stale"] += 1
                frame = cam.read_latest(math.inf)  # the newest there is; image_time tells its age
        except StaleFrameError:  # no frame at all yet: black, and no image_time entry
            self.images.setdefault(name, np.zeros((cam.height, cam.width, 3), np.uint8))
            return
        except CameraError as e:  # gone for good (reconnects failed): a policy must not act on a frozen image
            self.counters[f"camera.{name}.lost"] += 1
            if self.monitor.state != "estop":
                self.request_estop(f"camera {name} lost: {e}")
            self.images.setdefault(name, np.zeros((cam.height, cam.width, 3), np.uint8))
            return
        self.images[name] = frame.color
        if cam.synchronous:  # a render shows the very state it is published with
            self.image_time[name] = self.state_time()
        else:  # the host receipt time, mapped to the driver clock by its age
            self.image_time[name] = self.now() - (time.monotonic() - frame.received_s)


def run_driver(
    cfg: Any,
    stop_event: threading.Event | None = None,
    robot: Robot | None = None,
    driver: Driver | None = None,
) -> int:
    """Run a driver until stop_event is set (in-process use: tests, the launcher). Returns an exit code."""
    stop = stop_event or threading.Event()
    (driver or Driver(cfg, robot=robot)).run(stop)
    return 0


OPERATOR_ERRORS = (
    TransportError,
    RobotError,
    SimUnavailableError,
    SafetyConfigError,
    DriverConfigError,
    TeleopError,
    CameraError,
)
EXIT_UNEXPECTED = os.EX_SOFTWARE  # 70: a bug, not a setting to change (those exit 1)


def main(cfg: Any, words: list[str]) -> int:
    """`expo-robot driver [overrides]`: run until SIGINT/SIGTERM, then safe state and a clean exit.
    SIGUSR1 latches the e-stop (e.g. `kill -USR1 PID` from an operator's button script). An unexpected error puts
    the robot in its safe state and exits 70 with one line (the traceback goes to the run's driver.log)."""
    from expo_robot.config import make_run_dir

    run_dir = make_run_dir(cfg, "driver")
    apply_scheduling(cfg.runtime, "driver")
    stop = threading.Event()
    driver: Driver | None = None

    def _stop(signum: int, _frame: Any) -> None:
        log.info("driver: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    try:
        driver = Driver(cfg)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGUSR1, lambda *_: driver.request_estop("SIGUSR1 (operator)"))
        log.info("driver: run folder %s", run_dir)
        return run_driver(cfg, stop, driver=driver)
    except OPERATOR_ERRORS as e:
        log.error("driver: %s", e)  # one line that says what to change; no traceback for operators
        return 1
    except Exception as e:  # the last resort: Driver.run has held the robot and put it in its safe state
        where = _traceback_to_log_file(e)
        started = driver is not None and driver.ready.is_set()
        log.error(
            "driver: unexpected error, %s: %s%s",
            "robot put in its safe state" if started else "at start-up",
            one_line(e),
            f" (traceback in {where})" if where else "",
        )
        return EXIT_UNEXPECTED


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its type and message, whitespace folded."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:limit]


def _traceback_to_log_file(e: BaseException) -> str | None:
    """Write e's traceback to the run's log file(s) only (the console gets one line); the first file's path."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, "driver: unexpected error", (), (type(e), e, e.__traceback__)
    )
    for handler in files:
        handler.handle(record)
    return files[0].baseFilename if files else None


if __name__ == "__main__":
    from expo_robot.config import ConfigError, load_config

    try:
        sys.exit(main(load_config(sys.argv[1:]), []))
    except ConfigError as e:
        logging.basicConfig()
        log.error("driver: config error: %s", e)
        sys.exit(2)
