"""Lock-step pacing under load: a learner whose every update takes longer than the actor's learner timeout is slow,
not lost. It announces itself while it works, so the actor waits for it and the session buys the same updates per
env step as with a fast learner. Driver (fake robot), learner and actor run on threads of this process."""

import logging
import threading
import time

import pytest
from driver_helpers import running_driver

from expo_robot.config import ConfigError, load_config
from expo_robot.data.seed import ensure_seed_dataset
from expo_robot.observe.metrics import read_metrics
from expo_robot.runtime.actor import Actor
from expo_robot.runtime.learner import Learner
from expo_robot.transport.sockets import free_tcp_ports

TIMEOUT_S = 1.0  # the actor's session.learner_timeout_s (the least it accepts)
SLOW_UPDATE_S = 1.3  # each update of the slowed learner: longer than the timeout


@pytest.fixture(scope="module")
def seed_data(tmp_path_factory):
    cfg = load_config(["robot=sim_panda"])
    return ensure_seed_dataset(cfg.robot, cfg.task, 4, None, 0, root=tmp_path_factory.mktemp("seed"))


def session_cfg(tmp_path, seed_data, *extra: str):
    obs, cmd, weights, transitions = free_tcp_ports(4)
    return load_config(
        [
            "robot=fake", "task.max_episode_steps=16", "profile=demo", f"session.offline.datasets=[{seed_data}]",
            "session.pretrain_steps=0", "session.eval_episodes=0", "session.env_steps=48",
            "session.max_policy_lag_steps=0", f"session.learner_timeout_s={TIMEOUT_S}", "session.record_episodes=false",
            "session.on_learner_loss=continue", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}",
            f"runtime.weights_port={weights}", f"runtime.transitions_port={transitions}", f"run_dir={tmp_path}",
            "live=off", *extra,
            # the fake robot has the Panda's spaces: its Panda seed data pass the dataset contract under that name
            "robot.name=sim_panda",
        ]
    )  # fmt: skip


def run_session(tmp_path, seed_data, update_delay_s: float) -> tuple[dict, list[int], list[float]]:
    """A 48-step lock-step session (3 episodes of 16 steps, 1 update per 4-step chunk); every learner update takes
    `update_delay_s` longer. Returns the actor's summary, the learner updates each episode started with, and the
    updates' durations."""
    cfg = session_cfg(tmp_path, seed_data)
    stop = threading.Event()
    learner = Learner(cfg, tmp_path, stop)
    update, durations = learner.agent.update, []

    def slowed_update(*args):
        t = time.monotonic()
        time.sleep(update_delay_s)
        info = update(*args)
        durations.append(time.monotonic() - t)
        return info

    learner.agent.update = slowed_update
    learner_thread = threading.Thread(target=learner.run, daemon=True)
    with running_driver(cfg):
        learner_thread.start()
        actor = Actor(cfg, tmp_path, "a0", learn=True)
        try:
            summary = actor.run()
        finally:
            actor.close()
            stop.set()
            learner_thread.join(30)
    assert not learner_thread.is_alive()
    seen = [r["learner/updates_seen"] for r in read_metrics(tmp_path) if "learner/updates_seen" in r]
    return summary, seen, durations


@pytest.mark.timeout(180)
def test_a_learner_slower_than_the_timeout_buys_the_same_updates_per_env_step(tmp_path, seed_data):
    fast, fast_seen, _ = run_session(tmp_path / "fast", seed_data, 0.0)
    slow, slow_seen, durations = run_session(tmp_path / "slow", seed_data, SLOW_UPDATE_S)
    assert min(durations) > TIMEOUT_S  # every update outlasted the actor's timeout
    for s in (fast, slow):
        assert (s["env_steps"], s["learner_updates"], s["unpaced_decisions"]) == (48, 12, 0), s
        assert s["weights_version"] == 12  # the evaluation after would use the weights of the last update
    # each episode starts after all the updates the steps before it earned
    assert slow_seen == fast_seen == [0, 4, 8]


def test_a_learner_timeout_shorter_than_its_heartbeats_is_a_config_error(tmp_path, seed_data):
    with pytest.raises(
        ConfigError, match=r"session\.learner_timeout_s=0\.05: expected a number >= 1 \(five learner"
    ):
        session_cfg(tmp_path, seed_data, "session.learner_timeout_s=0.05")


def test_the_actor_says_when_it_stops_waiting_for_a_lost_learner_and_when_it_is_back(
    tmp_path, seed_data, caplog
):
    actor = Actor(session_cfg(tmp_path, seed_data), tmp_path, "a0", learn=True)
    try:
        with caplog.at_level(logging.INFO, logger="expo_robot.runtime.actor"):
            actor.link.seen = time.monotonic() - 2.5  # no status for 2.5 s, timeout 1 s
            assert not actor._learner_answers() and not actor._learner_answers()
            actor.link.seen = time.monotonic()
            assert actor._learner_answers()
    finally:
        actor.close()
    said = [r.getMessage() for r in caplog.records if r.name == "expo_robot.runtime.actor"]
    assert len(said) == 2, said  # once when it is lost, once when it is back
    assert "learner lost: no status for 2.5 s (session.learner_timeout_s=1;" in said[0]
    assert "without waiting for it (session.on_learner_loss=continue)" in said[0]
    assert "the learner answers again" in said[1]
