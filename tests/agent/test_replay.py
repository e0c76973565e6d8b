"""Replay buffer: ring semantics, symmetric half/half batches, numpy state round trip."""

import numpy as np
import pytest
from agent_fixtures import random_buffer

from expo_robot.data.replay import ReplayBuffer, ReplayError, sample_symmetric


def test_ring_buffer_keeps_the_newest():
    buf = ReplayBuffer(4, 1, 1, 1)
    for i in range(6):
        buf.add([i], [[i]], float(i), [i + 1], 0.9, 1)
    assert len(buf) == 4
    assert sorted(buf.data["reward"].tolist()) == [2, 3, 4, 5]


def test_symmetric_batches_are_exactly_half_offline():
    off, on = random_buffer(50, seed=1), random_buffer(30, seed=2)
    rng = np.random.default_rng(0)
    for n in (2, 64, 256):
        b = sample_symmetric(off, on, n, rng)
        assert (b["source"] == 0).sum() == n // 2 and (b["source"] == 1).sum() == n // 2
        # rows really come from the buffer they are marked with
        off_rows = b["obs"][b["source"] == 0]
        assert all((off.data["obs"][: len(off)] == r).all(1).any() for r in off_rows)
    with pytest.raises(ReplayError, match="even"):
        sample_symmetric(off, on, 5, rng)


def test_symmetric_falls_back_to_the_non_empty_buffer():
    off = random_buffer(10)
    empty = ReplayBuffer(10, off.data["obs"].shape[1], 3, 2)
    b = sample_symmetric(off, empty, 8, np.random.default_rng(0))
    assert (b["source"] == 0).all() and len(b["obs"]) == 8


def test_state_dict_round_trip():
    buf = random_buffer(20)
    buf.add_batch({k: v[:5] for k, v in random_buffer(5, seed=9).data.items()})
    copy = ReplayBuffer(20, 5, 3, 2)
    copy.load_state_dict(buf.state_dict())
    assert len(copy) == len(buf) and copy.ptr == buf.ptr
    for k in buf.data:
        np.testing.assert_array_equal(copy.data[k][: len(buf)], buf.data[k][: len(buf)])
    with pytest.raises(ReplayError, match="capacity"):
        ReplayBuffer(21, 5, 3, 2).load_state_dict(buf.state_dict())


def test_bad_batch_names_the_field():
    buf = ReplayBuffer(10, 5, 3, 2)
    batch = {k: v[:2] for k, v in random_buffer(2).data.items()}
    batch["actions"] = batch["actions"][:, :2]
    with pytest.raises(ReplayError, match="actions"):
        buf.add_batch(batch)
