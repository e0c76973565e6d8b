"""Interventions during `expo-robot finetune` (real processes, real sockets, simulated Panda in lock-step): a
scripted operator takes over steps 4..11 of every episode; those steps are flagged by the driver, reach the learner,
are copied into its offline buffer (EXPO-FT), and the actor logs them per episode."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from expo_robot.data.dataset_io import load_episodes
from expo_robot.observe.metrics import read_metrics
from expo_robot.runtime.checkpoint import load_checkpoint
from expo_robot.transport.sockets import free_tcp_ports

REPO = Path(__file__).resolve().parents[2]
START, STEPS = 4, 8  # the operator holds executed steps [4, 12) of every episode
TINY = [
    "profile=demo", "session.offline.episodes=4", "session.pretrain_steps=30", "session.eval_episodes=0",
    "session.weights_every=5", "session.checkpoint_every=50", "session.env_steps=150", "live=off",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(700)
def test_scripted_takeover_during_finetune_reaches_the_learner(tmp_path):
    obs, cmd, weights, transitions = free_tcp_ports(4)
    run = tmp_path / "run"
    args = [
        *TINY, f"run_dir={run}", f"session.offline.root={tmp_path / 'seed'}",
        f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}", f"runtime.weights_port={weights}",
        f"runtime.transitions_port={transitions}",
        "teleop=scripted", "teleop.engaged=false", "teleop.takeover.every=1", "teleop.takeover.first=0",
        f"teleop.takeover.start_step={START}", f"teleop.takeover.steps={STEPS}",
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "finetune", *args], cwd=REPO, capture_output=True, text=True,
        timeout=650, env={**os.environ, "MUJOCO_GL": "egl"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    episodes = [r for r in read_metrics(run, "actor") if "episode/interventions" in r]
    assert episodes, "the actor logged no episode"
    lengths = np.array([r["episode/length"] for r in episodes])
    flagged = np.array([r["episode/interventions"] for r in episodes])
    expected = np.clip(lengths - START, 0, STEPS)  # an episode may end before or during the takeover
    np.testing.assert_array_equal(flagged, expected)
    rate = flagged.sum() / lengths.sum()
    print(
        f"\nintervention rate {rate:.3f} ({flagged.sum()} of {lengths.sum()} steps, {len(episodes)} episodes)"
    )
    assert rate > 0

    ckpt = load_checkpoint(run)
    online, offline = ckpt["online"], ckpt["offline"]
    n_online = int(online["intervention"].sum())
    assert n_online > 0, "no flagged transition reached the learner"
    assert int(offline["intervention"].sum()) == n_online  # EXPO-FT: each one also joined the offline data
    # the flagged chunks are windows of what the driver executed that overlap the operator's steps, with its
    # actions: each starts at a state of the actor's recorded episodes (episodes/actor-0, the driver's own flags)
    recorded = load_episodes(run / "episodes" / "actor-0", images=False)
    assert sum(int(e.intervention.sum()) for e in recorded) == flagged.sum()
    at = {e.states[t].tobytes(): (e, t) for e in recorded for t in range(len(e))}
    rows = np.flatnonzero(online["intervention"])
    for i in rows:
        e, t = at[online["obs"][i].tobytes()]
        h = int(online["steps"][i])
        np.testing.assert_array_equal(online["actions"][i, :h], e.actions[t : t + h])
        assert e.intervention[t : t + h].any()
    unflagged = np.flatnonzero(~online["intervention"].astype(bool))
    for i in unflagged[:50]:  # and the chunks that are not flagged overlap no operator step
        e, t = at[online["obs"][i].tobytes()]
        assert not e.intervention[t : t + int(online["steps"][i])].any()
    offline_flagged = offline["actions"][offline["intervention"].astype(bool)]
    np.testing.assert_array_equal(offline_flagged, online["actions"][rows])  # EXPO-FT copies, in order
    learner = [r for r in read_metrics(run, "learner") if "buffer/interventions" in r]
    assert sum(r["buffer/interventions"] for r in learner) == n_online
    row = next(
        line for line in (run / "report.md").read_text().splitlines() if "operator interventions" in line
    )
    print(f"learner: {n_online} of {len(online['intervention'])} online transitions flagged, offline buffer "
          f"{len(offline['intervention'])} rows; report: {row.strip()}")  # fmt: skip
    assert f"{100 * rate:.0f}" in row or f"{100 * rate:.1f}" in row, row
