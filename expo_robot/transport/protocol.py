"""The driver <-> policy protocol: message types, their schemas, and the robot spec exchanged at handshake.

Driver -> policy (driver's PUB, runtime.obs_port):
  obs   arrays state f32[S], action f32[A] (what was really executed, after safety); meta t, episode, step, reward,
        terminated, truncated, success, intervention, fresh (False = republished while idle), safety, chunk_id, loop
        intervention: the operator's teleop device (in the driver, drivers/teleop.py) commanded this step
        counters: cumulative; `operator.<key>` counts operator keys (success, failure, rerecord, quit, estop, ...),
        so a client that misses a message still sees every key; takeovers / releases / steps_intervention
        with cameras (spec.cameras): arrays image.<name> u8[H, W, 3] (the camera's newest frame, RGB) and meta
        image_time {name: capture time on the driver clock, the clock of t}; a camera with no frame yet has no
        image_time entry (its image is black)
  spec  meta: the RobotSpec fields (sent on every hello and at heartbeat rate); `cameras` only when there are some
Policy -> driver (driver's PULL, runtime.cmd_port):
  chunk arrays actions f32[H, A]; meta t0 (step k is due at t0 + k/fps), chunk_id, client
  cmd   meta op (hello | reset | estop | clear_estop), client, optional seed / reason
  heartbeat  meta client
Values the driver accepts (`check_command`; anything else is counted as `invalid.<reason>` and dropped):
  client 1-128 characters; header seq >= 0; chunk: 1 <= H <= max_chunk_len, 0 <= chunk_id < 2**63 (negative ids
  are the driver's own: -1 reset, -2 operator), t0 within T0_SLACK_S of the driver clock (the past side widened by
  the chunk's length); reset: seed absent, None or an int in 0..2**32-1 (what numpy's seeding takes). An e-stop is
  never refused for its values: it stops the robot whatever its client or reason say.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from expo_robot.transport.wire import PROTOCOL_VERSION, FieldSpec, Message, Schema, WireError

OPS = ("hello", "reset", "estop", "clear_estop")
NUM = (int, float)
MAX_CLIENT_ID = 128  # characters (RobotClient's ids are ~17)
MAX_CHUNK_ID = 2**63 - 1
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (gym-hil places its cube with it) takes 0..2**32-1
# How far from the driver clock a chunk's t0 may lie: a policy answers obs.t at the next tick, so a sane t0 is within
# a policy's latency of now; a chunk wholly in the past (late by more than its length) would only be skipped.
T0_SLACK_S = 10.0


class HandshakeError(RuntimeError):
    """The driver's spec differs from what the policy expects; the message names the field."""


class EStopLatchedError(RuntimeError):
    """The driver's e-stop is latched; only an explicit clear_estop() (an operator decision) releases it."""


class PeerTimeoutError(TimeoutError):
    """A peer did not answer within its deadline; the message says which and what to check."""


@dataclass(frozen=True)
class RobotSpec:
    """What the policy needs to know about the robot before sending anything."""

    protocol_version: int
    robot: str
    state_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    fps: float
    mode: str  # lockstep | realtime
    max_chunk_len: int
    heartbeat_s: float  # clients must send something at least this often (the driver's watchdog is ~4x this)
    driver_id: str = ""  # changes when the driver restarts
    # camera name -> image shape (H, W, 3): each observation carries image.<name> uint8 of that shape
    cameras: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # a name per state value, when the robot knows them: recorded datasets store them (the dataset contract)
    state_names: tuple[str, ...] = ()

    def to_meta(self) -> dict:
        d = asdict(self)
        d["action_low"], d["action_high"] = list(self.action_low), list(self.action_high)
        d["cameras"] = {k: list(v) for k, v in self.cameras.items()}
        d["state_names"] = list(self.state_names)
        for optional in ("cameras", "state_names"):  # absent when empty: the spec of an earlier release
            if not d[optional]:
                del d[optional]
        return d

    @classmethod
    def from_meta(cls, meta: dict) -> RobotSpec:
        names = {f.name for f in fields(cls)}
        missing = names - set(meta) - {"driver_id", "cameras", "state_names"}
        if missing:
            raise HandshakeError(
                f"driver spec lacks {sorted(missing)}: driver and policy run different releases"
            )
        d = {k: meta[k] for k in names if k in meta}
        d["action_low"] = tuple(float(x) for x in d["action_low"])
        d["action_high"] = tuple(float(x) for x in d["action_high"])
        d["cameras"] = camera_shapes(d.get("cameras") or {})
        d["state_names"] = tuple(str(n) for n in d.get("state_names") or ())
        return cls(**d)

    def check_against(self, expected: RobotSpec | dict) -> None:
        """Raise HandshakeError naming the first field that differs (driver_id and heartbeat are not compared)."""
        want = expected if isinstance(expected, dict) else asdict(expected)
        for name, value in want.items():
            if name in ("driver_id", "heartbeat_s") or value is None:
                continue
            if name == "cameras":
                _check_cameras(self.cameras, camera_shapes(value))
                continue
            have = getattr(self, name)
            same = (
                np.allclose(np.asarray(have, float), np.asarray(value, float))
                if name in ("action_low", "action_high", "fps") and np.shape(have) == np.shape(value)
                else have == value
            )
            if not same:
                raise HandshakeError(
                    f"robot spec mismatch: {name} is {have!r} on the driver, expected {value!r}"
                )


