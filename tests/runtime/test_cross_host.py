"""Driver, actor and learner on three "machines": Linux network namespaces joined by veth pairs, with private
addresses that exist only inside them, over CurveZMQ with an allow-list of client keys. Each process is started with
its own sub-command and addresses, as an operator starts them on real machines (README, Across machines). A client
whose key is not in the allow-list, or that speaks plaintext, is refused: none of its messages reaches the driver,
so it can neither move the robot nor clear an e-stop.

Needs root and iproute2's `ip` (network namespaces); skipped, with the reason, where they cannot be made."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq.auth

from expo_robot.runtime.checkpoint import load_checkpoint

PROBE = Path(__file__).with_name("cross_host_probe.py")
# actor <-> driver and actor <-> learner links; the driver and the learner do not see each other
DRIVER_IP, ACTOR_TO_DRIVER_IP = "10.213.1.1", "10.213.1.2"
LEARNER_IP, ACTOR_TO_LEARNER_IP = "10.213.2.1", "10.213.2.2"


def ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {out.stderr.strip()}")


class Hosts:
    """Three network namespaces (driver, actor, learner) named after this process, so parallel runs never meet."""

    def __init__(self) -> None:
        self.tag = str(os.getpid() % 1_000_000)
        self.ns = {role: f"expo{self.tag}{role}" for role in ("driver", "actor", "learner")}
        self.made: list[str] = []

    def up(self) -> None:
        for ns in self.ns.values():
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")  # the actor's recorder talks to it over loopback
        self._link("driver", DRIVER_IP, ACTOR_TO_DRIVER_IP)
        self._link("learner", LEARNER_IP, ACTOR_TO_LEARNER_IP)

    def _link(self, server: str, server_ip: str, actor_ip: str) -> None:
        end, peer = (
            f"x{self.tag}{server[0]}s",
            f"x{self.tag}{server[0]}a",
        )  # interface names: 15 characters at most
        veth = ["type", "veth", "peer", "name", peer, "netns", self.ns["actor"]]
        ip("link", "add", end, "netns", self.ns[server], *veth)
        for ns, dev, addr in ((self.ns[server], end, server_ip), (self.ns["actor"], peer, actor_ip)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")

    def prefix(self, role: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns[role])

    def down(self) -> None:
        for ns in self.made:  # deleting a namespace deletes its end of each veth pair, so the pair
            with contextlib.suppress(OSError):
                ip("netns", "del", ns)
        self.made.clear()


@pytest.fixture
def hosts():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    h = Hosts()
    try:
        try:
            h.up()
        except OSError as e:
            pytest.skip(f"cannot make network namespaces here: {e}")
        yield h
    finally:
        h.down()
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"expo{h.tag}" not in leftover, "a test namespace was left behind"


@dataclass(frozen=True)
class Keys:
    """runtime.curve of each side: the servers (driver, learner), the actor (its key is in the servers' allow-list)
    and a rogue client (its key is not)."""

    server: dict
    client: dict
    rogue: dict


def curve_override(curve: dict) -> str:
    return "runtime.curve={" + ",".join(f"{k}:'{v}'" for k, v in curve.items()) + "}"


@pytest.fixture
def keys(tmp_path) -> Keys:
    root = tmp_path / "keys"
    root.mkdir()
    for name in ("server", "actor", "rogue"):
        zmq.auth.create_certificates(root, name)
    allowed = root / "allowed_clients"
    allowed.mkdir()
    shutil.copy(root / "actor.key", allowed)
    server = {
        "server_public_key_file": str(root / "server.key"),
        "server_secret_key_file": str(root / "server.key_secret"),
        "authorized_clients_dir": str(allowed),
    }

    def client(name: str) -> dict:
        return {
            "server_public_key_file": str(root / "server.key"),
            "client_public_key_file": str(root / f"{name}.key"),
            "client_secret_key_file": str(root / f"{name}.key_secret"),
        }

    return Keys(server, client("actor"), client("rogue"))


def test_a_client_with_a_wrong_key_is_refused_across_hosts(hosts, keys, tmp_path):
    """A driver on the robot's host; from the policy's host a rogue client (wrong key) and a plaintext one try to
    handshake, send chunks, reset and clear an e-stop; the allowed client moves the robot."""
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "driver.out").open("wb") as out:
        driver = subprocess.Popen(
            [*hosts.prefix("driver"), sys.executable, "-m", "expo_robot.cli", "driver", "robot=fake",
             f"runtime.host={DRIVER_IP}", curve_override(keys.server), f"run_dir={tmp_path / 'robot-pc'}"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    # each host has its own ports: the defaults are free there
    settings = {
        "host": DRIVER_IP,
        "obs_port": 5555,
        "cmd_port": 5556,
        "curve": keys.client,
        "rogue_curve": keys.rogue,
    }
    try:
        probe = subprocess.run(
            [*hosts.prefix("actor"), sys.executable, str(PROBE), json.dumps(settings)],
            capture_output=True, text=True, timeout=180, env=env,
        )  # fmt: skip
    finally:
        driver.send_signal(signal.SIGTERM)
        driver.wait(30)
    log = (tmp_path / "driver.out").read_text()
    assert probe.returncode == 0, probe.stderr[-3000:] + log[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"] + "\n" + log[-2000:]

    for phase in ("idle", "estopped"):
        seen = result[phase]
        assert seen["handshakes"] == {"rogue": "refused", "plaintext": "refused"}, (phase, seen)
        assert seen["received"] == 0, (
            f"{phase}: {seen['received']} messages of refused clients reached the driver"
        )
        assert seen["fresh_steps"] == 0, f"{phase}: the robot stepped for a refused client"
    assert result["allowed_step"] == 1, "the allowed client's chunk did not move the robot"
    assert result["estopped"]["states"] == ["estop"], "the e-stop did not stay latched"
    assert driver.returncode == 0, log[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_session_across_three_hosts(hosts, keys, processes, tmp_path):
    """driver, learner and actor each on its own host, started with their own sub-commands and addresses."""
    run = tmp_path / "run"
    budget = ["session.env_steps=40", "task.max_episode_steps=20"]  # (the driver's episodes end at 20 steps)
    server, client = curve_override(keys.server), curve_override(keys.client)
    driver_at, learner_at = f"runtime.driver_host={DRIVER_IP}", f"runtime.learner_host={LEARNER_IP}"
    processes.start(
        "driver",
        tmp_path / "robot-pc",
        f"runtime.host={DRIVER_IP}",
        server,
        *budget,
        prefix=hosts.prefix("driver"),
    )
    learner = processes.start(
        "learner", run, f"runtime.host={LEARNER_IP}", server, *budget, prefix=hosts.prefix("learner")
    )
    actor = processes.start(
        "actor", run, driver_at, learner_at, client, *budget, "actor_id=a0", prefix=hosts.prefix("actor")
    )
    assert actor.wait(800) == 0, (run / "actor.out").read_text()[-3000:]
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(60) == 0
    summary = json.loads((run / "a0.json").read_text())
    counters = load_checkpoint(run)["counters"]
    assert summary["env_steps"] >= 40 and counters["env_steps"] == summary["env_steps"]
    assert counters["received"]["a0"] == summary["episodes"] >= 2
    assert summary["weights_version"] >= 0
