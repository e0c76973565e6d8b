"""Fuzz the driver's sockets: malformed and random messages, and well-formed ones with hostile values, never crash it,
never move the robot outside its limits, and the counters account for every message. The default run is short;
`-m slow` sends 100k."""

import socket
import time
from collections import Counter

import numpy as np
import pytest
import zmq
from driver_helpers import make_cfg, running_driver, wait_for

from expo_robot.transport import RobotClient
from expo_robot.transport.protocol import check_command, driver_inbox
from expo_robot.transport.wire import PROTOCOL_VERSION, WireError, decode, encode, read_header, write_header

A = 4
MAX_LEN = 256


def chunk(rng, actions, client="fuzz") -> list:
    return encode(
        "chunk", {"actions": actions}, {"t0": float(rng.uniform(-5, 50)), "chunk_id": 1, "client": client}
    )


def random_message(rng: np.random.Generator) -> list:
    """One message: valid chunks with wild values, or one of many kinds of malformed message."""
    kind = int(rng.integers(13))
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
    if kind == 8:  # huge declared sizes, and a real frame as large as the socket lets through (larger: below)
        frames = chunk(rng, np.zeros((h, A), np.float32))
        header = read_header(frames[0])
        header["fields"][0][2] = [int(rng.integers(10**6, 10**12)), A]
        return [write_header(header), *(frames[1:] if rng.random() < 0.5 else [bytes(60_000)])]
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
    if kind == 11:  # well-formed, hostile values: times, ids, seeds, lengths, client ids
        return hostile_values(rng)
    return encode("heartbeat", meta={"client": "fuzz"})  # valid


def hostile_values(rng: np.random.Generator) -> list:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if rng.random() < 0.5:
        steps = pick([0, 1, 3])
        meta = {
            "t0": pick([1e308, -1e308, 5e-324, 1e6, -1e6, float(rng.uniform(-5, 50))]),
            "chunk_id": pick([-1, -2, 2**63, 2**64 - 1, 0, 5]),
            "client": pick(["", "x" * 129, "fuzz"]),
        }
        return encode("chunk", {"actions": rng.normal(0, 5, (steps, A)).astype(np.float32)}, meta)
    meta = {"op": pick(["reset", "hello", "clear_estop"]), "client": pick(["", "x" * 1000, "fuzz"])}
    meta["seed"] = pick([-1, 2**32, 2**64 - 1, -(2**63), 1.5, True, "7", None, 0, 2**32 - 1])
    return encode("cmd", meta=meta, seq=pick([-1, 0, 2**63 - 1]))


def oversize_frame(port: int, ctx: zmq.Context) -> None:
    """A frame over the socket's limit: ZeroMQ drops that connection from the frame's length prefix (it is never
    received, so never counted); sent from its own socket so the fuzz stream's connection is not the one dropped."""
    with ctx.socket(zmq.PUSH) as push:
        push.linger = 0
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send_multipart([encode("heartbeat", meta={"client": "big"})[0], bytes(2_000_000)])
        time.sleep(0.05)


def expected_reason(frames: list) -> str | None:
    """Why the driver drops these frames (None: it accepts them, or "t0" when that depends on its clock)."""
    try:
        received = [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]  # as read
        check_command(decode(received, driver_inbox(A, MAX_LEN)), now=0.0, fps=10.0)
    except WireError as e:
        return e.reason
    return None


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
        push = ctx.socket(zmq.PUSH)
        push.linger, push.sndtimeo = 0, 10_000  # block (never drop) so every message reaches the driver
        push.connect(f"tcp://127.0.0.1:{cfg.runtime.cmd_port}")
        reasons = Counter()
        for i in range(count):
            frames = random_message(rng)
            reasons[expected_reason(frames)] += 1
            push.send_multipart(frames, copy=False)
            if i % 2000 == 0:
                raw_tcp_garbage(cfg.runtime.cmd_port if i % 4000 else cfg.runtime.obs_port, rng, 5)
                oversize_frame(cfg.runtime.cmd_port, ctx)
        wait_for(
            lambda: driver.inbox.counters["received"] >= count,
            60 + count / 1000,
            "the driver to read everything",
        )
        time.sleep(0.2)
        counters = driver.inbox.counters
        # raw TCP garbage can parse as legacy ZMTP/1.0 frames: such extra messages must all be counted invalid;
        # a t0 is checked against the driver clock at receipt (any window around 0 here): valid or "t0"
        extra = counters["received"] - count
        n_valid, n_t0 = reasons[None], counters["invalid.t0"]
        assert extra >= 0 and counters["valid"] + n_t0 == n_valid + reasons["t0"]
        assert counters["invalid"] == count - n_valid - reasons["t0"] + n_t0 + extra
        for reason in ("seed", "chunk_id", "client", "chunk_empty", "op", "seq"):
            assert counters[f"invalid.{reason}"] == reasons[reason] > 0, reason
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
