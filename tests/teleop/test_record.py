"""`expo-robot record` with the scripted operator through the driver (simulated Panda): the dataset loads with
lerobot, episode boundaries do not stall the 30 Hz real-time loop, and SIGKILL loses only the episode in progress."""

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from expo_robot.config import load_config
from expo_robot.data.dataset_cli import check
from expo_robot.data.dataset_io import read_dataset, repair_dataset
from expo_robot.runtime.record import record
from expo_robot.transport.sockets import free_tcp_ports

REPO = Path(__file__).resolve().parents[2]
FPS = 30
WINDOW = 10  # frames before / after each episode boundary


def record_overrides(tmp_path: Path, *extra: str) -> list[str]:
    obs, cmd = free_tcp_ports(2)
    return [
        "teleop=scripted", "live=off", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}",
        f"run_dir={tmp_path / 'run'}", *extra,
    ]  # fmt: skip


def cadence_at_boundaries(capture: list[np.ndarray], period: float) -> dict:
    """Periods (ms) of the WINDOW steps before each episode end, the gap across it, and the WINDOW steps after
    (while the previous episode is being saved), against the steady periods in the middle of episodes."""
    ms = lambda x: np.round(1e3 * np.asarray(x), 1)  # noqa: E731
    before = [ms(np.diff(t[-WINDOW - 1 :])) for t in capture[:-1]]
    after = [ms(np.diff(t[: WINDOW + 1])) for t in capture[1:]]
    at = [ms(b[0] - a[-1] - period) for a, b in itertools.pairwise(capture)]
    middle = ms(np.concatenate([np.diff(t[WINDOW:-WINDOW]) for t in capture]))
    return {"before_ms": before, "at_ms": at, "after_ms": after, "middle_ms": middle}


@pytest.mark.timeout(240)
def test_record_realtime_30hz_boundaries_do_not_stall_and_dataset_loads(tmp_path):
    cfg = load_config(
        record_overrides(tmp_path, f"teleop.fps={FPS}", "teleop.episodes=4", "task.max_episode_steps=45")
    )
    summary = record(cfg, tmp_path / "run")
    data = read_dataset(summary["dataset"])
    assert summary["episodes"] == 4 and data.fps == FPS and len(data.episodes) == 4
    assert all(ep.intervention.all() for ep in data.episodes)  # the operator drove every step
    assert data.task_names == [cfg.task.description]

    period_ms = 1e3 / FPS
    fig = cadence_at_boundaries(data.capture_time, 1.0 / FPS)
    mid, after = fig["middle_ms"], np.concatenate(fig["after_ms"])
    print(
        f"\nrecord, 30 Hz real time: cadence around {len(fig['at_ms'])} episode boundaries (ms, target {period_ms:.1f})"
    )
    for i in range(len(fig["at_ms"])):
        print(f"  boundary {i}: before {fig['before_ms'][i].tolist()} | reset gap beyond one period "
              f"{fig['at_ms'][i]} | after, while saving {fig['after_ms'][i].tolist()}")  # fmt: skip
    print(
        f"  mid-episode: median {np.median(mid):.1f}, p90 {np.percentile(mid, 90):.1f}, max {mid.max():.1f}"
    )
    print(
        f"  after boundaries: median {np.median(after):.1f}, p90 {np.percentile(after, 90):.1f}, max {after.max():.1f}"
    )
    print(f"  driver loop: {summary['loop']}; load average {os.getloadavg()}")
    # Saving (on the recorder's side) adds no stall: the steps after a boundary keep the mid-episode cadence,
    # and the reset between episodes costs at most two periods more than the mid-episode worst case.
    assert np.percentile(after, 90) <= max(1.5 * period_ms, 1.25 * np.percentile(mid, 90))
    assert max(fig["at_ms"]) <= 2 * period_ms + max(0.0, mid.max() - period_ms)
    report = check(summary["dataset"])
    keeps_up = abs(np.median(mid) - period_ms) < 0.1 * period_ms
    if keeps_up:  # a machine that holds 30 Hz at all: no overrun near a boundary, and the check passes
        assert after.max() <= 2 * period_ms and report.ok, report.problems
    else:  # a shared, overloaded machine: only the rate the recording states can be off
        print(f"  machine does not hold {FPS} Hz here (median {np.median(mid):.1f} ms): rate check skipped")
        assert all("recorded at" in p for p in report.problems), report.problems

    # lerobot's own class and a torch DataLoader read what was recorded
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/dataset", root=summary["dataset"], video_backend="pyav")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    assert batch["observation.state"].shape == (16, 21) and batch["action"].shape == (16, 4)
    assert batch["intervention"].all() and ds.fps == FPS


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_mid_episode_loses_only_that_episode(tmp_path):
    run = tmp_path / "run"
    args = record_overrides(tmp_path, "teleop.fps=30", "teleop.episodes=50", "task.max_episode_steps=30")
    log = (tmp_path / "record.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "expo_robot.cli", "record", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        out = tmp_path / "record.out"
        while time.monotonic() < deadline and out.read_text().count("queued for saving") < 3:
            assert proc.poll() is None, out.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(0.5)  # mid-episode 4 (30 steps = 1 s at 30 Hz)
        queued = out.read_text().count("queued for saving")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    root = run / "dataset"
    repaired = repair_dataset(root)  # what `expo-robot dataset repair` does; normally nothing to do
    data = read_dataset(root)
    print(f"\nSIGKILL after {queued} episodes were queued: {len(data.episodes)} saved, repairs: {repaired}")
    assert (
        len(data.episodes) >= queued - 1
    )  # at most the one being saved at that instant, besides the open one
    assert len(data.episodes) >= 2
    report = check(root)
    # every problem but the stated rate (which an overloaded shared machine cannot hold in real time) fails
    assert not [p for p in report.problems if "recorded at" not in p], report.problems


def test_the_success_key_rewards_the_last_frame_as_a_sessions_actor_does():
    """The task's old `reward: operator_key` switch is gone: a success key always rewards (session.operator_success_reward)."""
    from expo_robot.runtime.record import RecordingSink
    from expo_robot.runtime.teleop import EpisodeEnd

    frames = []

    class Writer:
        def add_frame(self, **frame):
            frames.append(frame)

        def end_episode(self, truncated=False):
            return 0

    class Obs:
        state, action, reward, intervention, success, t, images = (
            np.zeros(2),
            np.zeros(2),
            0.0,
            True,
            False,
            0.0,
            {},
        )

    sink = RecordingSink(Writer(), episodes=1, success_reward=2.0)
    sink.step(Obs(), Obs())
    sink.end(EpisodeEnd("success", success=True))
    assert frames[-1]["reward"] == 2.0 and frames[-1]["success"]
