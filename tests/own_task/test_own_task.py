"""'Your own task' (README), end to end through the CLI, as a new user would: a gymnasium env the project has no config
for (point_reach.py), demonstrations written with lerobot's own API, a user config folder (config/), then dataset
check, pretrain, the printed fine-tune command (a short lock-step session) and the printed eval compare command."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from expo_robot.cli import main
from expo_robot.transport.sockets import free_tcp_ports

HERE = Path(__file__).resolve().parent
CONFIG_DIR = HERE / "config"
sys.path.insert(0, str(HERE))
import point_reach  # noqa: E402  (registers PointReach-v0)

ENV_ID = "point_reach:PointReach-v0"
LAYOUT = [
    "agent_pos.0",
    "agent_pos.1",
    "environment_state.0",
    "environment_state.1",
]  # `dataset schema` prints it
TASK = "Drive the point to the goal."


def write_demos(root: Path, episodes: int, state_names: list[str], sigma: float = 3.0) -> float:
    """Noisy go-to-goal demonstrations written with lerobot's LeRobotDataset API (no expo_robot code); returns
    their success rate."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    def scalar(dtype: str) -> dict:
        return {"dtype": dtype, "shape": (1,), "names": None}

    features = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": state_names},
        "action": {"dtype": "float32", "shape": (2,), "names": ["vx", "vy"]},
        "next.reward": scalar("float32"),
        "next.done": scalar("bool"),
        "next.truncated": scalar("bool"),
        "success": scalar("bool"),
    }
    ds = LeRobotDataset.create(
        "local/reach_demos",
        fps=10,
        features=features,
        root=root,
        robot_type="point_reach",
        use_videos=False,
        video_backend="pyav",
    )
    env, rng, successes = gym.make(ENV_ID, max_episode_steps=12), np.random.default_rng(0), 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        while True:
            state = np.concatenate([obs["agent_pos"], obs["environment_state"]]).astype(np.float32)
            to_goal = (obs["environment_state"] - obs["agent_pos"]) / point_reach.STEP
            action = np.clip(to_goal + rng.normal(0, sigma, 2), -1, 1).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            ds.add_frame({
                "observation.state": state, "action": action, "next.reward": np.array([reward], np.float32),
                "next.done": np.array([terminated or truncated]), "next.truncated": np.array([truncated]),
                "success": np.array([info["is_success"]]), "task": TASK,
            })  # fmt: skip
            if terminated or truncated:
                successes += int(info["is_success"])
                break
        ds.save_episode()
    ds.finalize()
    env.close()
    return successes / episodes


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MUJOCO_GL": "egl",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("EXPO_ROBOT_CONFIG_PATH", None)  # only --config-dir names the user's folder here
    out = subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return out


def printed(stdout: str, label: str) -> list[str]:
    """The command printed after `label:` (a hint), as argv without the leading `expo-robot`."""
    match = re.search(rf"^{re.escape(label)}: (expo-robot .*)$", stdout, re.MULTILINE)
    assert match, f"no '{label}' hint in:\n{stdout[-2000:]}"
    return shlex.split(match.group(1))[1:]


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demos") / "reach_demos"
    rate = write_demos(root, episodes=12, state_names=LAYOUT)
    assert 0.2 < rate < 1.0, rate  # a useful but imperfect demonstration set
    return root


