"""Several robots (driver + actor pairs) feeding one learner, started by `expo-robot finetune session.robots=N`:
each robot's ports, seed, actor id, episode folders and evaluation scenes; its own figures in the live status and
the report; a failed pair stopped and reported while the other robots go on."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from expo_robot.cli import main as cli_main
from expo_robot.config import ConfigError, load_config
from expo_robot.data.dataset_io import load_episodes
from expo_robot.runtime.checkpoint import load_checkpoint
from expo_robot.runtime.launcher import Launcher, MetricsTail, robot_pairs


def port_layout(n_robots: int) -> tuple[list[str], list[int]]:
    """Overrides (obs_port, cmd_port, robot_port_stride) whose n robots' ports are all free right now."""
    rng = np.random.default_rng()
    for _ in range(200):
        obs, stride = int(rng.integers(20_000, 50_000)), int(rng.integers(10, 500))
        ports = [p for i in range(n_robots) for p in (obs + i * stride, obs + 1 + i * stride)]
        if all(_free(p) for p in ports):
            return [f"runtime.obs_port={obs}", f"runtime.cmd_port={obs + 1}",
                    f"runtime.robot_port_stride={stride}"], ports  # fmt: skip
    raise AssertionError("no free port layout found")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- the robots of a session ----
def test_one_robot_keeps_the_plain_names_and_ports():
    (pair,) = robot_pairs(load_config([]))
    assert (pair.driver, pair.actor, pair.actor_id) == ("driver", "actor", "actor-0")
    assert pair.driver_overrides == () and pair.actor_overrides == ("actor_id=actor-0",)


def test_each_robot_gets_its_own_ports_seed_actor_id_and_scenes():
    cfg = load_config(["session.robots=3", "seed=7"])
    pairs = robot_pairs(cfg)
    assert [p.actor_id for p in pairs] == ["actor-0", "actor-1", "actor-2"]
    assert [p.driver for p in pairs] == ["driver-0", "driver-1", "driver-2"]
    assert pairs[2].driver_overrides == (
        "runtime.obs_port=5575",
        "runtime.cmd_port=5576",
        "seed=9",
        "robot_index=2",
    )
    assert pairs[2].actor_overrides == (*pairs[2].driver_overrides, "actor_id=actor-2")
    ports = {o for p in pairs for o in p.driver_overrides if "_port=" in o}
    assert len(ports) == 6


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            ["session.robots=0"],
            "session.robots=0: expected an integer >= 1 (the number of driver + actor pairs)",
        ),
        (["session.robots=two"], "session.robots='two': expected an integer >= 1"),
        (
            ["session.robots=2", "runtime.robot_port_stride=1"],
            "robot 1's obs port 5556 is also robot 0's cmd port",
        ),
        (
            ["session.robots=2", "runtime.robot_port_stride=2"],
            "robot 1's obs port 5557 is also runtime.weights_port",
        ),
        (["session.robots=2", "runtime.robot_port_stride=60000"], "robot 1's obs port would be 65555"),
        (["session.robots=2", "teleop=keyboard"], "teleop=keyboard reads keys from this one terminal"),
    ],
)
def test_a_bad_robot_layout_is_one_line_before_anything_starts(overrides, says, tmp_path, capsys):
    with pytest.raises(ConfigError, match=re.escape(says)):
        robot_pairs(load_config(overrides))
    run_dir = tmp_path / "run"
    assert cli_main(["finetune", *overrides, f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]
    assert not run_dir.exists(), "no run folder for a session that cannot start"


def test_live_status_shows_each_robots_figures(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"source": "actor", "step": 20, "actor": "actor-0", "episode/success": 1.0},
        {"source": "actor", "step": 20, "actor": "actor-1", "episode/success": 0.0},
        {"source": "actor", "step": 45, "actor": "actor-1", "episode/success": 1.0},
        {"source": "eval", "step": 45, "actor": "actor-1", "eval/label": "after", "eval/successes": 1,
         "eval/episodes": 2},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    status = MetricsTail(path, per_robot=True).poll()
    assert status["actor-0"] == "1 episodes, 1 successful, 20 steps"
    assert status["actor-1"] == "2 episodes, 1 successful, 45 steps"
    assert status["actor-1 eval after"] == "1/2"
    assert status["env steps"] == 65 and status["episodes"] == 3 and status["successes"] == 2


# ---- supervision, with stand-in processes ----
STAND_IN = """
import json, signal, sys, time
from pathlib import Path
name, run_dir = sys.argv[1], Path(sys.argv[2])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if name == "driver-1":
    print("driver: cannot bind tcp://127.0.0.1:5565: Address already in use", flush=True)
    sys.exit(1)
if name == "actor-0":
    time.sleep(1.0)
    (run_dir / "actor-0.json").write_text(json.dumps(
        {"actor": "actor-0", "env_steps": 40, "episodes": 2, "before": {"successes": 1, "episodes": 2},
         "after": {"successes": 2, "episodes": 2}}))
    sys.exit(0)
time.sleep(120)
"""


class StandInLauncher(Launcher):
    """The real supervision, reporting and stop order; each process a small script instead of the stack."""

    def command(self, kind, extra):
        name = next((o.split("=")[1] for o in extra if o.startswith("actor_id=")), None)
        index = next((o.split("=")[1] for o in extra if o.startswith("robot_index=")), None)
        if kind == "driver":
            name = f"driver-{index}"
        return [sys.executable, "-c", STAND_IN, name or kind, str(self.run_dir)]


def test_a_failed_robot_is_stopped_and_reported_while_the_others_go_on(tmp_path):
    cfg = load_config(["session.robots=2", "live=off"])
    launcher = StandInLauncher(cfg, ["session.robots=2"], tmp_path)
    assert launcher.run() == 1, "a session with a failed robot must not exit 0"
    procs = launcher.procs
    stopped = (0, -signal.SIGTERM)  # (a SIGTERM may come before a stand-in's handler is set)
    assert procs["driver-1"].exit_code == 1
    assert procs["actor-1"].exit_code in stopped, "the failed robot's actor was stopped, not left running"
    assert procs["actor-0"].exit_code == 0  # budget spent
    assert procs["driver-0"].exit_code in stopped and procs["learner"].exit_code in stopped
    (note,) = launcher.notes
    assert note.startswith("robot 1 (actor-1) failed: driver-1 exited with code 1: ")
    # the cause is in the note itself, beside the log's path
    assert str(tmp_path / "driver-1.out") in note and "Address already in use" in note

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped_by"] == "1 of 2 robots failed; 1 went on"
    rows = {r["actor"]: r for r in report["robots"]}
    assert rows["actor-0"]["outcome"] == "budget spent" and rows["actor-0"]["eval_after"] == "2/2"
    assert rows["actor-1"]["outcome"] == note
    assert report["success_after"]["successes"] == 2 and report["success_after"]["n"] == 2
    text = (tmp_path / "report.md").read_text()
    assert "## Robots" in text and "robot 1 (actor-1) failed" in text


# ---- end to end ----
def finetune_two_robots(processes, run, *extra: str) -> subprocess.CompletedProcess:
    ports, _ = port_layout(2)
    args = [*processes.common(), *ports, "session.robots=2", "session.env_steps=30", "task.max_episode_steps=15",
            f"run_dir={run}", *extra]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "finetune", *args],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def first_states(run, folder: str) -> list[np.ndarray]:
    return [e.states[0] for e in load_episodes(run / "episodes" / folder, images=False)]


