"""Socket wrappers: deadlines, newest-wins, counters of invalid messages, addresses, CurveZMQ."""

import socket
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from expo_robot.transport.sockets import (
    CurveKeys,
    Publisher,
    Puller,
    Pusher,
    Subscriber,
    TransportError,
    address,
    close_context,
)
from expo_robot.transport.wire import FieldSpec, Schema

VEC = Schema("vec", {"x": FieldSpec("float32", (3,))}, {"i": int})


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addr() -> str:
    return f"tcp://127.0.0.1:{port()}"


def test_address_from_runtime_config():
    rt = {"host": "127.0.0.1", "obs_port": 5555, "cmd_port": 5556}
    assert address(rt, "obs") == "tcp://127.0.0.1:5555"
    assert address(rt, "cmd", host="10.0.0.2") == "tcp://10.0.0.2:5556"
    with pytest.raises(TransportError, match="known channels: cmd, obs"):
        address(rt, "weights")


@pytest.mark.timeout(20)
def test_push_pull_in_order_with_deadline_and_invalid_counted():
    a = addr()
    with Puller(a, VEC) as pull, Pusher(a) as push:
        t = time.monotonic()
        assert pull.recv(0.05) is None and time.monotonic() - t < 1.0  # a deadline, not a hang
        push.send("vec", {"x": np.ones(3, np.float32)}, {"i": 0})
        push.send("vec", {"x": np.full(3, np.nan, np.float32)}, {"i": 1})  # invalid: NaN
        push.sock.send_multipart([b"garbage"])  # invalid: not msgpack
        push.send("vec", {"x": np.zeros(3, np.float32)}, {"i": 2})
        got = [pull.recv(2.0), pull.recv(2.0)]
        assert [m.meta["i"] for m in got] == [0, 2]
        assert (
            pull.counters["invalid"] == 2 and pull.counters["valid"] == 2 and pull.counters["received"] == 4
        )
        assert pull.counters["invalid.not_finite"] == 1 and pull.counters["invalid.header_garbage"] == 1


@pytest.mark.timeout(20)
def test_pub_sub_drain_latest_newest_wins():
    a = addr()
    with Publisher(a) as pub, Subscriber(a, VEC) as sub:
        deadline = time.monotonic() + 5
        while sub.recv(0.01) is None and time.monotonic() < deadline:  # PUB/SUB joins late: wait for it
            pub.send("vec", {"x": np.zeros(3, np.float32)}, {"i": -1})
        for i in range(10):
            pub.send("vec", {"x": np.zeros(3, np.float32)}, {"i": i})
        time.sleep(0.2)
        latest = sub.drain_latest(1.0)
        assert latest.meta["i"] == 9 and sub.counters["superseded"] >= 9


@pytest.mark.timeout(20)
def test_full_queue_drops_instead_of_blocking():
    with Pusher(addr(), hwm=2) as push:  # nobody listening
        t = time.monotonic()
        results = [push.send("vec", {"x": np.zeros(3, np.float32)}, {"i": i}) for i in range(50)]
        assert time.monotonic() - t < 1.0
        assert not all(results) and push.counters["send_dropped"] >= 40


def test_bind_conflict_is_a_clear_error():
    a = addr()
    with Puller(a), pytest.raises(TransportError, match="cannot bind"):
        Puller(a)


@pytest.mark.timeout(30)
def test_curve_encrypts_and_rejects_unknown_clients(tmp_path):
    server_dir, client_dir, rogue_dir = tmp_path / "server", tmp_path / "clients", tmp_path / "rogue"
    for d in (server_dir, client_dir, rogue_dir):
        d.mkdir()
    zmq.auth.create_certificates(server_dir, "server")
    zmq.auth.create_certificates(client_dir, "client")
    zmq.auth.create_certificates(rogue_dir, "rogue")
    server = CurveKeys(
        server_public_key_file=str(server_dir / "server.key"),
        server_secret_key_file=str(server_dir / "server.key_secret"),
        authorized_clients_dir=str(client_dir),
    )
    client = CurveKeys(
        server_public_key_file=str(server_dir / "server.key"),
        client_public_key_file=str(client_dir / "client.key"),
        client_secret_key_file=str(client_dir / "client.key_secret"),
    )
    rogue = CurveKeys(
        server_public_key_file=str(server_dir / "server.key"),
        client_secret_key_file=str(rogue_dir / "rogue.key_secret"),
    )
    ctx = zmq.Context()
    a = addr()
    try:
        with Puller(a, VEC, curve=server, ctx=ctx) as pull:
            with Pusher(a, curve=rogue, ctx=ctx) as bad:
                bad.send("vec", {"x": np.zeros(3, np.float32)}, {"i": 1})
                assert pull.recv(0.5) is None  # not in the authorised folder: never delivered
            with Pusher(a, curve=client, ctx=ctx) as good, Pusher(a, ctx=ctx) as plain:
                plain.send("vec", {"x": np.zeros(3, np.float32)}, {"i": 3})  # no encryption: refused
                good.send("vec", {"x": np.zeros(3, np.float32)}, {"i": 2})
                msg = pull.recv(5.0)
                assert msg is not None and msg.meta["i"] == 2
                assert pull.recv(0.3) is None
    finally:
        close_context(ctx)
    with pytest.raises(TransportError, match="key file"):
        Pusher(a, curve=CurveKeys(server_public_key_file=str(tmp_path / "missing.key")))