@pytest.fixture
def in_process(monkeypatch, capsys):
    """The CLI in this process (no interpreter start-up), with the user's config folder unless told otherwise:
    returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("EXPO_ROBOT_CONFIG_PATH", "")  # --config-dir lands here; restored after the test

    def run(*args: str, config_dir: bool = True) -> tuple[int, str, str]:
        code = main([*(["--config-dir", str(CONFIG_DIR)] if config_dir else []), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.mark.timeout(1200)  # ~1 min on an idle 2-core machine; much more when it is shared
def test_own_gymnasium_task_from_lerobot_demos_to_eval_compare(demos, tmp_path, in_process):
    # the robot is unknown without the user's folder, and the error says where it looked and how to add one
    code, _, err = in_process("dataset", "schema", "robot=point_reach", config_dir=False)
    assert code == 2 and "unknown robot 'point_reach'" in err and "--config-dir" in err
    code, out, err = in_process("dataset", "check", str(demos), "robot=point_reach")
    assert code == 0 and f"{demos}: OK" in out, out + err

    weights, transitions, obs, cmd = free_tcp_ports(4)
    tiny = [
        "robot=point_reach",  # the task follows (config/task/reach.yaml names this env)
        f"session.offline.datasets=[{demos}]",
        f"run_root={tmp_path / 'runs'}",
        "profile=demo",
        "live=off",
        "session.pretrain_steps=100",
        "session.env_steps=24",
        "session.eval_episodes=1",
        "session.weights_every=5",
        "session.checkpoint_every=20",
        "eval.episodes=2",
        "session.record_episodes=false",  # two recording processes fewer
        f"runtime.weights_port={weights}",
        f"runtime.transitions_port={transitions}",
        f"runtime.obs_port={obs}",
        f"runtime.cmd_port={cmd}",
    ]
    code, out, err = in_process("pretrain", *tiny)
    assert code == 0, out[-2000:] + err[-3000:]
    finetune = printed(out, "fine-tune from it")
    assert finetune[:3] == ["--config-dir", str(CONFIG_DIR), "finetune"] and "robot=point_reach" in finetune

    done = cli(*finetune)  # as printed: driver, learner and actor, lock-step
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = Path(re.search(r"^run folder: (.*)$", done.stdout, re.MULTILINE).group(1))
    assert run.name.endswith("_finetune_point_reach_reach")  # named by robot and task
    report = json.loads((run / "report.json").read_text())
    assert report["robot"] == "point_reach" and report["task"] == "reach"

    done = cli(*printed(done.stdout, "fine-tuned vs its BC start"))  # as printed
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    eval_dir = Path(re.search(r"^run folder: (.*)$", done.stdout, re.MULTILINE).group(1))
    doc = json.loads((eval_dir / "eval_report.json").read_text())
    assert doc["result"]["success"]["n"] == doc["compare"]["success"]["n"] == 2
    assert doc["compare"]["policy"] == "base" and "comparison" in doc


def test_a_dataset_with_another_state_layout_is_refused_with_what_differs(tmp_path, in_process):
    swapped = [*LAYOUT[2:], *LAYOUT[:2]]  # same width, goal first: would train silently on the wrong inputs
    root = tmp_path / "swapped"
    write_demos(root, episodes=1, state_names=swapped)
    code, _, err = in_process("dataset", "check", str(root), "robot=point_reach")
    assert code == 1 and "layout differs at 4 of 4 places, first at index 0" in err
    code, _, err = in_process(
        "finetune", "robot=point_reach", f"session.offline.datasets=[{root}]", f"run_root={tmp_path / 'runs'}"
    )
    assert (
        code == 2 and "does not fit robot 'point_reach'" in err and "layout differs at 4 of 4 places" in err
    )
    assert not (tmp_path / "runs").exists(), "refused before any run folder or process"


def test_a_new_env_without_demonstrations_says_what_to_pass(tmp_path, in_process):
    code, _, err = in_process("finetune", "robot=point_reach", f"run_root={tmp_path}")
    assert (
        code == 1
        and "session.offline.datasets=[path,...]" in err
        and "dataset schema robot=point_reach" in err
    )


def test_the_schema_prints_the_state_layout(in_process):
    code, out, _ = in_process("dataset", "schema", "robot=point_reach")
    assert code == 0 and "robot_type 'point_reach' or 'point_reach:PointReach-v0'" in out
    assert [line.split()[-1] for line in out.splitlines()[-4:]] == LAYOUT
