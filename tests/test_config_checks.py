"""Bad overrides end in one line naming the key, the value and what is expected: no traceback, a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from expo_robot.config import ConfigError, group_options, load_config

REPO = Path(__file__).resolve().parents[1]

# (sub-command and overrides, what the one line must say)
BAD = [
    (["driver", "robot.fps=abc"], "robot.fps='abc': expected a number > 0"),
    (
        ["driver", "runtime.obs_port=notaport"],
        "runtime.obs_port='notaport': expected an integer port 1-65535",
    ),
    (["driver", "safety.max_step_change=abc"], "safety.max_step_change='abc': expected a number > 0"),
    (["driver", "runtime.obs_port=99999"], "runtime.obs_port=99999: expected an integer port 1-65535"),
    (
        ["driver", "safety.watchdog_safe_state_s=-1"],
        "safety.watchdog_safe_state_s=-1: expected a number >= 0",
    ),
    (["pretrain", "session.offline.datasets=[/nonexistent/dataset]"], "/nonexistent/dataset"),
]


@pytest.mark.timeout(120)
def test_every_bad_override_is_one_line_and_a_non_zero_exit(tmp_path):
    env = {**os.environ, "MUJOCO_GL": "egl"}
    procs = [  # all at once: each is mostly interpreter start-up
        subprocess.Popen(
            [sys.executable, "-m", "expo_robot.cli", *argv, f"run_dir={tmp_path / str(i)}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (argv, _) in enumerate(BAD)
    ]
    for proc, (argv, expected) in zip(procs, BAD):
        out, err = proc.communicate(timeout=110)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert proc.returncode not in (0, None), argv
        assert "Traceback" not in err and len(lines) == 1, (argv, err)
        assert expected in lines[0] and lines[0].startswith(f"expo-robot {argv[0]}: "), (argv, lines)


def test_all_problems_are_named_together_and_shipped_configs_pass():
    with pytest.raises(ConfigError) as e:
        load_config(["runtime.heartbeat_s=0", "robot.max_chunk_len=2.5", "seed=x"])
    assert str(e.value).count("; ") == 2 and "\n" not in str(e.value)
    assert "runtime.heartbeat_s=0: expected a number > 0" in str(e.value)
    assert "robot.max_chunk_len=2.5: expected an integer >= 1" in str(e.value)
    for robot in group_options("robot"):
        load_config([f"robot={robot}"])
    for safety in group_options("safety"):
        load_config([f"safety={safety}", "safety.max_ee_speed_mps=null", "safety.max_step_change=[0.1,0.2]"])


@pytest.mark.parametrize(
    "override, said",
    [
        ("trust_checkpoint=no", "trust_checkpoint='no': expected true or false"),  # a string would be truthy
        ("session.on_learner_loss=continu", "session.on_learner_loss='continu': expected continue or hold"),
        ("session.learner_timeout_s=0.5", "session.learner_timeout_s=0.5: expected a number >= 1"),
        (
            "runtime.scheduling.learner.threads=0",
            "runtime.scheduling.learner.threads=0: expected an integer >= 1",
        ),
        (
            "session.transitions.max_actors=5000",
            "session.transitions.max_actors=5000: expected an integer 1-4096",
        ),
    ],
)
def test_keys_of_the_session_scheduling_and_checkpoints_are_checked_too(override, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config([override])