@pytest.mark.timeout(900)
def test_two_robots_feed_one_learner_through_finetune(processes, tmp_path):
    run = tmp_path / "run"
    out = finetune_two_robots(processes, run, "session.eval_episodes=0")

    summaries = {a: json.loads((run / f"{a}.json").read_text()) for a in ("actor-0", "actor-1")}
    counters = load_checkpoint(run)["counters"]
    assert counters["env_steps"] == sum(s["env_steps"] for s in summaries.values()), "transitions were lost"
    for actor, s in summaries.items():
        assert s["env_steps"] >= 30 and counters["received"][actor] == s["episodes"] >= 2
        recorded = load_episodes(run / "episodes" / actor, images=False)
        assert len(recorded) == s["episodes"] and sum(len(e) for e in recorded) == s["env_steps"]
    # own seeds: the robots' first scenes differ
    assert not np.array_equal(first_states(run, "actor-0")[0], first_states(run, "actor-1")[0])

    report = json.loads((run / "report.json").read_text())
    rows = report["robots"]
    assert [r["outcome"] for r in rows] == ["budget spent", "budget spent"]
    assert [r["episodes"] for r in rows] == [
        summaries["actor-0"]["episodes"],
        summaries["actor-1"]["episodes"],
    ]
    assert [r["env_steps"] for r in rows] == [
        summaries["actor-0"]["env_steps"],
        summaries["actor-1"]["env_steps"],
    ]
    for name in ("driver-0", "driver-1", "actor-0", "actor-1"):
        assert (run / f"{name}.log").exists() and (run / f"config.{name}.yaml").exists()
    assert re.search(r"finetune \(final\):.*actor-1 \d+ episodes, \d+ successful", out.stderr), (
        "no per-robot status"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_each_robot_evaluates_its_own_scenes_before_and_after(processes, tmp_path):
    run = tmp_path / "run"
    finetune_two_robots(processes, run, "session.eval_episodes=1")
    (before0, after0), (before1, after1) = (
        first_states(run, "actor-0-eval"),
        first_states(run, "actor-1-eval"),
    )
    np.testing.assert_array_equal(before0, after0)
    np.testing.assert_array_equal(before1, after1)
    assert not np.array_equal(before0, before1)
    report = json.loads((run / "report.json").read_text())
    assert report["success_before"]["n"] == 2 and report["success_after"]["n"] == 2  # pooled over the robots
    assert all("/1" in r["eval_before"] and "/1" in r["eval_after"] for r in report["robots"])
