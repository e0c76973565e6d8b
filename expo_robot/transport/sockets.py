"""Small ZeroMQ channel wrappers shared by the driver, the actor and the learner.

Every channel: LINGER=0 (closing never blocks), a high-water mark, non-blocking sends (a full queue drops and counts
instead of stalling a control loop), a deadline on every receive, validation of every received message (bad ones
are counted by reason, logged and dropped), a frame size limit (zmq.MAXMSGSIZE) from its schema, so ZeroMQ drops the
connection of a peer that sends a larger frame before allocating it, and CurveZMQ encryption/authentication with an allow-list of client
keys (the processes of a run always pass `curve=curve_keys(cfg.runtime)`, transport/keys.py). A bare socket is
possible on loopback only (tests, benchmarks): binding beyond loopback without an allow-list is refused.

    pub = Publisher(address(cfg.runtime, "obs"), schema=OBS, curve=keys)   # binds
    sub = Subscriber(address(cfg.runtime, "obs"), schema=OBS, curve=keys)  # connects
    msg = sub.recv(timeout_s=0.5)                                     # Message or None
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from expo_robot.transport.wire import (
    MAX_HEADER_BYTES,
    Message,
    Schema,
    WireError,
    decode,
    encode,
    max_frame_bytes,
)

log = logging.getLogger(__name__)
_LOG_EVERY_S = (
    5.0  # invalid messages are logged at most this often per channel (a fuzzer must not flood logs)
)


class TransportError(ConnectionError):
    """A socket could not be set up (address in use, bad key files, ...); the message says what to change."""


def address(runtime_cfg: Mapping[str, Any], name: str, host: str | None = None) -> str:
    """tcp://host:port for a named channel of configs/runtime (obs, cmd, weights, transitions)."""
    key = f"{name}_port"
    if key not in runtime_cfg:
        names = sorted(k[: -len("_port")] for k in runtime_cfg if str(k).endswith("_port"))
        raise TransportError(f"runtime config has no '{key}'; known channels: {', '.join(names)}")
    return f"tcp://{host or runtime_cfg.get('host', '127.0.0.1')}:{int(runtime_cfg[key])}"


