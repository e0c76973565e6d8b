"""The remote robot as the policy process sees it.

    with RobotClient(cfg.runtime) as robot:
        spec = robot.connect(timeout_s=10)            # handshake; HandshakeError / PeerTimeoutError, never a hang
        obs = robot.reset(seed=0, wait_s=30)          # step 0 of a new episode
        while not (obs.terminated or obs.truncated):
            robot.send_chunk(actions, t0=obs.t + 1 / spec.fps, chunk_id=i)  # step k due at t0 + k/fps
            obs = robot.recv_obs(timeout_s=1.0)       # executed steps, in order (None on timeout)

Heartbeats go out from a background thread (its own socket) every spec.heartbeat_s, so a policy busy computing is
not taken for a dead one; they stop when the process dies, and the driver then holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expo_robot.transport.keys import curve_keys
from expo_robot.transport.protocol import (
    MAX_CHUNK_ID,
    SEED_MAX,
    EStopLatchedError,
    HandshakeError,
    PeerTimeoutError,
    RobotSpec,
    client_inbox,
    image_field,
)
from expo_robot.transport.sockets import CurveKeys, Pusher, Subscriber, address
from expo_robot.transport.wire import Message, VersionMismatchError, WireError, max_frame_bytes

log = logging.getLogger(__name__)


class NotConnectedError(ConnectionError):
    """The client is used before connect() succeeded: call connect() first."""


@dataclass
class Observation:
    state: np.ndarray
    t: float  # driver clock when this state was produced (virtual in lock-step); answer with t0 = t + 1/fps
    episode: int
    step: int
    action: np.ndarray  # executed to reach this state, after safety; zeros at step 0
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    intervention: bool = False
    safety: dict = field(default_factory=dict)  # state ok|hold|safe_state|estop|episode_end, reason, counters
    chunk_id: int = -1
    loop: dict = field(default_factory=dict)
    fresh: bool = True  # False: republished while idle (no new step)
    counters: dict = field(default_factory=dict)
    stamp: float = 0.0  # driver clock at publication
    wall: float = 0.0
    # camera name -> newest frame, uint8 [H, W, 3] RGB (read-only view; spec.cameras gives the shapes); {} without
    images: dict[str, np.ndarray] = field(default_factory=dict)
    image_time: dict[str, float] = field(default_factory=dict)  # camera name -> capture time, the clock of t

    @classmethod
    def from_message(cls, msg: Message) -> Observation:
        m = msg.meta
        prefix = image_field("")
        images = {k[len(prefix) :]: v for k, v in msg.arrays.items() if k.startswith(prefix)}
        return cls(
            state=msg.arrays["state"],
            t=float(m["t"]),
            episode=m["episode"],
            step=m["step"],
            action=msg.arrays["action"],
            reward=float(m.get("reward", 0.0)),
            terminated=bool(m.get("terminated", False)),
            truncated=bool(m.get("truncated", False)),
            success=bool(m.get("success", False)),
            intervention=bool(m.get("intervention", False)),
            safety=m["safety"],
            chunk_id=int(m.get("chunk_id", -1)),
            loop=m.get("loop", {}),
            fresh=m["fresh"],
            counters=m.get("counters", {}),
            stamp=msg.stamp,
            wall=msg.wall,
            images=images,
            image_time={str(k): float(v) for k, v in (m.get("image_time") or {}).items()},
        )


class _Heartbeat(threading.Thread):
    """Sends a heartbeat every interval on its own PUSH socket (ZeroMQ sockets are not shared across threads)."""

    def __init__(self, addr: str, client: str, interval_s: float, curve: CurveKeys | None):
        super().__init__(name=f"heartbeat-{client}", daemon=True)
        self.addr, self.client, self.interval_s, self.curve = addr, client, interval_s, curve
        self.stopped = threading.Event()

    def run(self) -> None:
        with Pusher(self.addr, hwm=4, curve=self.curve, name="client.heartbeat") as push:
            while not self.stopped.wait(self.interval_s):
                push.send("heartbeat", meta={"client": self.client})


class RobotClient:
    def __init__(
        self, runtime_cfg: Mapping[str, Any], expected: RobotSpec | dict | None = None, role: str = "client"
    ):
        """role: client (a policy) or operator (the operator's console: its key may also clear an e-stop)."""
        self.runtime = runtime_cfg
        self.expected = expected
        self.client_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.curve = curve_keys(runtime_cfg, role)
        self.obs_addr, self.cmd_addr = address(runtime_cfg, "obs"), address(runtime_cfg, "cmd")
        self.spec: RobotSpec | None = None
        self.latest: Observation | None = None
        self.gaps = 0  # executed steps this client never saw (high-water mark overflow)
        self.driver_restarts = 0
        self.rebuilds = 0  # sockets rebuilt after the driver went silent
        self.rebuild_after_s = float(runtime_cfg.get("rebuild_after_s", 3.0))
        self._last_heard = time.monotonic()
        self._sub: Subscriber | None = None
        self._push: Pusher | None = None
        self._hb: _Heartbeat | None = None

    # ---- handshake ----
    def connect(self, timeout_s: float | None = None) -> RobotSpec:
        """Handshake with the driver: returns its spec, or raises PeerTimeoutError / HandshakeError."""
        timeout_s = float(timeout_s if timeout_s is not None else self.runtime.get("recv_timeout_s", 2.0))
        deadline = time.monotonic() + timeout_s
        self._open_sockets(client_inbox())  # before the spec: frames up to the wire's limit
        spec = self._await_spec(deadline, timeout_s, hello_every_s=0.1)
        if self.expected is not None:
            try:
                spec.check_against(self.expected)
            except HandshakeError:
                self.close()
                raise
        # The spec tells how large an observation can be (cameras included): the observation socket is opened
        # again with that frame limit, and used once it is subscribed (a spec has reached it).
        self._reopen_sub(client_inbox(spec.state_dim, spec.action_dim, spec.cameras))
        self._await_spec(deadline, timeout_s, hello_every_s=0.02)
        return self._accept(spec)

    def _await_spec(self, deadline: float, timeout_s: float, hello_every_s: float) -> RobotSpec:
        """Say hello until the driver's spec arrives; PeerTimeoutError at the deadline."""
        next_hello = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_hello:
                self._cmd("hello")
                next_hello = time.monotonic() + hello_every_s
            try:
                wait_s = min(hello_every_s, max(0.0, deadline - time.monotonic()))
                msg = self._sub.recv(wait_s, raise_invalid=True)
            except VersionMismatchError as e:
                self.close()
                raise HandshakeError(f"robot spec mismatch: protocol_version: {e}") from e
            except WireError as e:  # anything else malformed is dropped
                # (camera images are extra fields until the spec says which cameras there are: read after it)
                if e.reason != "extra_field":
                    log.warning("client: dropped invalid message during handshake: %s", e)
                continue
            if msg is not None and msg.type == "spec":
                return RobotSpec.from_meta(msg.meta)
            if msg is not None and msg.type == "obs":
                self.latest = Observation.from_message(msg)
        self.close()
        raise PeerTimeoutError(
            f"no robot driver answered at {self.obs_addr} / {self.cmd_addr} within {timeout_s:.1f} s: "
            "start it (`expo-robot driver`) or check runtime.host and the ports"
        )

    def connect_when_up(
        self,
        timeout_s: float,
        check_driver: Callable[[], None] = lambda: None,
        stop: threading.Event | None = None,
    ) -> RobotSpec:
        """`connect`, retried until a driver that is still starting answers (PeerTimeoutError after timeout_s).
        check_driver raises when the driver's process has exited (its starter knows how to tell); a set `stop`
        (Ctrl-C) raises KeyboardInterrupt."""
        deadline = time.monotonic() + timeout_s
        while True:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            check_driver()
            try:
                return self.connect(timeout_s=min(2.0, max(0.1, deadline - time.monotonic())))
            except PeerTimeoutError:
                if time.monotonic() >= deadline:
                    raise

    def _open_sockets(self, schema) -> None:
        self._open_sub(schema)
        hwm = int(self.runtime.get("obs_hwm", 1000))
        self._push = Pusher(self.cmd_addr, hwm=hwm, curve=self.curve, name="client.cmd")
        self._last_heard = time.monotonic()

    def _open_sub(self, schema) -> None:
        """The observation socket; its frame limit (zmq.MAXMSGSIZE) comes from the schema's largest observation."""
        hwm = int(self.runtime.get("obs_hwm", 1000))
        self._sub = Subscriber(self.obs_addr, schema, hwm=hwm, curve=self.curve, name="client.obs")

    def _reopen_sub(self, schema) -> None:
        """Use `schema` for observations; the socket is opened again when its frame limit changes with it."""
        if self._sub.sock.maxmsgsize == max_frame_bytes(schema):
            self._sub.schema = schema
            return
        self._sub.close()
        self._open_sub(schema)

    def _rebuild(self) -> None:
        """The driver has been silent for rebuild_after_s: new sockets. Commands queued for the lost driver (a
        reset, a chunk planned for a scene that is gone) are dropped instead of reaching the next one."""
        schema = self._sub.schema
        self._sub.close()
        self._push.close()
        self._open_sockets(schema)
        self.rebuilds += 1
        log.warning(
            "no message from the robot driver at %s for %.1f s: sockets rebuilt, queued commands dropped",
            self.obs_addr,
            self.rebuild_after_s,
        )

    def _accept(self, spec: RobotSpec) -> RobotSpec:
        self.spec = spec
        self._last_heard = time.monotonic()
        interval = min(float(self.runtime.get("heartbeat_s", 0.5)), spec.heartbeat_s)
        self._hb = _Heartbeat(self.cmd_addr, self.client_id, interval, self.curve)
        self._hb.start()
        log.info("connected to %s (%s, %.0f Hz, %s)", spec.robot, spec.driver_id, spec.fps, spec.mode)
        return spec

    # ---- observations ----
    def _require(self) -> RobotSpec:
        if self.spec is None or self._sub is None:
            raise NotConnectedError("RobotClient is not connected: call connect() first")
        return self.spec

    def _next(self, timeout_s: float) -> Observation | None:
        msg = self._sub.recv(timeout_s)
        if msg is None:
            if time.monotonic() - self._last_heard > self.rebuild_after_s:
                self._rebuild()
            return None
        self._last_heard = time.monotonic()
        if msg.type == "spec":
            self._check_restart(msg)
        if msg is None or msg.type != "obs":
            return None
        obs = Observation.from_message(msg)
        if obs.fresh and self.latest is not None and obs.episode == self.latest.episode:
            self.gaps += max(0, obs.step - self.latest.step - 1)
        self.latest = obs
        return obs

    def _check_restart(self, msg: Message) -> None:
        """A new driver_id means the driver restarted: sockets reconnect by themselves; the episode is gone."""
        driver_id = msg.meta.get("driver_id")
        if self.spec is not None and driver_id and driver_id != self.spec.driver_id:
            log.warning(
                "robot driver restarted (%s -> %s): start a new episode", self.spec.driver_id, driver_id
            )
            self.driver_restarts += 1
            self.spec = RobotSpec.from_meta(msg.meta)
            self._reopen_sub(client_inbox(self.spec.state_dim, self.spec.action_dim, self.spec.cameras))

    def recv_obs(self, timeout_s: float = 1.0) -> Observation | None:
        """The next observation of an executed step (in order), or None at the deadline."""
        self._require()
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            obs = self._next(remaining)
            if obs is not None and obs.fresh:
                return obs
        return None

    def latest_obs(self, timeout_s: float = 0.0) -> Observation | None:
        """The newest observation (fresh or republished) after reading everything queued; waits up to timeout_s."""
        self._require()
        obs = self._next(timeout_s)
        while obs is not None:
            newer = self._next(0.0)
            if newer is None:
                break
            obs = newer
        return self.latest

    # ---- commands ----
    def _cmd(self, op: str, **meta: Any) -> None:
        if self._push is None:
            raise NotConnectedError("RobotClient is not connected: call connect() first")
        if not self._push.send("cmd", meta={"op": op, "client": self.client_id, **meta}):
            raise PeerTimeoutError(
                f"command '{op}' could not be queued to {self.cmd_addr}: the driver is not reading"
            )

    def send_chunk(self, actions: np.ndarray, t0: float, chunk_id: int) -> None:
        """Send an action chunk float32[H, A]; step k is due at t0 + k/fps on the driver clock (see Observation.t)."""
        spec = self._require()
        actions = np.ascontiguousarray(actions, dtype=np.float32)
        if (
            actions.ndim != 2
            or actions.shape[1] != spec.action_dim
            or not 0 < actions.shape[0] <= spec.max_chunk_len
        ):
            raise ValueError(
                f"chunk must be float32[H, {spec.action_dim}] with 1 <= H <= {spec.max_chunk_len}, got {actions.shape}"
            )
        if not np.isfinite(actions).all():
            raise ValueError("chunk holds NaN or Inf; the driver would drop it")
        if not 0 <= int(chunk_id) <= MAX_CHUNK_ID:
            raise ValueError(f"chunk_id must be in 0..2**63-1 (the driver drops others), got {chunk_id}")
        meta = {"t0": float(t0), "chunk_id": int(chunk_id), "client": self.client_id}
        if not self._push.send("chunk", {"actions": actions}, meta):
            raise PeerTimeoutError(f"chunk could not be queued to {self.cmd_addr}: the driver is not reading")

    def reset(self, seed: int | None = None, wait_s: float | None = None) -> Observation | None:
        """Ask for a new episode. Its step-0 observation then arrives through recv_obs(), in order.

        wait_s: instead wait up to that long for step 0 here and return it (it is then not returned again by
        recv_obs); EStopLatchedError if the driver refuses because the e-stop is latched, PeerTimeoutError if
        nothing comes.
        """
        self._require()
        if seed is not None and not 0 <= int(seed) <= SEED_MAX:
            raise ValueError(
                f"seed must be in 0..2**32-1 (what the simulator takes; the driver drops others), got {seed}"
            )
        before = self.latest.episode if self.latest is not None else -1
        self._cmd("reset", **({"seed": int(seed)} if seed is not None else {}))
        if wait_s is None:
            return None
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            obs = self._next(remaining)
            if obs is not None and obs.fresh and obs.step == 0 and obs.episode > before:
                return obs
            if obs is not None and obs.safety.get("state") == "estop":
                raise EStopLatchedError("reset refused: the e-stop is latched; call clear_estop() first")
        raise PeerTimeoutError(
            f"no step-0 observation within {wait_s:.1f} s after reset: is the driver alive?"
        )

    def estop(self, reason: str = "policy") -> None:
        self._cmd("estop", reason=reason)

    def clear_estop(self) -> None:
        """Only from a client made with role="operator": the driver refuses (and counts) it from any other key."""
        self._cmd("clear_estop")

    # ---- teardown ----
    def close(self) -> None:
        if self._hb is not None:
            self._hb.stopped.set()
            self._hb.join(timeout=1.0)
            self._hb = None
        for sock in (self._sub, self._push):
            if sock is not None:
                sock.close()
        self._sub = self._push = None
        self.spec = None

    def __enter__(self) -> RobotClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict:
        out = {"gaps": self.gaps, "driver_restarts": self.driver_restarts, "rebuilds": self.rebuilds}
        for name, sock in (("obs", self._sub), ("cmd", self._push)):
            if sock is not None:
                out.update({f"{name}.{k}": v for k, v in sock.stats().items()})
        return out


__all__ = ["NotConnectedError", "Observation", "RobotClient"]
