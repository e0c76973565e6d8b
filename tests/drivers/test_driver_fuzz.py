"""Fuzz the driver's sockets: malformed and random messages never crash it, never move the robot outside its limits,
and the counters account for every message. The default run is short; `-m slow` sends 100k."""

import socket
import time

import numpy as np
import pytest
import zmq
from driver_helpers import make_cfg, running_driver, wait_for

from expo_robot.transport import RobotClient
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.protocol import driver_inbox
from expo_robot.transport.sockets import Pusher, address
from expo_robot.transport.wire import PROTOCOL_VERSION, WireError, decode, encode, read_header, write_header

A = 4
MAX_LEN = 256


def chunk(rng, actions, client="fuzz") -> list:
    return encode(
        "chunk", {"actions": actions}, {"t0": float(rng.uniform(-5, 50)), "chunk_id": 1, "client": client}
    )


def random_message(rng: np.random.Generator) -> list:
    """One message: valid chunks with wild values, or one of many kinds of malformed message."""
    kind = int(rng.integers(12))
    h = int(rng.integers(1, 20))
    if kind <= 2:  # valid wire format, values anywhere (the safety layer must cope)
        return chunk(rng, rng.normal(0, 5, (h, A)).astype(np.float32))
    if kind == 3:  # NaN / Inf
        a = rng.normal(0, 1, (h, A)).astype(np.float32)
        a[rng.integers(h), rng.integers(A)] = rng.choice([np.nan, np.inf, -np.inf])
        return chunk(rng, a)
    if kind == 4:  # wrong dtype or shape or too long
        return chunk(
            rng,
            [
                rng.normal(size=(h, A)),
                rng.normal(size=(h, A + 1)).astype(np.float32),
                np.zeros((MAX_LEN + 1, A), np.float32),
            ][int(rng.integers(3))],
        )
    if kind == 5:  # garbage bytes, any number of frames
        return [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 4)))]
    if kind == 6:  # truncated frames of a valid chunk
        frames = [bytes(f) for f in chunk(rng, np.zeros((h, A), np.float32))]
        i = int(rng.integers(len(frames)))
        frames[i] = frames[i][: int(rng.integers(len(frames[i])))]
        return frames
    if kind == 7:  # other protocol versions
        frames = chunk(rng, np.zeros((h, A), np.float32))
        header = read_header(frames[0])
        header["v"] = int(rng.choice([0, PROTOCOL_VERSION + 1, -1, 2**31]))
        return [write_header(header), *frames[1:]]
    if kind == 8:  # huge declared sizes, and a big real frame
        frames = chunk(rng, np.zeros((h, A), np.float32))
        header = read_header(frames[0])
        header["fields"][0][2] = [int(rng.integers(10**6, 10**12)), A]
        return [write_header(header), *(frames[1:] if rng.random() < 0.5 else [bytes(2_000_000)])]
    if kind == 9:  # commands with wrong or missing meta, unknown ops (estop/reset would be valid: left out)
        meta = [{"op": "launch", "client": "fuzz"}, {"op": 3, "client": "fuzz"}, {"client": "fuzz"}, {}][
            int(rng.integers(4))
        ]
        return encode("cmd", meta=meta)
    if kind == 10:  # unknown message types and random header values
        frames = encode(rng.choice(["obs", "weights", "x" * 100, "chunk"]), meta={"client": "fuzz"})
        header = read_header(frames[0])
        header[str(rng.choice(["seq", "stamp", "meta", "fields", "type"]))] = [
            None,
            "s",
            [1],
            {"a": 1},
            1e400,
        ][int(rng.integers(5))]
        return [write_header(header)]
    return encode("heartbeat", meta={"client": "fuzz"})  # valid


def expected_valid(frames: list) -> bool:
    try:
        msg = decode(frames, driver_inbox(A, MAX_LEN))
    except WireError:
        return False
    return not (msg.type == "cmd" and msg.meta["op"] not in ("hello", "reset", "estop", "clear_estop"))


def raw_tcp_garbage(port: int, rng: np.random.Generator, n: int) -> None:
    """Bytes that are not even ZMTP: ZeroMQ must drop the connection, the driver must not notice."""
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(rng.bytes(int(rng.integers(1, 512))))


def fuzz(tmp_path, count: int) -> None:
    rng = np.random.default_rng(1234)
    cfg = make_cfg(tmp_path, "task.max_episode_steps=1000000000", "safety.max_episode_steps=1000000000")
    ctx = zmq.Context()
    with running_driver(cfg) as driver:
        # an authorised client's socket (its keys are in the allow-list), used raw
        push = Pusher(address(cfg.runtime, "cmd"), curve=curve_keys(cfg.runtime), ctx=ctx).sock
        push.sndtimeo = 10_000  # block (never drop) so every message reaches the driver
        n_invalid = n_bad_op = 0
        for i in range(count):
            frames = random_message(rng)
            if not expected_valid(frames):
                try:
                    decode(frames, driver_inbox(A, MAX_LEN))
                    n_bad_op += 1
                except WireError:
                    n_invalid += 1
            push.send_multipart(frames, copy=False)
            if i % 2000 == 0:
                raw_tcp_garbage(cfg.runtime.cmd_port if i % 4000 else cfg.runtime.obs_port, rng, 5)
        wait_for(
            lambda: driver.inbox.counters["received"] >= count,
            60 + count / 1000,
            "the driver to read everything",
        )
        time.sleep(0.2)
        counters = driver.inbox.counters
        # raw TCP garbage can parse as legacy ZMTP/1.0 frames: such extra messages must all be counted invalid
        extra = counters["received"] - count
        assert (
            extra >= 0 and counters["valid"] == count - n_invalid and counters["invalid"] == n_invalid + extra
        )
        assert driver.counters["bad_op"] == n_bad_op
        sent = np.array(driver.robot.sent)
        assert len(sent) > 0, "no valid chunk was ever executed: the fuzz did not reach the robot"
        check_executed(driver, sent)
        push.close()
        with RobotClient(cfg.runtime) as robot:  # still alive and serving
            robot.connect(10)
            assert robot.reset(seed=0, wait_s=30).step == 0
    ctx.destroy(linger=0)


def check_executed(driver, sent: np.ndarray) -> None:
    lim = driver.filter.limits
    assert np.isfinite(sent).all()
    assert np.all(sent >= lim.low - 1e-6) and np.all(sent <= lim.high + 1e-6)
    # per-step change: against the previous executed action, or after a hold/reset, against the hold command
    hold, prev, boundary, i = driver.robot.hold_action(None), None, True, 0
    for event in list(driver.robot.events):
        if event != "send":
            boundary = True
            continue
        a = sent[i]
        near_prev = prev is not None and np.all(np.abs(a - prev) <= lim.max_change + 1e-5)
        assert near_prev or (boundary and np.all(np.abs(a - hold) <= lim.max_change + 1e-5)), (i, a, prev)
        prev, boundary, i = a, False, i + 1
    assert i == len(sent)
    positions = np.array(driver.robot.positions)
    assert np.all(positions >= lim.box_low - 1e-6) and np.all(positions <= lim.box_high + 1e-6)


@pytest.mark.timeout(120)
def test_fuzz_driver_sockets(tmp_path):
    fuzz(tmp_path, 3_000)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fuzz_driver_sockets_100k(tmp_path):
    fuzz(tmp_path, 100_000)
