"""Replay buffer: ring semantics, symmetric half/half batches, numpy state round trip, frames stored once."""

import numpy as np
import pytest
from agent_fixtures import random_buffer

from expo_robot.data.chunking import chunk_transitions
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


def _episode_rows(t_len: int, seed: int, chunk: int = 2) -> dict[str, np.ndarray]:
    """Chunk transitions of one episode whose every frame differs (frame t of episode `seed`)."""
    frames = np.random.default_rng(seed).integers(0, 255, (t_len + 1, 4, 4, 3), dtype=np.uint8)
    return chunk_transitions(
        np.zeros((t_len + 1, 3)),
        np.zeros((t_len, 2)),
        np.zeros(t_len),
        True,
        chunk,
        0.9,
        1,
        None,
        {"cam": frames},
    )


def test_each_frame_is_stored_once_however_many_rows_show_it():
    rows = _episode_rows(10, seed=0)  # 10 chunks starting at every step: obs frames 0-9, next frames 2-10
    buf = ReplayBuffer(16, 3, 2, 2, images={"cam": (4, 4, 3)})
    buf.add_batch(rows)
    assert len(buf.frames["cam"]) == 11  # not 20
    out = buf.state_dict()
    assert len(out["frames.cam"]) == 11  # and so in a checkpoint
    for key in ("obs_image.cam", "next_obs_image.cam"):
        np.testing.assert_array_equal(_row_frames(out, key), rows[key])
    batch = buf.sample(32, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["next_obs_image.cam"], rows["next_obs_image.cam"][batch["index"]])


def test_overwritten_rows_give_their_frames_back():
    buf = ReplayBuffer(8, 3, 2, 2, images={"cam": (4, 4, 3)})
    for seed in range(6):  # 6 episodes of 5 chunks through 8 rows
        buf.add_batch(_episode_rows(5, seed))
        live = buf.state_dict()
        distinct = {
            f.tobytes() for k in ("obs_image.cam", "next_obs_image.cam") for f in _row_frames(live, k)
        }
        store = buf.frames["cam"]
        assert len(store) == len(distinct) and store.refs.sum() == 2 * len(buf)
    assert store._next == 11  # released slots are reused: 11 slots ever touched for 36 frames added


def test_state_dict_round_trip_with_frames():
    buf = ReplayBuffer(8, 3, 2, 2, images={"cam": (4, 4, 3)})
    for seed in range(3):
        buf.add_batch(_episode_rows(5, seed))
    copy = ReplayBuffer(8, 3, 2, 2, images={"cam": (4, 4, 3)})
    copy.load_state_dict(buf.state_dict())
    assert len(copy.frames["cam"]) == len(buf.frames["cam"]) and copy.ptr == buf.ptr
    for key, value in buf.state_dict().items():
        np.testing.assert_array_equal(copy.state_dict()[key], value)
    copy.add_batch(_episode_rows(5, 9))  # and it goes on as a ring
    assert copy.frames["cam"].refs.sum() == 2 * len(copy)


def test_a_checkpoint_with_every_rows_frames_still_loads():
    """Checkpoints written before frames were stored once hold each row's frames under obs_image.<name>."""
    buf = ReplayBuffer(8, 3, 2, 2, images={"cam": (4, 4, 3)})
    buf.add_batch(_episode_rows(6, 0))
    old = buf.state_dict()
    for key in ("obs_image.cam", "next_obs_image.cam"):
        old[key] = _row_frames(old, key)
        del old[f"{key}.frame"]
    del old["frames.cam"]
    copy = ReplayBuffer(8, 3, 2, 2, images={"cam": (4, 4, 3)})
    copy.load_state_dict(old)
    assert len(copy.frames["cam"]) == len(buf.frames["cam"]) == 7
    for key, value in buf.state_dict().items():
        np.testing.assert_array_equal(copy.state_dict()[key], value)
    del old["next_obs_image.cam"]
    with pytest.raises(ReplayError, match=r"lacks field 'next_obs_image\.cam'"):
        copy.load_state_dict(old)


def test_a_still_camera_holds_one_frame():
    rows = _episode_rows(5, seed=0)
    for key in ("obs_image.cam", "next_obs_image.cam"):
        rows[key][:] = 7
    buf = ReplayBuffer(4, 3, 2, 2, images={"cam": (4, 4, 3)})
    buf.add_batch(rows)  # 5 rows into 4: the oldest goes at once
    buf.add_batch({k: v[:3] for k, v in rows.items()})
    store = buf.frames["cam"]
    assert len(buf) == 4 and len(store) == 1 and store.refs.sum() == 2 * 4


def test_a_bad_checkpoint_is_refused_and_the_buffer_kept():
    buf = ReplayBuffer(8, 3, 2, 2, images={"cam": (4, 4, 3)})
    buf.add_batch(_episode_rows(5, 0))
    good = buf.state_dict()
    target = ReplayBuffer(8, 3, 2, 2, images={"cam": (4, 4, 3)})
    target.add_batch(_episode_rows(3, 1))
    before = target.state_dict()
    bad_index = {**good, "obs_image.cam.frame": good["obs_image.cam.frame"] + 100}
    float_index = {**good, "obs_image.cam.frame": good["obs_image.cam.frame"].astype(np.float32)}
    unshown = {**good, "frames.cam": np.concatenate([good["frames.cam"], good["frames.cam"][:2] + 1])}
    too_many = {**good, "frames.cam": np.zeros((17, 4, 4, 3), np.uint8)}
    for bad, match in ((bad_index, "must index frames.cam"), (float_index, "must index frames.cam"),
                       (unshown, "2 frames no row shows"), (too_many, "17 frames, more than 16")):  # fmt: skip
        with pytest.raises(ReplayError, match=match):
            target.load_state_dict(bad)
        for key, value in before.items():
            np.testing.assert_array_equal(target.state_dict()[key], value)


def _row_frames(state: dict, key: str) -> np.ndarray:
    camera = key.split(".", 1)[1]
    return state[f"frames.{camera}"][state[f"{key}.frame"]]
