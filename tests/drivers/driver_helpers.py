"""Shared helpers for the driver tests: configs, an in-process driver, a driver subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from drivers.server import Driver
from expo_robot.config import load_config
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.protocol import client_inbox
from expo_robot.transport.sockets import Subscriber, address, free_tcp_ports

REPO = Path(__file__).resolve().parents[2]


def make_cfg(tmp_path: Path, *overrides: str):
    obs, cmd = free_tcp_ports(2)
    return load_config(
        [
            "robot=fake",
            f"runtime.obs_port={obs}",
            f"runtime.cmd_port={cmd}",
            f"run_dir={tmp_path / 'run'}",
            *overrides,
        ]
    )


def overrides_of(cfg) -> list[str]:
    """The command-line overrides that reproduce cfg's ports (for a driver subprocess)."""
    return [f"runtime.obs_port={cfg.runtime.obs_port}", f"runtime.cmd_port={cfg.runtime.cmd_port}"]


@contextmanager
def running_driver(cfg, robot=None, clock=None):
    """A driver on a thread of this process; yields the Driver (its robot records everything it executed)."""
    driver = Driver(cfg, robot=robot, clock=clock)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            driver.run(stop)
        except BaseException as e:  # surfaced in the test below, not swallowed
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        if not driver.ready.wait(120) and not errors:
            raise TimeoutError("driver did not become ready within 120 s")
        if errors:
            raise errors[0]
        yield driver
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "driver thread did not stop"
    if errors:
        raise errors[0]


@contextmanager
def driver_process(*overrides: str, log_path: Path | None = None):
    """`python -m drivers.server OVERRIDES` as a subprocess; SIGTERM at the end (a clean exit is asserted)."""
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.server", *overrides], cwd=REPO, env=env, stdout=out, stderr=out
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            if log_path:
                out.close()
        assert code == 0, f"driver exited with {code}; log: {log_path.read_text() if log_path else ''}"


def observer(cfg) -> Subscriber:
    """A passive subscriber to the driver's observations (it sends nothing, so it never keeps a driver alive)."""
    return Subscriber(
        address(cfg.runtime, "obs"), client_inbox(), curve=curve_keys(cfg.runtime), name="test.observer"
    )


def wait_for(pred, timeout_s: float, what: str, interval_s: float = 0.005):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
