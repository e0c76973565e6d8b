"""EpisodeWriter / load_episodes: lerobot compatibility, round trip, non-blocking writes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from expo_robot.data.dataset_io import (
    DatasetError,
    EpisodeWriter,
    dataset_features,
    load_episodes,
    read_dataset,
)

torch.set_num_threads(1)


def _write(root, episodes, durable=True, **kw):
    """Write synthetic episodes: list of dicts with states, actions, rewards, flags; return the writer's indices."""
    s_dim, a_dim = episodes[0]["states"].shape[1], episodes[0]["actions"].shape[1]
    indices = []
    with EpisodeWriter(root, fps=10, features=dataset_features(s_dim, a_dim), task="t", durable=durable) as w:
        for ep in episodes:
            for t in range(len(ep["actions"])):
                w.add_frame(
                    ep["states"][t],
                    ep["actions"][t],
                    ep["rewards"][t],
                    intervention=bool(ep["intervention"][t]),
                    success=bool(ep.get("success_t", np.zeros(len(ep["actions"])))[t]),
                )
            indices.append(w.end_episode(truncated=ep["truncated"]))
    return indices


def _random_episode(rng, n, truncated):
    return {
        "states": rng.normal(size=(n, 5)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "intervention": rng.random(n) < 0.3,
        "success_t": np.r_[np.zeros(n - 1), 0 if truncated else 1],
        "truncated": truncated,
    }


@pytest.mark.timeout(120)
def test_load_episodes_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    written = [_random_episode(rng, n, truncated=n == 7) for n in (4, 7, 12)]
    assert _write(tmp_path / "ds", written) == [0, 1, 2]
    loaded = load_episodes(tmp_path / "ds")
    assert len(loaded) == 3
    for ep, ref in zip(loaded, written, strict=True):
        np.testing.assert_array_equal(ep.states, ref["states"])
        np.testing.assert_array_equal(ep.actions, ref["actions"])
        np.testing.assert_array_equal(ep.rewards, ref["rewards"])
        np.testing.assert_array_equal(ep.intervention, ref["intervention"])
        assert ep.states.dtype == np.float32 and ep.intervention.dtype == bool
        assert ep.terminated == (not ref["truncated"])
        assert ep.success == (not ref["truncated"])
        assert ep.task == "t"
    # The truncated episode's last row has no next state: transitions() drops it; terminated ones keep it.
    tr = loaded[1].transitions()
    assert len(tr["obs"]) == 6 and not tr["done"].any()
    np.testing.assert_array_equal(tr["next_obs"], written[1]["states"][1:7])
    tr0 = loaded[0].transitions()
    assert len(tr0["obs"]) == 4 and tr0["done"][-1] and not tr0["done"][:-1].any()
    # Two datasets load in order; mismatched sizes are refused with a clear error.
    _write(tmp_path / "ds2", [_random_episode(rng, 3, False)])
    assert [len(e) for e in load_episodes([tmp_path / "ds", tmp_path / "ds2"])] == [4, 7, 12, 3]
    odd = _random_episode(rng, 3, False)
    odd["states"] = odd["states"][:, :2]
    _write(tmp_path / "ds3", [odd])
    with pytest.raises(DatasetError, match="state/action sizes"):
        load_episodes([tmp_path / "ds", tmp_path / "ds3"])


@pytest.mark.timeout(120)
def test_append_to_existing_dataset_keeps_episodes(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "ds", [_random_episode(rng, 5, False)])
    assert _write(tmp_path / "ds", [_random_episode(rng, 6, False)]) == [1]
    assert [len(e) for e in load_episodes(tmp_path / "ds")] == [5, 6]
    with pytest.raises(DatasetError, match="other features"):
        EpisodeWriter(tmp_path / "ds", fps=10, features=dataset_features(9, 3), task="t")


@pytest.mark.timeout(120)
def test_add_frame_never_waits_for_a_save(tmp_path):
    """The control loop goes on across 4 episode boundaries while the save thread is held: no call waits for it."""
    rng = np.random.default_rng(2)
    w = EpisodeWriter(tmp_path / "ds", fps=100, features=dataset_features(21, 4), task="t", durable=True)
    gate, real_save = threading.Event(), w._save
    w._save = lambda episode: (gate.wait(60), real_save(episode))  # a disk that does not answer
    for _ in range(4):
        for _ in range(150):
            w.add_frame(rng.normal(size=21), rng.normal(size=4), 0.0)
        w.end_episode()
    assert w.saved_episodes == 0  # every call above returned while no save could finish
    gate.set()
    assert w.wait(timeout=60)
    w.close()
    assert w.saved_episodes == 4
    assert [len(e.actions) for e in load_episodes(tmp_path / "ds")] == [150] * 4


@pytest.mark.timeout(120)
def test_writer_errors_are_raised_on_the_caller(tmp_path):
    w = EpisodeWriter(tmp_path / "ds", fps=10, features=dataset_features(3, 2), task="t")
    with pytest.raises(DatasetError, match="no frames"):
        w.end_episode()
    w.add_frame(np.zeros(5), np.zeros(2), 0.0)  # wrong state size: lerobot rejects it on the save thread
    w.end_episode()
    with pytest.raises(DatasetError, match="failed"):
        w.wait(timeout=30)
    with pytest.raises(DatasetError):
        w.close()


def test_read_dataset_rejects_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a LeRobotDataset"):
        read_dataset(tmp_path)


@pytest.mark.timeout(120)
def test_foreign_lerobot_dataset_maps_feature_names(tmp_path):
    """A dataset written by lerobot itself, the way gym-hil recordings name things, loads as seed data."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from expo_robot.data.dataset_cli import check

    def spec(dtype, n):
        return {"dtype": dtype, "shape": (n,), "names": None}

    features = {
        "observation.state": spec("float32", 18),
        "observation.environment_state": spec("float32", 3),
        "action": spec("float32", 4),
        "next.reward": spec("float32", 1),
        "next.done": spec("bool", 1),
        "complementary_info.is_intervention": spec("bool", 1),
    }
    ds = LeRobotDataset.create(
        "local/foreign", fps=10, features=features, root=tmp_path / "f", use_videos=False
    )
    for ep, n in enumerate((5, 3)):
        for t in range(n):
            last = t == n - 1
            ds.add_frame(
                {
                    "observation.state": np.full(18, t, np.float32),
                    "observation.environment_state": np.full(3, -t, np.float32),
                    "action": np.zeros(4, np.float32),
                    "next.reward": np.array([float(last and ep == 0)], np.float32),
                    "next.done": np.array([last]),
                    "complementary_info.is_intervention": np.array([t == 1]),
                    "task": "pick",
                }
            )
        ds.save_episode()
    ds.finalize()
    first, second = load_episodes(tmp_path / "f")
    assert first.states.shape == (5, 21) and first.states[2, -1] == -2 and first.states[2, 0] == 2
    assert first.success and not second.success  # no success flag: a final reward of 1 means success
    assert first.terminated and second.terminated
    assert first.intervention.tolist() == [False, True, False, False, False]
    assert check(tmp_path / "f").ok


@pytest.mark.timeout(300)
def test_a_backlog_is_saved_back_to_back_then_finalized_once_caught_up(tmp_path, monkeypatch):
    """A fast robot queues episodes faster than finalize+resume (which reads the whole episode index) can keep up
    with: queued episodes are saved without a resume between them, and the dataset is finalized once caught up."""
    from lerobot.datasets import lerobot_dataset

    resumes = []
    real_resume = lerobot_dataset.LeRobotDataset.resume.__func__
    monkeypatch.setattr(
        lerobot_dataset.LeRobotDataset, "resume",
        classmethod(lambda cls, *a, **kw: resumes.append(1) or real_resume(cls, *a, **kw)),
    )  # fmt: skip
    w = EpisodeWriter(tmp_path / "ds", fps=50, features=dataset_features(3, 2), task="t", durable=True)
    gate, real_save = threading.Event(), w._save
    w._save = lambda episode: (gate.wait(60), real_save(episode))
    for _ in range(6):
        for _ in range(5):
            w.add_frame(np.zeros(3), np.zeros(2), 0.0)
        w.end_episode()
    gate.set()  # 6 episodes waiting: one resume at the end instead of six
    assert w.wait(timeout=120)
    assert len(resumes) == 1
    assert len(load_episodes(tmp_path / "ds")) == 6  # readable before close: finalized once caught up
    w.close()
