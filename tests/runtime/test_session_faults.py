"""Fault tests of a fine-tune session whose processes run separately (as across machines): a learner killed and
restarted from its checkpoint loses no transition; a killed actor leaves the robot held and the learner waiting.
Several robots feeding one learner: test_multi_robot.py."""

import json
import signal
import time

import pytest

from expo_robot.observe.metrics import read_metrics
from expo_robot.runtime.checkpoint import load_checkpoint
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.protocol import client_inbox
from expo_robot.transport.sockets import Subscriber


def actor_episodes(run_dir, actor_id=None) -> list[dict]:
    if not (run_dir / "metrics.jsonl").exists():
        return []
    return [r for r in read_metrics(run_dir) if r["source"] == "actor" and "episode/success" in r]


@pytest.mark.timeout(600)
def test_learner_killed_and_restarted_loses_no_transition(processes, tmp_path):
    run = tmp_path / "run"
    robot = processes.robot_ports()
    budget = ["session.env_steps=700", "session.on_learner_loss=continue"]
    processes.start("driver", run, *robot)
    learner = processes.start("learner", run, *budget)
    actor = processes.start("actor", run, *robot, *budget, "actor_id=a0")
    processes.wait_for(lambda: len(actor_episodes(run)) >= 2, 240, "two episodes reaching the learner")
    processes.wait_for(
        lambda: (run / "checkpoints" / "latest.safetensors").exists(), 60, "a learner checkpoint"
    )

    learner.send_signal(signal.SIGKILL)
    learner.wait(10)
    n_killed = len(actor_episodes(run))
    # The actor keeps running episodes with its last weights while no learner is there.
    processes.wait_for(lambda: len(actor_episodes(run)) >= n_killed + 1, 120, "an episode without a learner")
    assert actor.poll() is None

    processes.start("learner", run, *budget, f"session.resume={run}")
    assert actor.wait(300) == 0
    summary = json.loads((run / "a0.json").read_text())
    time.sleep(1.0)
    processes.procs[-1].send_signal(signal.SIGTERM)  # the new learner: final checkpoint
    processes.procs[-1].wait(60)
    counters = load_checkpoint(run)["counters"]
    assert counters["env_steps"] == summary["env_steps"], "transitions were lost across the learner restart"
    assert counters["received"]["a0"] == summary["episodes"]


@pytest.mark.timeout(600)
def test_killed_actor_leaves_robot_held_and_learner_waiting(processes, tmp_path):
    run = tmp_path / "run"
    robot = processes.robot_ports()
    driver = processes.start("driver", run, *robot)
    learner = processes.start("learner", run, "session.env_steps=100000")
    actor = processes.start("actor", run, *robot, "session.env_steps=100000", "actor_id=a0")
    processes.wait_for(lambda: len(actor_episodes(run)) >= 1, 240, "an episode")
    actor.send_signal(signal.SIGKILL)
    actor.wait(10)

    # A bare subscriber, not a RobotClient: a client's heartbeats would count as a live policy.
    obs_port = int(robot[0].split("=")[1])
    keys = curve_keys({"host": "127.0.0.1"})
    with Subscriber(f"tcp://127.0.0.1:{obs_port}", schema=client_inbox(), curve=keys) as sub:
        held = processes.wait_for(
            lambda: (
                (m := sub.recv(1.0)) is not None
                and m.type == "obs"
                and m.meta["safety"]["state"] != "ok"
                and m
            ),
            20,
            "the driver's watchdog to hold the robot",
            interval_s=0.0,
        )
        # the watchdog holds the robot; or the episode's own limit was reached by the last steps of the killed
        # actor's chunk (a race), which holds it as well: either way no further step is executed
        assert held.meta["safety"]["state"] in ("hold", "safe_state", "episode_end"), held.meta["safety"]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            m = sub.recv(0.5)
            assert m is None or m.type != "obs" or not m.meta["fresh"], "the robot moved with no policy"
    time.sleep(1.0)
    assert driver.poll() is None and learner.poll() is None, "driver and learner must outlive the actor"
