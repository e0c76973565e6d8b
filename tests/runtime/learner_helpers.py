"""A real Learner in this process, on the fake robot's spec, seeded with synthetic offline episodes instead of a
simulator's teleop data (seconds instead of minutes), and helpers to feed it transitions over its real socket."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from expo_robot.config import load_config
from expo_robot.data.chunking import chunk_transitions
from expo_robot.runtime import learner as learner_module
from expo_robot.runtime.learner import Learner
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.sockets import Pusher, free_tcp_ports

STATE_DIM = 21  # configs/robot/fake.yaml


def episode_batch(cfg, length: int = 12, seed: int = 0, terminated: bool = True) -> dict[str, np.ndarray]:
    """One episode's chunk transitions, as an actor sends them (stride 1), with actions inside the bounds."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(cfg.robot.action_low), np.asarray(cfg.robot.action_high)
    states = rng.normal(size=(length + 1, STATE_DIM)).astype(np.float32)
    actions = rng.uniform(low, high, size=(length, len(low))).astype(np.float32)
    rewards = (np.arange(length) == length - 1).astype(np.float32)
    return chunk_transitions(
        states, actions, rewards, terminated, int(cfg.agent.chunk), float(cfg.agent.gamma), stride=1,
        interventions=np.zeros(length, bool),
    )  # fmt: skip


def learner_cfg(tmp_path: Path, *overrides: str):
    weights, transitions = free_tcp_ports(2)
    return load_config(
        [
            "robot=fake",
            "profile=demo",
            "device=cpu",
            "live=off",
            "session.pretrain_steps=0",
            f"runtime.weights_port={weights}",
            f"runtime.transitions_port={transitions}",
            f"run_dir={tmp_path / 'learner'}",
            *overrides,
        ]
    )


def make_learner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> Learner:
    """A Learner whose offline data is 6 synthetic episodes (the rest is the real thing: agent, buffers, sockets)."""
    cfg = learner_cfg(tmp_path, *overrides)
    parts = [episode_batch(cfg, seed=100 + i) for i in range(6)]
    offline = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    monkeypatch.setattr(learner_module, "offline_dataset_paths", lambda cfg, **_: [])
    monkeypatch.setattr(learner_module, "load_offline_transitions", lambda *a: (offline, {"episodes": 6}))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Learner(cfg, run_dir)


class RunningLearner:
    """learner.run() on a thread; `code` is its exit code once it returned."""

    def __init__(self, learner: Learner):
        self.learner = learner
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        port = int(learner.cfg.runtime.transitions_port)  # an allowed actor's keys
        self.pusher = Pusher(f"tcp://127.0.0.1:{port}", hwm=1000, curve=curve_keys(learner.cfg.runtime))

    def _run(self) -> None:
        self.code = self.learner.run()

    def __enter__(self) -> RunningLearner:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.learner.stop.set()
        self.thread.join(60)
        self.pusher.close()

    def send(self, batch: dict, actor: str, seq: int, env_steps: int) -> None:
        assert self.pusher.send("transitions", batch, {"actor": actor, "seq": seq, "env_steps": env_steps})

    def handled(self) -> int:
        """Batches the learner has dealt with: invalid on the wire, stored, dropped for their values, or skipped."""
        ln = self.learner
        return ln.inbox.counters["invalid"] + ln.episodes + sum(ln.rejected.values()) + ln.skipped

    def wait_handled(self, n: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.handled() < n:
            assert self.thread.is_alive(), f"the learner stopped (exit code {self.code})"
            assert time.monotonic() < deadline, f"the learner dealt with {self.handled()} of {n} batches"
            time.sleep(0.005)
