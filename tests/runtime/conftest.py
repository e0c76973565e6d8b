"""Start the session's processes (`expo-robot driver|learner|actor`) one by one, as on separate machines."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expo_robot.transport.sockets import free_tcp_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drivers"))
from driver_helpers import wait_for as _wait_for

TINY = [
    "profile=demo",
    "session.offline.episodes=4",
    "session.pretrain_steps=30",
    "session.eval_episodes=0",
    "session.weights_every=5",
    "session.checkpoint_every=20",
    "session.learner_timeout_s=2.0",
    "live=off",
]


class Processes:
    """Processes of one test; everything still running is killed at the end."""

    def __init__(self, tmp_path: Path, seed_root: Path):
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen] = []
        weights, transitions = free_tcp_ports(2)
        self.learner_ports = [f"runtime.weights_port={weights}", f"runtime.transitions_port={transitions}"]
        self.seed_root = f"session.offline.root={seed_root}"

    def robot_ports(self) -> list[str]:
        obs, cmd = free_tcp_ports(2)
        return [f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}"]

    def common(self) -> list[str]:
        """Tiny budgets, the shared seed-data folder and this test's learner ports."""
        return [*TINY, self.seed_root, *self.learner_ports]

    def start(
        self, command: str, run_dir: Path, *overrides: str, prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen:
        """`expo-robot COMMAND`; `prefix` runs it through another program (e.g. `ip netns exec NAME`)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        out = (run_dir / f"{command}.out").open("ab")
        args = [*self.common(), f"run_dir={run_dir}", *overrides]
        env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(
            [*prefix, sys.executable, "-m", "expo_robot.cli", command, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append(p)
        return p

    @staticmethod
    def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
        try:
            return _wait_for(predicate, timeout_s, what, interval_s)
        except TimeoutError as e:
            raise AssertionError(str(e)) from None

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def seed_root(tmp_path_factory) -> Path:
    """One seed-data folder for every session test: the first learner generates the tiny dataset (atomically, so a
    killed learner leaves none half-written), the others find it there, as a session finds data/seed."""
    return tmp_path_factory.mktemp("seed")


@pytest.fixture
def processes(tmp_path, seed_root):
    procs = Processes(tmp_path, seed_root)
    yield procs
    procs.close()
