"""The actor's side of the learner link: weights that do not fit its own networks exactly (names, dtypes, shapes,
values) and statuses out of range are counted by reason and dropped; the actor keeps acting on what it had."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from learner_helpers import STATE_DIM, learner_cfg

from expo_robot.agent import make_agent
from expo_robot.runtime.actor import LearnerLink
from expo_robot.runtime.learner import agent_spec
from expo_robot.runtime.messages import pack_state
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.sockets import Publisher, address

pytestmark = pytest.mark.timeout(120)
STATUS = {"learner": "L1", "updates": 3, "env_steps": 40, "trained_steps": 36, "online": 40, "offline": 100,
          "received": {"a0": 0}, "acked": {"a0": 0}, "rejected": {}}  # fmt: skip


@pytest.fixture
def link_and_learner(tmp_path):
    """A LearnerLink for actor a0 whose networks are a demo EXPO agent's, and a publisher in the learner's place."""
    cfg = learner_cfg(tmp_path)
    agent = make_agent(cfg.agent, agent_spec(cfg, STATE_DIM), device="cpu", seed=0)
    pub = Publisher(address(cfg.runtime, "weights"), curve=curve_keys(cfg.runtime))  # the learner's keys
    link = LearnerLink(cfg, "a0")
    link.own_weights = agent.acting_state()
    deadline = time.monotonic() + 20
    while not link.status:  # PUB/SUB: the first messages are lost until the subscription is through
        assert time.monotonic() < deadline, "the link never heard the publisher"
        pub.send("status", None, STATUS)
        time.sleep(0.05)
        link.poll()
    yield link, pub, agent.acting_state()
    link.close()
    pub.close()


def deliver(link: LearnerLink, pub: Publisher, msg_type: str, arrays, meta) -> None:
    """Send one message and poll until the link has read it (the marker status after it has arrived)."""
    before = link.sub.counters["received"]
    pub.send(msg_type, arrays, meta)
    deadline = time.monotonic() + 10
    while link.sub.counters["received"] < before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        link.poll()


def weights(state: dict, **changes) -> tuple[dict, dict]:
    arrays, meta = pack_state({**state, **changes})
    return arrays, {**meta, "version": 7, "learner": "L1"}


def _without_first(state: dict) -> dict:
    return dict(list(state.items())[1:])


def _first(state: dict) -> str:
    return next(iter(state))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda s: weights(_without_first(s)), "weights_names"),
        (lambda s: weights(s, extra=np.zeros(3, np.float32)), "weights_names"),
        (lambda s: weights(s, **{_first(s): np.zeros((2, 2), np.float32)}), "weights_shape"),
        (lambda s: weights(s, **{k: v.astype(np.float64) for k, v in s.items() if v.dtype == np.float32}), "weights_shape"),
        (lambda s: weights(s, **{"norm.obs_std": np.zeros(STATE_DIM, np.float32)}), "weights_range"),
        (lambda s: weights(s, **{k: np.full_like(v, 1e30) for k, v in s.items() if v.dtype == np.float32}), "weights_range"),
        (lambda s: (weights(s)[0], {**weights(s)[1], "layout": [[1, "float32", [2], 0]]}), "weights_layout"),
        (lambda s: (weights(s)[0], {**weights(s)[1], "layout": [["x", "float32", [-2], 0]]}), "weights_layout"),
        (lambda s: (weights(s)[0], {**weights(s)[1], "layout": [["x", "float32", [2], 2**40]]}), "weights_layout"),
        (lambda s: (weights(s)[0], {**weights(s)[1], "layout": [["x", "float32"]]}), "weights_layout"),
    ],
    ids=["missing", "extra", "shape", "dtype", "zero std", "1e30", "name", "negative dim", "offset", "entry"],
)  # fmt: skip
def test_weights_that_do_not_fit_the_actors_networks_are_dropped(link_and_learner, make, reason):
    link, pub, own = link_and_learner
    deliver(link, pub, "weights", *make(own))
    assert link.weights is None and link.dropped == {reason: 1}
    deliver(link, pub, "weights", *weights(own))  # the learner's real weights still load
    assert link.weights is not None and link.weights_version == 7 and link.dropped == {reason: 1}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"trained_steps": 41}, "counter"),
        ({"updates": -1}, "counter"),
        ({"env_steps": 2**62}, "counter"),
        ({"online": "many"}, "counter"),
        ({"received": {"a0": -1}}, "seq_table"),
        ({"received": {"a0": "x"}}, "seq_table"),
        ({"acked": {"a0": 5}, "received": {"a0": 4}}, "seq_table"),
        ({"acked": {"a0": 1}}, "seq_table"),
        ({"rejected": {"a0": 3}}, "rejected"),
        ({"received": {"a0": 9}, "acked": {"a0": 9}}, "seq_ahead"),  # more of our batches than we sent
    ],
)
def test_a_status_out_of_range_is_dropped(link_and_learner, change, reason):
    link, pub, _ = link_and_learner
    link.submit({"obs": np.zeros((1, 2), np.float32)}, 1)  # one batch sent (seq 1), kept until acked
    deliver(link, pub, "status", None, {**STATUS, **change})
    assert link.dropped == {reason: 1} and link.status == STATUS and 1 in link.kept
    deliver(link, pub, "status", None, {**STATUS, "received": {"a0": 1}, "acked": {"a0": 1}})
    assert link.dropped == {reason: 1} and not link.kept  # a real ack still frees it


def test_a_refused_batch_is_reported_once(link_and_learner):
    link, pub, _ = link_and_learner
    link.submit({"obs": np.zeros((1, 2), np.float32)}, 1)
    refused = {**STATUS, "received": {"a0": 1}, "rejected": {"a0": {"seq": 1, "reason": "reward_range"}}}
    for _ in range(3):
        deliver(link, pub, "status", None, refused)
    assert link.refused == {"reward_range": 1} and link.unreceived() == 0 and not link.dropped