def camera_shapes(cameras: dict) -> dict[str, tuple[int, int, int]]:
    """{name: (H, W, 3)} from a spec's cameras (lists after msgpack); HandshakeError if malformed."""
    try:
        shapes = {str(k): tuple(int(x) for x in v) for k, v in dict(cameras).items()}
    except (TypeError, ValueError) as e:
        raise HandshakeError(f"robot spec cameras must map name -> [H, W, 3], got {cameras!r:.200}") from e
    bad = {k: v for k, v in shapes.items() if len(v) != 3 or v[2] != 3 or min(v) <= 0}
    if bad:
        raise HandshakeError(f"robot spec cameras must map name -> [H, W, 3], got {bad}")
    return shapes


def _check_cameras(have: dict, want: dict) -> None:
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            got, exp = have.get(name, "absent"), want.get(name, "absent")
            raise HandshakeError(
                f"robot spec mismatch: cameras.{name} is {got} on the driver, expected {exp}"
            )


def image_field(name: str) -> str:
    """The obs array that carries camera `name`'s frame."""
    return f"image.{name}"


def obs_schema(
    state_dim: int | None = None, action_dim: int | None = None, cameras: dict | None = None
) -> Schema:
    """Observations; with cameras, exactly their image fields (uint8, declared shape) and meta image_time."""
    arrays = {"state": FieldSpec("float32", (state_dim,)), "action": FieldSpec("float32", (action_dim,))}
    arrays.update({image_field(k): FieldSpec("uint8", tuple(v)) for k, v in (cameras or {}).items()})
    meta = {"t": NUM, "episode": int, "step": int, "fresh": bool, "safety": dict}
    if cameras:
        meta["image_time"] = dict
    return Schema("obs", arrays, meta)


def chunk_schema(action_dim: int | None = None, max_len: int = 1000) -> Schema:
    # H is checked against max_len by the byte budget (a chunk of max_len float32 rows is the limit).
    return Schema(
        "chunk",
        {"actions": FieldSpec("float32", (None, action_dim))},
        {"t0": NUM, "chunk_id": int, "client": str},
        max_bytes=max(1, max_len) * max(1, action_dim or 64) * 4,
    )


CMD = Schema("cmd", {}, {"op": str, "client": str})
HEARTBEAT = Schema("heartbeat", {}, {"client": str})
SPEC = Schema("spec", {}, {"state_dim": int, "action_dim": int, "fps": NUM, "mode": str})


def check_command(msg: Message, now: float, fps: float) -> None:
    """Range checks on a decoded driver command (its schema checked types, shapes, sizes and finiteness): raises
    WireError(reason) for a value the driver must not act on. `now` is the driver clock that t0 is on."""
    meta = msg.meta
    if msg.type == "cmd" and meta["op"] == "estop":
        return  # stopping is always safe: never refused for a bad value
    _require(msg.seq >= 0, "seq", f"seq {msg.seq} is negative")
    client = meta["client"]
    _require(0 < len(client) <= MAX_CLIENT_ID, "client", f"client id has {len(client)} characters (1-128)")
    if msg.type == "chunk":
        _check_chunk(msg, now, fps)
    elif msg.type == "cmd":
        _check_cmd(meta)


def _check_chunk(msg: Message, now: float, fps: float) -> None:
    steps = msg.arrays["actions"].shape[0]
    _require(steps > 0, "chunk_empty", "chunk has no steps")
    chunk_id = msg.meta["chunk_id"]
    _require(0 <= chunk_id <= MAX_CHUNK_ID, "chunk_id", f"chunk_id {chunk_id} is not in 0..2**63-1")
    t0 = msg.meta["t0"]
    earliest, latest = now - steps / fps - T0_SLACK_S, now + T0_SLACK_S
    _require(
        earliest <= t0 <= latest,
        "t0",
        f"t0 {t0:.6g} is not within the driver clock {now:.6g} -{steps / fps + T0_SLACK_S:.3g}/+{T0_SLACK_S:g} s",
    )


def _check_cmd(meta: dict) -> None:
    op = meta["op"]
    _require(op in OPS, "op", f"unknown op {op[:40]!r} (valid: {', '.join(OPS)})")
    seed = meta.get("seed")
    if op == "reset" and seed is not None:
        _require(
            type(seed) is int and 0 <= seed <= SEED_MAX,
            "seed",
            f"seed {str(seed)[:40]!r} is not an integer in 0..2**32-1",
        )


def _require(ok: bool, reason: str, detail: str) -> None:
    if not ok:
        raise WireError(reason, detail)


def driver_inbox(action_dim: int, max_chunk_len: int) -> dict[str, Schema]:
    """Everything the driver accepts on its command socket."""
    return {"chunk": chunk_schema(action_dim, max_chunk_len), "cmd": CMD, "heartbeat": HEARTBEAT}


def client_inbox(
    state_dim: int | None = None, action_dim: int | None = None, cameras: dict | None = None
) -> dict[str, Schema]:
    """Everything a policy accepts on the observation socket."""
    return {"obs": obs_schema(state_dim, action_dim, cameras), "spec": SPEC}


__all__ = [
    "OPS",
    "PROTOCOL_VERSION",
    "EStopLatchedError",
    "HandshakeError",
    "PeerTimeoutError",
    "RobotSpec",
    "camera_shapes",
    "check_command",
    "client_inbox",
    "driver_inbox",
    "image_field",
    "obs_schema",
]