def free_tcp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct TCP ports the OS reports free on host right now (bound to port 0 together, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a wildcard, a host name or an interface: may be reachable from other machines


def _bind_host(addr: str) -> str | None:
    """The host of a tcp:// address; None for other transports (inproc, ipc: not reachable from the network)."""
    if not addr.startswith("tcp://"):
        return None
    return addr[len("tcp://") :].rsplit(":", 1)[0]


@dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ keys. The binding side is the server; connecting sides need the server's public key.

    Key files are those written by `zmq.auth.create_certificates` (public `.key`, secret `.key_secret`).
    `authorized_clients_dir` (required on the server) is the allow-list: only the clients' public keys in that
    folder may connect. `operator_keys_dir`: the public keys a driver accepts `clear_estop` from.
    expo_robot/transport/keys.py makes and finds them (`curve_keys(runtime_cfg)`).
    """

    server_public_key_file: str
    server_secret_key_file: str | None = None
    client_public_key_file: str | None = None
    client_secret_key_file: str | None = None
    authorized_clients_dir: str | None = None
    operator_keys_dir: str | None = None

    @classmethod
    def from_config(cls, curve_cfg: Mapping[str, Any] | None) -> CurveKeys | None:
        if not curve_cfg:
            return None
        return cls(**{k: (str(v) if v is not None else None) for k, v in dict(curve_cfg).items()})


def _load_keys(path: str | None, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path:
        raise TransportError(f"CurveZMQ needs a {'secret' if secret else 'public'} key file in runtime.curve")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise TransportError(f"cannot read CurveZMQ key file {path}: {e}") from e


# one ZAP authenticator per context (by id), one ZAP domain per allow-list folder
_authenticators: dict[int, Any] = {}


def _allow_list_domain(ctx: zmq.Context, allow_dir: str) -> str:
    """The ZAP domain whose clients are the public keys in allow_dir (read again for every new server socket, so a
    restarted driver sees keys added since)."""
    if not Path(allow_dir).is_dir():
        raise TransportError(
            f"allow-list folder {allow_dir} does not exist: add clients with `expo-robot keys`"
        )
    auth = _authenticators.get(id(ctx))
    if auth is None or auth.context is not ctx:  # (an id is reused once its context is gone)
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx)
        auth.start()
        _authenticators[id(ctx)] = auth
    domain = "expo-" + hashlib.sha1(str(Path(allow_dir).resolve()).encode()).hexdigest()[:16]
    auth.configure_curve(domain=domain, location=allow_dir)
    return domain


def close_context(ctx: zmq.Context) -> None:
    """Stop the context's ZAP authenticator thread, then destroy the context (its sockets close, nothing lingers)."""
    auth = _authenticators.pop(id(ctx), None)
    if auth is not None and auth.context is ctx:
        auth.stop()
    ctx.destroy(linger=0)


def _apply_curve(ctx: zmq.Context, sock: zmq.Socket, keys: CurveKeys, server: bool) -> None:
    if server:
        public, secret = _load_keys(keys.server_secret_key_file, secret=True)
        if secret is None:
            raise TransportError(f"{keys.server_secret_key_file} holds no secret key")
        if not keys.authorized_clients_dir:  # CurveZMQ alone encrypts for anyone: an allow-list authorises
            raise TransportError("runtime.curve needs authorized_clients_dir (the allow-list of client keys)")
        sock.zap_domain = _allow_list_domain(ctx, keys.authorized_clients_dir).encode()
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        return
    server_public, _ = _load_keys(keys.server_public_key_file, secret=False)
    public, secret = _load_keys(keys.client_secret_key_file, secret=True)
    if secret is None:
        raise TransportError(f"{keys.client_secret_key_file} holds no secret key")
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret


def _refuse_open_bind(addr: str, curve: CurveKeys | None) -> None:
    host = _bind_host(addr)
    if host is not None and not is_loopback(host) and (curve is None or not curve.authorized_clients_dir):
        raise TransportError(
            f"refusing to bind {addr} without CurveZMQ and an allow-list of client keys: make keys with "
            "`expo-robot keys init` (README, Security), or bind runtime.host=127.0.0.1"
        )


def _user_id(frame: zmq.Frame | bytes) -> str:
    if not isinstance(frame, zmq.Frame):  # copied bytes carry no connection metadata
        return ""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP handler answered for this connection
        return ""


class Channel:
    """One ZeroMQ socket with validation, deadlines and counters. Not thread-safe (ZeroMQ sockets never are)."""

    kind: int = zmq.PAIR
    binds: bool = False

    def __init__(
        self,
        addr: str,
        schema: Schema | Mapping[str, Schema] | None = None,
        hwm: int = 100,
        bind: bool | None = None,
        curve: CurveKeys | None = None,
        ctx: zmq.Context | None = None,
        name: str = "",
        check: Callable[[Message], None] | None = None,
    ):
        """check: the receiver's own checks of a decoded message's values (e.g. times against its clock); it raises
        WireError, counted and dropped like a malformed message."""
        self.addr, self.schema, self.name = addr, schema, name or f"{type(self).__name__}({addr})"
        self.check = check
        self.counters: Counter = Counter()
        self._seq = 0
        self._last_log = -_LOG_EVERY_S
        self._ctx = ctx or zmq.Context.instance()
        self.sock = self._ctx.socket(self.kind)
        self.sock.linger = 0
        self.sock.sndhwm = self.sock.rcvhwm = hwm
        self.sock.maxmsgsize = self.max_frame_bytes()
        binds = self.binds if bind is None else bind
        # a server with an allow-list learns who sent each message (the client's z85 public key: Message.sender)
        self._reads_sender = binds and curve is not None
        try:
            if binds:
                _refuse_open_bind(addr, curve)
            if curve is not None:
                _apply_curve(self._ctx, self.sock, curve, server=binds)
            self._setup()
            (self.sock.bind if binds else self.sock.connect)(addr)
        except zmq.ZMQError as e:
            self.sock.close()
            verb = "bind" if binds else "connect"
            raise TransportError(
                f"{self.name}: cannot {verb} {addr}: {e} (is another process using it?)"
            ) from e
        except TransportError:
            self.sock.close()
            raise
        self._rcvtimeo_ms = self.sock.rcvtimeo

    def _setup(self) -> None:
        """Socket options that must be set before bind/connect."""

    def max_frame_bytes(self) -> int:
        """The largest frame this socket accepts: the largest its schema allows (without one, the wire's limit)."""
        return max_frame_bytes(self.schema)

    # ---- sending ----
    def send(
        self,
        msg_type: str,
        arrays: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        stamp: float | None = None,
    ) -> bool:
        """Non-blocking send; False (and counted in `send_dropped`) when the queue is full."""
        frames = encode(msg_type, arrays, meta, seq=self._seq, stamp=stamp)
        self._seq += 1
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.counters["send_dropped"] += 1
            return False
        self.counters["sent"] += 1
        return True

    # ---- receiving ----
    def recv(self, timeout_s: float = 0.0, raise_invalid: bool = False) -> Message | None:
        """The next valid message within timeout_s, else None. Invalid ones are counted, logged and skipped."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            frames = self._recv_frames(deadline)
            if frames is None:
                return None
            msg = self._validate(frames, raise_invalid)
            if msg is not None:
                return msg
            if time.monotonic() >= deadline:  # a flood of bad messages must not hold the caller's loop
                return None

    def _recv_frames(self, deadline: float) -> list | None:
        # one blocking receive with ZeroMQ's own timeout rather than a poll, then a receive: a call fewer per message
        wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if wait_ms != self._rcvtimeo_ms:
            self.sock.setsockopt(zmq.RCVTIMEO, wait_ms)  # (not `sock.rcvtimeo = `: 7 us against 1 us)
            self._rcvtimeo_ms = wait_ms
        try:
            return self.sock.recv_multipart(copy=False)
        except zmq.Again:
            return None

    def drain_latest(self, timeout_s: float = 0.0) -> Message | None:
        """Wait up to timeout_s for a message, then read everything queued; the newest valid one wins."""
        latest = self.recv(timeout_s)
        if latest is None:
            return None
        while True:
            newer = self.recv(0.0)
            if newer is None:
                return latest
            self.counters["superseded"] += 1
            latest = newer

    def _validate(self, frames: list, raise_invalid: bool) -> Message | None:
        self.counters["received"] += 1
        try:
            msg = decode(frames, self.schema)
            if self._reads_sender:
                msg.sender = _user_id(frames[0])
            if self.check is not None:
                self.check(msg)
        except WireError as e:
            self.counters["invalid"] += 1
            self.counters[f"invalid.{e.reason}"] += 1
            if raise_invalid:
                raise
            self._log_invalid(e)
            return None
        self.counters["valid"] += 1
        return msg

    def _log_invalid(self, error: WireError) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning(
                "%s: dropped invalid message (%s); %d dropped so far",
                self.name,
                error,
                self.counters["invalid"],
            )

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def close(self, linger_s: float = 0.0) -> None:
        """Close now; linger_s > 0 gives queued messages (e.g. a final status) that long to go out."""
        if not self.sock.closed:
            self.sock.close(linger=int(linger_s * 1000))

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pair(Channel):
    """PAIR, one peer on each side (a parent and its helper process, a benchmark and its echo)."""

    kind = zmq.PAIR


class Publisher(Channel):
    """PUB, binds. Slow subscribers lose messages at the high-water mark instead of stalling the publisher."""

    kind, binds = zmq.PUB, True

    def max_frame_bytes(self) -> int:
        return MAX_HEADER_BYTES  # what a publisher receives: subscriptions, a topic each (ours are empty)


class Subscriber(Channel):
    """SUB to everything, connects. Reconnects on its own when the publisher restarts."""

    kind, binds = zmq.SUB, False

    def _setup(self) -> None:
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")


class Pusher(Channel):
    """PUSH, connects. Messages queue (up to the high-water mark) until the puller is there."""

    kind, binds = zmq.PUSH, False

    def max_frame_bytes(self) -> int:
        return MAX_HEADER_BYTES  # a pusher receives nothing


class Puller(Channel):
    """PULL, binds. Several pushers may connect (e.g. several actors feeding one learner)."""

    kind, binds = zmq.PULL, True
