"""Operator rewards: the success / failure keys end the actor's episode with that label (as on hardware, where the
task has no success detector), the success is rewarded on the step it was pressed, and the episode is recorded."""

import threading
import time

import numpy as np
import pytest
import torch
from driver_helpers import make_cfg

from drivers.robot import make_robot
from drivers.server import Driver
from drivers.teleop import KeyboardTeleop, QueueKeys
from expo_robot.agent import AgentSpec, make_agent
from expo_robot.data.dataset_io import read_dataset
from expo_robot.runtime.actor import Actor, OperatorLabels
from expo_robot.runtime.evaluate import stop_reason

pytestmark = pytest.mark.timeout(120)


def test_labels_count_only_keys_pressed_since_the_episode_started():
    labels = OperatorLabels()
    labels.start({"operator.success": 2, "operator.failure": 5})
    assert labels.pressed({"operator.success": 2, "operator.failure": 5}) == ""
    assert labels.pressed({"operator.success": 2, "operator.failure": 6}) == "failure"
    assert labels.pressed({"operator.success": 3, "operator.failure": 6}) == "success"
    labels.start({})
    assert labels.pressed({"operator.failure": 1}) == "failure"


def tap_after(keys: QueueKeys, driver: Driver, key: str, steps: int) -> threading.Thread:
    """Press `key` once the driver's episode has run `steps` steps (a person watching the robot)."""

    def press() -> None:
        start = driver.episode
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (driver.episode == start + 1 and driver.step >= steps):
            time.sleep(0.01)
        keys.tap(key)

    t = threading.Thread(target=press, daemon=True)
    t.start()
    return t


def test_operator_keys_end_and_label_the_actors_episodes(tmp_path):
    torch.set_num_threads(1)
    cfg = make_cfg(
        tmp_path, "teleop=keyboard", "teleop.engaged=false", "profile=demo", "task.max_episode_steps=80"
    )
    robot = make_robot(cfg.robot, cfg.task)
    keys = QueueKeys()
    driver = Driver(cfg, robot=robot, teleop=KeyboardTeleop(cfg.teleop, robot, source=keys))
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    thread.start()
    assert driver.ready.wait(30)
    spec = AgentSpec(
        robot.state_dim, robot.action_dim, robot.action_low, robot.action_high, int(cfg.agent.chunk)
    )
    agent = make_agent(cfg.agent, spec, device="cpu", seed=0)
    agent.norm.fit(np.random.default_rng(0).normal(size=(64, spec.state_dim)))
    actor = Actor(cfg, tmp_path / "run", "eval-0", learn=False)
    try:
        actor.connect(agent_state=agent.state_dict())
        results = {}
        for key, label in (("y", "success"), ("n", "failure")):
            presser = tap_after(keys, driver, key, steps=10)
            results[label] = actor.run_episode("eval", learn=False, seed=label == "failure")
            presser.join()
    finally:
        actor.close()
        stop.set()
        thread.join(10)

    ok, failed = results["success"], results["failure"]
    assert (
        ok.label == "success" and ok.success and 10 <= ok.length < 80
    )  # ended by the key, not the time limit
    assert failed.label == "failure" and not failed.success and 10 <= failed.length < 80
    assert stop_reason(ok) == "success" and stop_reason(failed) == "operator:failure"
    data = read_dataset(tmp_path / "run" / "episodes" / "eval-0")  # evaluation episodes are recorded too
    first, second = data.episodes
    assert (len(first.actions), len(second.actions)) == (ok.length, failed.length)
    assert first.success and first.terminated and first.rewards[-1] == 1.0 and first.rewards[:-1].sum() == 0
    assert not second.success and second.terminated and second.rewards.sum() == 0
