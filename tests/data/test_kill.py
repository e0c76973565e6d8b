"""SIGKILL a recording writer: every episode saved before the kill loads and the dataset passes `dataset check`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expo_robot.data.dataset_cli import check
from expo_robot.data.dataset_io import DatasetError, load_episodes, repair_dataset

CHILD = Path(__file__).with_name("kill_writer_child.py")
REPO = Path(__file__).resolve().parents[2]


def _start(root: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(root), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _wait_for(proc: subprocess.Popen, predicate, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if predicate(line.strip()):
            return line.strip()
    proc.kill()
    raise AssertionError(f"child never printed what the test waits for (exit {proc.poll()})")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.timeout(180)
def test_kill_mid_episode_keeps_earlier_episodes(tmp_path):
    root = tmp_path / "ds"
    proc = _start(root, "mid_episode")
    _wait_for(proc, lambda line: line == "READY", timeout=150)
    _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    report = check(root)  # also opens it with lerobot's LeRobotDataset
    assert report.ok, report.problems
    assert [len(e) for e in load_episodes(root)] == [20, 20, 20]


@pytest.mark.timeout(120)
def test_state_left_by_a_kill_inside_a_save_is_repaired(tmp_path):
    """In-process twin of the test below: lerobot's save_episode has run (an open data file without its parquet
    footer, info.json already counting the episode) and nothing else will, exactly as if the process died there."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from expo_robot.data.dataset_io import EpisodeWriter, dataset_features

    root = tmp_path / "ds"
    with EpisodeWriter(root, fps=30, features=dataset_features(3, 2), task="t") as writer:
        for _ in range(2):
            for _ in range(20):
                writer.add_frame(np.zeros(3), np.zeros(2), 0.0)
            writer.end_episode()
    frozen = LeRobotDataset.resume("local/ds", root=root, video_backend="pyav")
    for t in range(20):
        frozen.add_frame(_lerobot_frame(last=t == 19))
    frozen.save_episode()  # the process "dies" here: no finalize
    report = check(root)
    assert not report.ok and any("repair" in p for p in report.problems), report.problems
    with pytest.raises(DatasetError, match="dataset repair"):
        load_episodes(root)
    assert repair_dataset(root)
    assert check(root).ok
    assert [len(e) for e in load_episodes(root)] == [20, 20]
    del frozen


def _lerobot_frame(last: bool) -> dict:
    import numpy as np

    flags = {f: np.array([False]) for f in ("next.truncated", "intervention", "success", "safety_stop")}
    return {
        "observation.state": np.zeros(3, np.float32),
        "action": np.zeros(2, np.float32),
        "next.reward": np.zeros(1, np.float32),
        "next.done": np.array([last]),
        "task": "t",
        **flags,
    }


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_inside_a_save_is_repaired(tmp_path):
    """The worst moment: lerobot has written the 3rd episode's data file (no footer yet) and info.json."""
    root = tmp_path / "ds"
    proc = _start(root, "in_save")
    proc.wait(timeout=150)
    assert proc.returncode == -signal.SIGKILL
    report = check(root)
    assert not report.ok and any("repair" in p for p in report.problems), report.problems
    with pytest.raises(DatasetError, match="dataset repair"):
        load_episodes(root)
    assert repair_dataset(root)
    report = check(root)
    assert report.ok, report.problems
    assert [len(e) for e in load_episodes(root)] == [20, 20]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_at_any_moment_while_saving_loses_at_most_one_episode(tmp_path):
    root = tmp_path / "ds"
    proc = _start(root, "continuous")
    line = _wait_for(proc, lambda line: line.startswith("SAVED") and int(line.split()[1]) >= 3, timeout=150)
    _kill(proc)  # lands anywhere: between saves, inside lerobot's save_episode, finalize or resume
    saved_before = int(line.split()[1])
    fixed = repair_dataset(root)  # what a killed save can leave; empty when the kill fell between saves
    report = check(root)
    assert report.ok, (fixed, report.problems)
    episodes = load_episodes(root)
    assert len(episodes) >= saved_before
    assert all(len(e) == 20 for e in episodes)
