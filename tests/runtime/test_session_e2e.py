"""End to end: `expo-robot finetune` starts driver, learner and actor as real processes over real sockets on the
simulated Panda in lock-step, then a resumed session continues from the checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from expo_robot.data.dataset_io import load_episodes
from expo_robot.observe.metrics import read_metrics
from expo_robot.runtime.checkpoint import load_checkpoint


def finetune(processes, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        *processes.common(),
        *processes.robot_ports(),
        "session.eval_episodes=1",
        f"run_dir={run_dir}",
        *extra,
    ]
    return subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "finetune", *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )


@pytest.mark.timeout(900)
def test_finetune_session_then_resume(processes, tmp_path):
    run1 = tmp_path / "run1"
    # weights every 5 updates and at most 40 env steps of learner lag: new weights reach the actor within this
    # short budget however the machine divides its time (the learner runs at a low priority)
    out = finetune(
        processes, run1, "session.env_steps=120", "session.weights_every=5", "session.max_policy_lag_steps=40"
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    records = read_metrics(run1)
    episodes = [r for r in records if r["source"] == "actor" and "episode/success" in r]
    assert episodes, "the actor logged no episode"
    assert max(r["weights/version"] for r in episodes) > 0, "no weights after pretraining reached the actor"
    assert any(r["source"] == "eval" for r in records)
    ckpt = load_checkpoint(run1)
    c1 = ckpt["counters"]
    assert c1["env_steps"] >= 120 and c1["updates"] > 0
    online1 = len(ckpt["online"]["obs"])
    assert online1 > 0
    assert (run1 / "report.md").exists() and (run1 / "finetune.png").exists()
    actor = json.loads((run1 / "actor-0.json").read_text())
    assert actor["env_steps"] == c1["env_steps"], "transitions were lost between the actor and the learner"
    recorded = load_episodes(run1 / "episodes" / "actor-0")  # the session's own data, as a LeRobotDataset
    assert len(recorded) == actor["episodes"] and sum(len(e) for e in recorded) == actor["env_steps"]
    assert len(load_episodes(run1 / "episodes" / "actor-0-eval")) == 2  # the evaluations before and after

    run2 = tmp_path / "run2"
    out = finetune(
        processes, run2, "session.env_steps=240", f"session.resume={run1}", "session.eval_episodes=0"
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ckpt2 = load_checkpoint(run2)
    c2 = ckpt2["counters"]
    assert c2["env_steps"] >= 240 and c2["updates"] > c1["updates"]
    assert c2["received"]["actor-0"] > c1["received"]["actor-0"]
    assert len(ckpt2["online"]["obs"]) > online1  # the buffer was carried over, then grew
    assert "resumed from" in (run2 / "learner.log").read_text()
