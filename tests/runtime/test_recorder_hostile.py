"""The recording process and its parent check each other's values: an episode whose fields disagree is dropped by
the child (counted, reported, the next one saved) and a report of episodes never sent is dropped by the parent."""

import numpy as np
import pytest

from expo_robot.data.dataset_io import camera_features, dataset_features, load_episodes
from expo_robot.runtime.messages import MessageRejected
from expo_robot.runtime.recorder_process import RecorderProcess, check_episode
from expo_robot.transport.wire import Message

pytestmark = pytest.mark.timeout(240)
CAMS = {"front": (8, 10, 3)}


def episode(n: int) -> dict[str, np.ndarray]:
    return {
        "state": np.zeros((n, 3), np.float32), "action": np.zeros((n, 2), np.float32),
        "reward": np.zeros(n, np.float32), "capture_time": np.arange(n, dtype=np.float64),
        "intervention": np.zeros(n, bool), "success": np.zeros(n, bool), "safety_stop": np.zeros(n, bool),
        "image.front": np.zeros((n, *CAMS["front"]), np.uint8),
    }  # fmt: skip


@pytest.mark.parametrize(
    "change, meta, reason",
    [
        ({"reward": np.zeros(3, np.float32)}, {}, "lengths"),
        ({k: v[:0] for k, v in episode(5).items()}, {}, "empty"),
        ({"success": np.full(5, 3, np.uint8).view(bool)}, {}, "flags"),
        ({}, {"task": ""}, "task"),
        ({}, {"task": "x" * 5000}, "task"),
    ],
)
def test_episode_checks(change, meta, reason):
    check_episode(episode(5), {"task": "pick", "truncated": False})
    with pytest.raises(MessageRejected) as e:
        check_episode({**episode(5), **change}, {"task": "pick", "truncated": False, **meta})
    assert e.value.reason == reason


def test_the_child_drops_a_bad_episode_and_saves_the_next_and_the_parent_drops_a_bad_report(tmp_path):
    features = dataset_features(3, 2, extra=camera_features(CAMS), capture_time=True)
    rec = RecorderProcess(tmp_path / "ds", 10, features, "pick", robot_type="fake")
    rec.wait_ready()
    bad = {**episode(5), "reward": np.zeros(3, np.float32)}  # as a broken (or hostile) parent would send it
    assert rec._chan.send("episode", bad, {"truncated": False, "task": "pick"})
    rec.queued_episodes += 1
    for t in range(4):
        rec.add_frame(np.full(3, t, np.float32), np.zeros(2, np.float32), 0.0, capture_time=float(t),
                      images={"front": np.zeros(CAMS["front"], np.uint8)})  # fmt: skip
    rec.end_episode(truncated=True)
    assert rec.wait(120) and rec.saved_episodes == 1 and rec.queued_episodes == 1
    assert rec.dropped == {"episode.lengths": 1}
    rec._absorb(Message("saved", 0, 0.0, {"index": 10**6}, {}))  # more saved than ever sent
    rec._absorb(Message("dropped", 0, 0.0, {"reason": "lengths"}, {}))  # nothing of ours is pending
    assert rec.saved_episodes == 1 and rec.queued_episodes == 1
    assert rec.dropped == {"episode.lengths": 1, "report.index": 1, "report.dropped": 1}
    rec.close()
    (ep,) = load_episodes(tmp_path / "ds")
    np.testing.assert_allclose(ep.states[:, 0], [0, 1, 2, 3])
