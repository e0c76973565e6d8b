"""`expo-robot teleop teleop=keyboard` end to end in a pseudo-terminal: no person and no display. The keys reach the
device in the driver's child process through /dev/tty; success ends an episode, quit stops cleanly."""

import fcntl
import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from expo_robot.transport.sockets import free_tcp_ports

REPO = Path(__file__).resolve().parents[2]


class Pty:
    def __init__(self, args: list[str]):
        self.master, slave = os.openpty()

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            args, cwd=REPO, stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_tty,
            env={**os.environ, "MUJOCO_GL": "egl"},
        )  # fmt: skip
        os.close(slave)
        self.text = ""

    def read(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="ignore")
                except OSError:  # the child closed the terminal
                    return

    def wait_for(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.text[-3000:]
            self.read(0.2)

    def type(self, keys: str, gap_s: float = 0.05) -> None:
        for k in keys:
            os.write(self.master, k.encode())
            self.read(gap_s)


@pytest.mark.timeout(240)
def test_keyboard_teleop_in_a_terminal(tmp_path):
    obs, cmd = free_tcp_ports(2)
    term = Pty([
        sys.executable, "-m", "expo_robot.cli", "teleop", "teleop=keyboard", "teleop.episodes=0", "live=off",
        f"run_dir={tmp_path / 'run'}", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}",
    ])  # fmt: skip
    try:
        term.wait_for("connected to", 200)
        term.type("w" * 10)  # held (auto-repeat): the operator drives x+
        term.type("y")  # success
        term.wait_for("episode ended: success", 20)
        term.type("q")
        assert term.proc.wait(30) == 0
        term.read(0.5)
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        os.close(term.master)
    assert "operator takes over" in term.text  # engaged: the keyboard holds the robot from the start
    assert "teleop: 1 episodes, 1 successes" in term.text, term.text[-2000:]
