"""An image-observation fine-tune end to end: the simulated Panda's camera rendered by MuJoCo in the driver (48x48,
the fast render profile), seed data with rendered frames, frames resized to the agent's 24x24, the agent's
image encoder in the actor and the learner, frames in the transitions, the replay buffer and the session's dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from expo_robot.data.dataset_io import load_episodes
from expo_robot.runtime.checkpoint import load_checkpoint

CAMERA = "cameras.list=[{name:front,type:sim,camera:front,width:48,height:48}]"
SMALL = [
    "agent.encoder.image_size=[24,24]",
    "agent.profiles.demo.encoder.channels=8",
    "agent.profiles.demo.encoder.layers=2",
    "agent.profiles.demo.encoder.embed=16",
    "task.max_episode_steps=8",
    "session.offline.episodes=2",
    "session.pretrain_steps=20",
    "session.env_steps=16",
    "session.eval_episodes=0",
]


@pytest.mark.timeout(600)
def test_image_finetune_session_end_to_end(processes, tmp_path):
    run = tmp_path / "run"
    args = [*processes.common(), *processes.robot_ports(), "cameras=sim", CAMERA, *SMALL, f"run_dir={run}"]
    out = subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "finetune", *args],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    ckpt = load_checkpoint(run)
    online, offline = ckpt["online"], ckpt["offline"]
    assert len(online["obs"]) > 0 and ckpt["counters"]["updates"] > 0
    for buf in (online, offline):  # frames came with the seed data and with every online transition
        frames = buf["frames.front"]  # each stored once, rows point into them
        assert frames.shape[1:] == (24, 24, 3) and frames.dtype == np.uint8
        assert frames.std() > 0  # rendered scenes, not blank frames
        for key in ("obs_image.front.frame", "next_obs_image.front.frame"):
            assert buf[key].shape == (len(buf["obs"]),) and 0 <= buf[key].min() <= buf[key].max() < len(
                frames
            )
        assert len(frames) < 2 * len(buf["obs"])  # a chunk's next frame is the next chunk's first
    assert {"encoder_base", "encoder_critic"} <= set(
        ckpt["agent"]["modules"]
    )  # both image encoders are saved
    actor = json.loads((run / "actor-0.json").read_text())
    assert actor["env_steps"] == ckpt["counters"]["env_steps"] >= 16
    recorded = load_episodes(run / "episodes" / "actor-0")
    assert len(recorded) == actor["episodes"]
    assert all(ep.images["front"].shape == (len(ep), 24, 24, 3) for ep in recorded)
    # the driver's render time per frame (robot.render profile: fast)
    report = (run / "report.md").read_text()
    assert "| simulated camera render per frame |" in report and " ms mean, " in report
