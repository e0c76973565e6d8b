"""Authorisation over real sockets: only allowed keys reach the robot, only the operator's key clears an e-stop, and
nothing binds beyond loopback without keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
import zmq.auth
from driver_helpers import REPO, make_cfg, running_driver, wait_for

from expo_robot.transport import RobotClient
from expo_robot.transport.keys import curve_keys, keys_dir
from expo_robot.transport.sockets import Puller, Pusher, TransportError, address, free_tcp_ports

ACTIONS = np.tile(np.array([0.3, 0.0, 0.0, 1.0], np.float32), (5, 1))


def chunk_msg(t0: float, chunk_id: int, client: str) -> tuple:
    return "chunk", {"actions": ACTIONS}, {"t0": t0, "chunk_id": chunk_id, "client": client}


def rogue_curve(tmp_path, cfg) -> dict:
    """Well-made keys that nobody put in the allow-list (another user's, or a forged client's)."""
    zmq.auth.create_certificates(tmp_path, "rogue")
    return {
        "server_public_key_file": str(keys_dir(cfg.runtime) / "server.key"),
        "client_public_key_file": str(tmp_path / "rogue.key"),
        "client_secret_key_file": str(tmp_path / "rogue.key_secret"),
    }


@pytest.mark.timeout(60)
def test_unauthorised_chunks_and_estop_clears_never_reach_the_robot(tmp_path):
    cfg = make_cfg(tmp_path)
    cmd = address(cfg.runtime, "cmd")
    ctx = zmq.Context()
    try:
        with running_driver(cfg) as driver, RobotClient(cfg.runtime) as policy:
            policy.connect(10)
            obs = policy.reset(seed=0, wait_s=30)
            rogue = Pusher(cmd, curve=curve_keys({"curve": rogue_curve(tmp_path, cfg)}), ctx=ctx)
            plain = Pusher(cmd, ctx=ctx)  # no CurveZMQ at all
            for i, sock in enumerate((rogue, plain)):
                sock.send(*chunk_msg(obs.t + 0.1, 100 + i, f"intruder-{i}"))
            time.sleep(1.0)
            assert driver.robot.sent == [] and driver.counters["chunks"] == 0  # nothing of theirs arrived
            policy.send_chunk(ACTIONS, t0=obs.t + 0.1, chunk_id=1)
            wait_for(lambda: len(driver.robot.sent) >= 5, 10, "the allowed policy's chunk to run")

            policy.estop("operator pressed the stop")
            wait_for(lambda: driver.monitor.state == "estop", 5, "the e-stop")
            for sock in (rogue, plain):
                sock.send("cmd", meta={"op": "clear_estop", "client": "intruder"})
            policy.clear_estop()  # allowed to connect, but not the operator
            wait_for(lambda: driver.counters["cmd.clear_estop_refused"] >= 1, 5, "the policy's clear refused")
            time.sleep(0.5)
            assert driver.monitor.state == "estop" and driver.counters["cmd.clear_estop"] == 1
            with RobotClient(cfg.runtime, role="operator") as operator:
                operator.connect(10)
                operator.clear_estop()
                wait_for(lambda: driver.monitor.state != "estop", 5, "the operator's clear")
            assert driver.counters["cmd.clear_estop_refused"] == 1
            rogue.close()
            plain.close()
    finally:
        ctx.destroy(linger=0)


def test_binding_beyond_loopback_needs_an_allow_list():
    (port,) = free_tcp_ports(1)
    with pytest.raises(TransportError, match="expo-robot keys init"):
        Puller(f"tcp://0.0.0.0:{port}")
    with Puller(f"tcp://127.0.0.1:{port}"):  # loopback: a bare socket is still possible (tests, benchmarks)
        pass


@pytest.mark.timeout(60)
def test_driver_on_all_interfaces_without_keys_is_refused_in_one_line(tmp_path):
    obs, cmd = free_tcp_ports(2)
    env = {**os.environ, "MUJOCO_GL": "egl", "EXPO_ROBOT_KEYS_DIR": str(tmp_path / "none")}
    argv = ["driver", "robot=fake", "runtime.host=0.0.0.0", f"runtime.obs_port={obs}",
            f"runtime.cmd_port={cmd}", f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error" in line]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "expo-robot keys init" in errors[0], proc.stderr
    assert not (tmp_path / "none").exists()  # keys for other machines are never made silently
