"""Clients of a driver on another host (network namespace), for tests/runtime/test_cross_host.py.

python tests/runtime/cross_host_probe.py SETTINGS_JSON

SETTINGS: host, obs_port, cmd_port, curve (the allowed client's runtime.curve), rogue_curve (a client whose key is
not in the driver's allow-list). Watches the driver with the allowed key while a rogue client (wrong key) and a
plaintext client try to handshake, send chunks, reset and clear an e-stop; checks an allowed client does move the
robot; prints one JSON line of what it saw.
"""

import json
import sys
import time

import numpy as np

from expo_robot.transport import PeerTimeoutError, RobotClient
from expo_robot.transport.protocol import client_inbox
from expo_robot.transport.sockets import CurveKeys, Pusher, Subscriber, address

ATTEMPT_S = 2.0


class Watcher:
    """The driver's observations through an allowed subscriber: its command counters, steps and safety state."""

    def __init__(self, runtime: dict):
        curve = CurveKeys.from_config(runtime["curve"])
        self.sub = Subscriber(address(runtime, "obs"), schema=client_inbox(), curve=curve)
        self.last = None

    def watch(self, seconds: float) -> list[dict]:
        seen, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.sub.recv(0.1)
            if msg is not None and msg.type == "obs":
                self.last = msg.meta
                seen.append(msg.meta)
        return seen

    def first(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.last is None and time.monotonic() < deadline:
            self.watch(0.2)
        return self.last is not None

    def received(self) -> int:
        """Messages the driver's command socket has taken in so far (valid or not)."""
        self.watch(0.3)
        return int(self.last["counters"].get("inbox.received", 0))


def attack(runtime: dict, curve: dict | None, t0: float) -> str:
    """Handshake, then a chunk, a reset and an e-stop clear, repeated for ATTEMPT_S. Returns how the handshake went."""
    client = RobotClient({**runtime, "curve": curve})
    try:
        client.connect(timeout_s=ATTEMPT_S)
        outcome = "accepted"
    except PeerTimeoutError:
        outcome = "refused"
    finally:
        client.close()
    push = Pusher(address(runtime, "cmd"), curve=CurveKeys.from_config(curve))
    actions = np.tile(np.array([1.0, 1.0, 1.0, 2.0], np.float32), (50, 1))
    deadline, k = time.monotonic() + ATTEMPT_S, 0
    while time.monotonic() < deadline:
        push.send("chunk", {"actions": actions}, {"t0": t0, "chunk_id": 900 + k, "client": "rogue"})
        push.send("cmd", meta={"op": "reset", "client": "rogue"})
        push.send("cmd", meta={"op": "clear_estop", "client": "rogue"})
        k += 1
        time.sleep(0.05)
    push.close()
    return outcome


def moved_by_intruders(watcher: Watcher, runtime: dict, before: int) -> dict:
    """Rogue and plaintext clients attack; what reached the driver meanwhile."""
    t0 = watcher.last["t"] + 0.1
    outcomes = {
        "rogue": attack(runtime, runtime["rogue_curve"], t0),
        "plaintext": attack(runtime, None, t0),
    }
    seen = watcher.watch(1.0)
    return {
        "handshakes": outcomes,
        "received": watcher.received() - before,
        "fresh_steps": sum(m["fresh"] for m in seen),
        "states": sorted({m["safety"]["state"] for m in seen}),
    }


def main() -> None:
    settings = json.loads(sys.argv[1])
    runtime = {**settings, "heartbeat_s": 0.5}
    watcher = Watcher(runtime)
    if not watcher.first(timeout_s=30.0):
        print(json.dumps({"error": "no observation from the driver with the allowed key"}), flush=True)
        return
    result = {"idle": moved_by_intruders(watcher, runtime, watcher.received())}

    with RobotClient(
        runtime
    ) as robot:  # the allowed client: its chunk moves the robot, then it latches an e-stop
        robot.connect(timeout_s=10)
        obs = robot.reset(wait_s=10)
        robot.send_chunk(np.array([[0.5, 0.0, 0.0, 1.0]], np.float32), t0=obs.t + 0.1, chunk_id=1)
        step = robot.recv_obs(timeout_s=10)
        result["allowed_step"] = None if step is None else step.step
        robot.estop("cross-host test")
        time.sleep(0.5)
    watcher.watch(1.0)  # the allowed client's last heartbeats drain
    result["estopped"] = moved_by_intruders(watcher, runtime, watcher.received())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
