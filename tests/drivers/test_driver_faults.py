"""Fault tests against a real driver subprocess (fake robot, real time, 10 Hz): a policy that is SIGKILLed mid-chunk,
and one that stays connected but goes silent. The driver must stop executing within 2 control periods."""

import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from driver_helpers import REPO, driver_process, observer, wait_for

from expo_robot.config import load_config
from expo_robot.transport.sockets import free_tcp_ports

FPS = 10.0
CLIENT = str(REPO / "tests" / "drivers" / "fault_client.py")


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        proc.kill()
        raise TimeoutError(f"fault client said nothing within {timeout_s} s")
    return proc.stdout.readline().strip()


def start_client(cfg, chunk_id: int, silent: bool) -> subprocess.Popen:
    args = [sys.executable, CLIENT, str(cfg.runtime.obs_port), str(cfg.runtime.cmd_port), str(chunk_id)]
    proc = subprocess.Popen(
        [*args, *(["silent"] if silent else [])], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    if read_line(proc, 30) != "sent":
        proc.kill()
        raise RuntimeError("fault client failed before sending its chunk")
    return proc


def one_trial(cfg, sub, chunk_id: int, silent: bool, rng) -> dict:
    """Start a client, wait until its chunk is executing, fault it mid-chunk, measure how long the driver kept going."""
    proc = start_client(cfg, chunk_id, silent)
    try:
        wait_for(
            lambda: (
                (m := sub.recv(0.05)) is not None and m.type == "obs" and m.meta.get("chunk_id") == chunk_id
            ),
            5.0,
            f"chunk {chunk_id} to execute",
        )
        if silent:
            fault_t = float(read_line(proc, 5).split()[1])  # when its heartbeats stopped
        else:
            time.sleep(rng.uniform(0.0, 1.0 / FPS))  # anywhere inside a control period
            proc.send_signal(signal.SIGKILL)
            fault_t = time.monotonic()
        executed_after, hold = 0, None
        deadline = time.monotonic() + 3.0
        while hold is None and time.monotonic() < deadline:
            msg = sub.recv(0.05)
            if msg is None or msg.type != "obs":
                continue
            if msg.meta["fresh"] and msg.meta.get("chunk_id") == chunk_id and msg.stamp > fault_t:
                executed_after += 1
            if msg.meta["safety"]["state"] == "hold" and msg.stamp > fault_t:
                hold = msg
        assert hold is not None, "driver never reported a hold"
        return {
            "latency_s": hold.stamp - fault_t,
            "executed_after": executed_after,
            "reason": hold.meta["safety"]["reason"],
        }
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run_trials(tmp_path, trials: int, silent: bool) -> list[dict]:
    obs, cmd = free_tcp_ports(2)
    overrides = [
        "robot=fake",
        "robot.mode=realtime",
        f"robot.fps={FPS}",
        f"runtime.obs_port={obs}",
        f"runtime.cmd_port={cmd}",
        "task.max_episode_steps=100000",
        "safety.max_episode_steps=100000",
        f"run_dir={tmp_path / 'driver'}",
    ]
    cfg = load_config(overrides)
    rng = np.random.default_rng(0)
    results = []
    with driver_process(*overrides, log_path=tmp_path / "driver.log"), observer(cfg) as sub:
        for i in range(trials):
            results.append(one_trial(cfg, sub, chunk_id=100 + i, silent=silent, rng=rng))
    return results


def check(results: list[dict], trials: int) -> None:
    period = 1.0 / FPS
    worst = max(r["latency_s"] for r in results)
    assert len(results) == trials
    assert all(r["latency_s"] <= 2 * period for r in results), (
        f"hold latencies {[r['latency_s'] for r in results]}"
    )
    assert all(r["executed_after"] <= 2 for r in results), [r["executed_after"] for r in results]
    assert all("watchdog" in r["reason"] for r in results)
    print(
        f"{trials}/{trials} trials held; worst latency {worst * 1000:.0f} ms (limit {2 * period * 1000:.0f} ms)"
    )


@pytest.mark.timeout(120)
def test_killed_policy_means_hold_within_two_periods(tmp_path):
    check(run_trials(tmp_path, 3, silent=False), 3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_policy_means_hold_within_two_periods_20_trials(tmp_path):
    check(run_trials(tmp_path, 20, silent=False), 20)


@pytest.mark.timeout(120)
def test_silent_policy_means_hold_within_two_periods(tmp_path):
    check(run_trials(tmp_path, 2, silent=True), 2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_silent_policy_means_hold_within_two_periods_20_trials(tmp_path):
    check(run_trials(tmp_path, 20, silent=True), 20)
