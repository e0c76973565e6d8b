"""The learner's transitions socket under hostile values: every bad batch is counted by its reason and dropped, the
learner stays alive and keeps learning, a refused batch never wedges the actor's resends, and an unexpected error ends
the loop with a final checkpoint, one logged line and exit code 1."""

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from learner_helpers import STATE_DIM, RunningLearner, episode_batch, learner_cfg, make_learner

from expo_robot.runtime.actor import LearnerLink
from expo_robot.runtime.checkpoint import LATEST, load_checkpoint
from expo_robot.runtime.learner import transition_limits
from expo_robot.runtime.messages import MessageRejected, check_transitions

pytestmark = pytest.mark.timeout(240)
CFG = learner_cfg(Path("/nonexistent"))
H, A, N = int(CFG.agent.chunk), len(CFG.robot.action_low), 12  # a good batch: one 12-step episode


def _with(batch: dict, **fields) -> dict:
    return {**batch, **fields}


# (what is wrong, the batch from a good one, env_steps, the reason it is counted under)
HOSTILE = {
    "state width": (
        lambda b: _with(b, obs=b["obs"][:, :-1], next_obs=b["next_obs"][:, :-1]),
        N,
        "state_width",
    ),
    "lengths disagree": (lambda b: _with(b, reward=b["reward"][:-1]), N, "lengths"),
    "finite but absurd reward": (lambda b: _with(b, reward=np.full(N, 3e38, np.float32)), N, "reward_range"),
    "reward over the bound": (lambda b: _with(b, reward=np.full(N, 1e4, np.float32)), N, "reward_range"),
    "env_steps 1e15": (lambda b: b, 10**15, "env_steps"),
    "env_steps negative": (lambda b: b, -1, "env_steps"),
    "env_steps fewer than rows": (lambda b: b, N - 1, "env_steps"),
    "empty batch": (lambda b: {k: v[:0] for k, v in b.items()}, 0, "empty"),
    "action width": (lambda b: _with(b, actions=np.zeros((N, H, A + 1), np.float32)), N, "action_shape"),
    "chunk length": (lambda b: _with(b, actions=np.zeros((N, H + 1, A), np.float32)), N, "action_shape"),
    "action out of bounds": (
        lambda b: _with(b, actions=np.full((N, H, A), 1e6, np.float32)),
        N,
        "action_range",
    ),
    "state 1e30": (lambda b: _with(b, obs=np.full((N, STATE_DIM), 1e30, np.float32)), N, "state_range"),
    "steps 0": (lambda b: _with(b, steps=np.zeros(N, np.int64)), N, "steps"),
    "steps beyond the chunk": (lambda b: _with(b, steps=np.full(N, 99, np.int64)), N, "steps"),
    "discount above 1": (lambda b: _with(b, discount=np.full(N, 1.5, np.float32)), N, "discount"),
    "flag byte 7": (lambda b: _with(b, intervention=np.full(N, 7, np.uint8).view(bool)), N, "intervention"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_hostile_batch_has_its_reason(case):
    make, env_steps, reason = HOSTILE[case]
    good = episode_batch(CFG, N)
    limits = transition_limits(CFG, _spec())
    check_transitions(good, {"env_steps": N}, limits)  # the good one passes
    with pytest.raises(MessageRejected) as e:
        check_transitions(make(good), {"env_steps": env_steps}, limits)
    assert e.value.reason == reason


def _spec():
    from expo_robot.runtime.learner import agent_spec

    return agent_spec(CFG, STATE_DIM)


def test_hostile_batches_over_the_socket_are_counted_and_dropped_and_the_learner_keeps_learning(
    tmp_path, monkeypatch
):
    learner = make_learner(tmp_path, monkeypatch, "session.transitions.max_actors=2")
    good = episode_batch(learner.cfg, N)
    with RunningLearner(learner) as run:
        seq = 0
        for make, env_steps, _ in HOSTILE.values():
            seq += 1
            run.send(make(good), "a0", seq, env_steps)
        run.send(good, "a" * 65, 1, N)  # an actor id nobody would use
        run.send(good, "a1", 1, N)
        run.send(good, "a2", 1, N)  # a third actor: more than session.transitions.max_actors
        run.send(good, "a0", seq + 1, N)  # after all that, a good batch is stored and learned from
        run.send(good, "a0", seq + 1, N)  # and its resend skipped
        run.wait_handled(len(HOSTILE) + 5)
        assert run.thread.is_alive()
        want = {}
        for _, _, reason in HOSTILE.values():
            want[reason] = want.get(reason, 0) + 1
        assert learner.rejected == {**want, "actor_id": 1, "too_many_actors": 1}
        assert learner.episodes == 2 and learner.received == {"a0": seq + 1, "a1": 1} and learner.skipped == 1
        assert learner.env_steps == 2 * N and len(learner.online) == 2 * N
        assert learner.last_rejected["a0"] == {"seq": seq, "reason": "intervention"}
        updates = learner.updates
        deadline = time.monotonic() + 30
        while learner.updates == updates and time.monotonic() < deadline:  # it learns from the good batches
            time.sleep(0.01)
        assert learner.updates > updates or updates > 0
    assert run.code == 0
    assert np.abs(learner.online.data["reward"][: len(learner.online)]).max() <= 1.0


def test_a_refused_batch_does_not_wedge_the_actor_that_keeps_it_until_a_checkpoint(tmp_path, monkeypatch):
    """The actor keeps each batch until the learner has it in a checkpoint and resends what was not received: a
    batch the learner refuses counts as received (and then acked), so the actor goes on and forgets it; the actor
    is told which batch was refused and why."""
    learner = make_learner(tmp_path, monkeypatch, "session.updates_per_chunk=4", "session.checkpoint_every=1")
    link = LearnerLink(learner.cfg, "a0")
    good = episode_batch(learner.cfg, N)
    try:
        with RunningLearner(learner):
            deadline = time.monotonic() + 30
            while not link.status and time.monotonic() < deadline:
                link.poll()
                time.sleep(0.02)
            link.submit(_with(good, reward=np.full(N, 3e38, np.float32)), N)
            link.submit(good, N)
            while (link.kept or link.unreceived()) and time.monotonic() < deadline + 30:
                link.poll()
                time.sleep(0.02)
            assert link.unreceived() == 0 and not link.kept, (link.status, sorted(link.kept))
            assert link.refused == {"reward_range": 1}
            assert learner.rejected == {"reward_range": 1} and learner.episodes == 1
    finally:
        link.close()


def test_an_unexpected_error_ends_the_loop_with_a_final_checkpoint_one_line_and_exit_code_1(
    tmp_path, monkeypatch, caplog
):
    learner = make_learner(tmp_path, monkeypatch)

    def broken_update(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(learner.agent, "update", broken_update)
    with caplog.at_level(logging.ERROR), RunningLearner(learner) as run:
        run.send(episode_batch(learner.cfg, N), "a0", 1, N)
        run.thread.join(60)
        assert not run.thread.is_alive() and run.code == 1
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    line = record.getMessage()
    assert "\n" not in line and "RuntimeError: boom" in line and "final checkpoint" in line, line
    ckpt = load_checkpoint(learner.run_dir / "checkpoints" / LATEST)
    assert ckpt["counters"]["received"] == {"a0": 1} and len(ckpt["online"]["obs"]) == N  # nothing lost
    assert "Traceback" in (learner.run_dir / "learner_error.txt").read_text()


# ---- fuzz: well-formed messages (they pass the wire's checks) with hostile values ----
_F32 = [float(np.float32(x)) for x in (3e38, -3e38, 1e-45, 0.0, 0.99**4, 0.99, 1.0, 2.0)]  # exact in float32
_VALUES = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(_F32[:4])
_INTS = st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 3 * N)


def _set_value(draw, batch: dict) -> None:
    """One element of one field to a hostile value of its dtype."""
    key = draw(st.sampled_from(["obs", "next_obs", "actions", "reward", "discount", "steps", "intervention"]))
    arr = batch[key].copy()
    if not arr.size:
        return
    flat = arr.reshape(-1) if key != "intervention" else arr.view(np.uint8)
    i = draw(st.integers(0, flat.size - 1))
    if key == "steps":
        flat[i] = draw(_INTS)
    elif key == "intervention":
        flat[i] = draw(st.integers(0, 255))
    else:
        flat[i] = draw(_VALUES | st.sampled_from(_F32[3:]))
    batch[key] = arr


def _resize(draw, batch: dict) -> None:
    """Some fields with other lengths, widths or chunk shapes."""
    key = draw(st.sampled_from(sorted(batch)))
    arr = batch[key]
    rows = draw(st.sampled_from([0, max(0, len(arr) - 1), len(arr) + 1]))
    shape = list(arr.shape)
    shape[0] = rows
    if arr.ndim > 1 and draw(st.booleans()):
        axis = draw(st.integers(1, arr.ndim - 1))
        shape[axis] = max(0, shape[axis] + draw(st.sampled_from([-1, 1])))
    batch[key] = np.zeros(shape, arr.dtype)


@st.composite
def hostile_transitions(draw):
    """A good episode batch (any length, terminal or not), then up to three hostile changes to its fields or meta."""
    n = draw(st.integers(1, 20))
    batch = episode_batch(CFG, n, seed=draw(st.integers(0, 2**16)), terminated=draw(st.booleans()))
    meta = {"actor": draw(st.sampled_from(["a0", "a1"])), "seq": "next", "env_steps": n}
    for change in draw(st.lists(st.sampled_from(["value", "value", "resize", "meta"]), max_size=3)):
        if change == "value":
            _set_value(draw, batch)
        elif change == "resize":
            _resize(draw, batch)
        else:
            key = draw(st.sampled_from(["actor", "seq", "env_steps"]))
            text = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
            meta[key] = draw(text if key == "actor" else _INTS)
    return batch, meta


def test_fuzz_the_transitions_socket_with_hostile_values(tmp_path, monkeypatch):
    fuzz_transitions_socket(tmp_path, monkeypatch, examples=200)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_the_transitions_socket_long(tmp_path, monkeypatch):
    fuzz_transitions_socket(tmp_path, monkeypatch, examples=3000)


def fuzz_transitions_socket(tmp_path, monkeypatch, examples: int) -> None:
    learner = make_learner(tmp_path, monkeypatch, "session.updates_per_chunk=0")
    limits = learner.limits
    with RunningLearner(learner) as run:
        sent = [0]

        @settings(
            max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(hostile_transitions())
        def fuzz(message):
            batch, meta = message
            if meta["seq"] == "next":
                meta["seq"] = learner.received.get(meta["actor"], 0) + 1
            run.pusher.send("transitions", batch, meta)
            sent[0] += 1
            run.wait_handled(sent[0])
            size = len(learner.online)  # nothing out of range ever reaches the buffer
            data = learner.online.data
            assert np.abs(data["obs"][:size]).max(initial=0) <= limits.max_abs_state
            assert (np.abs(data["reward"][:size]) <= limits.max_abs_reward * data["steps"][:size]).all()
            assert ((data["steps"][:size] >= 1) & (data["steps"][:size] <= H)).all()
            assert ((data["discount"][:size] >= 0) & (data["discount"][:size] <= 1)).all()

        fuzz()
        assert run.thread.is_alive(), "the learner crashed"
        print(f"fuzz: {sent[0]} messages, {learner.episodes} stored, rejected {dict(learner.rejected)}, "
              f"skipped {learner.skipped}, invalid on the wire {learner.inbox.counters['invalid']}")  # fmt: skip
    assert run.code == 0
