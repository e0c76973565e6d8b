"""Recording in a child process: the caller's API of EpisodeWriter, the dataset it leaves, and failures reported."""

import numpy as np
import pytest

from expo_robot.data.dataset_io import DatasetError, camera_features, dataset_features, load_episodes
from expo_robot.runtime.recorder_process import RecorderProcess

pytestmark = pytest.mark.timeout(240)
CAMS = {"front": (8, 10, 3)}


def _features():
    return dataset_features(3, 2, extra=camera_features(CAMS), capture_time=True)


def _episode(rec: RecorderProcess, n: int, offset: float, success: bool) -> None:
    for t in range(n):
        rec.add_frame(
            np.full(3, offset + t, np.float32), np.full(2, -t, np.float32), float(t == n - 1 and success),
            intervention=t == 1, success=success and t == n - 1, capture_time=100.0 + t,
            images={"front": np.full(CAMS["front"], t, np.uint8)},
        )  # fmt: skip
    rec.end_episode(truncated=not success)


def test_episodes_sent_to_the_child_are_saved_as_a_dataset(tmp_path):
    rec = RecorderProcess(tmp_path / "ds", 10, _features(), "pick", robot_type="fake")
    rec.wait_ready()
    _episode(rec, 5, 0.0, success=True)
    _episode(rec, 3, 10.0, success=False)
    assert rec.wait(120) and rec.saved_episodes == 2
    rec.close()
    got = load_episodes(tmp_path / "ds")
    assert [len(e.actions) for e in got] == [5, 3]
    np.testing.assert_allclose(got[1].states[:, 0], [10, 11, 12])
    np.testing.assert_allclose(got[0].actions[:, 0], [0, -1, -2, -3, -4])
    assert (
        got[0].success and not got[1].success and got[0].intervention.astype(int).tolist() == [0, 1, 0, 0, 0]
    )
    assert got[0].images["front"][4].max() == 4 and got[0].images["front"].shape == (5, 8, 10, 3)


def test_a_folder_that_is_not_a_matching_dataset_fails_at_start(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"did not start: .*not a LeRobotDataset"):
        RecorderProcess(tmp_path / "busy", 10, _features(), "pick").wait_ready()


def test_a_dead_child_is_an_error_on_the_next_call_not_a_hang(tmp_path):
    rec = RecorderProcess(tmp_path / "ds", 10, _features(), "pick")
    rec.wait_ready()
    rec._proc.kill()
    rec._proc.wait(30)
    with pytest.raises(DatasetError, match="exited with code -9"):
        _episode(rec, 2, 0.0, success=False)
    with pytest.raises(DatasetError):
        rec.close()


DYING_PARENT = """
import os, sys, time
import numpy as np
from expo_robot.data.dataset_io import camera_features, dataset_features
from expo_robot.runtime.recorder_process import RecorderProcess
rec = RecorderProcess(sys.argv[1], 10, dataset_features(3, 2, extra=camera_features({"front": (8, 10, 3)}),
                      capture_time=True), "pick")
rec.wait_ready()
for t in range(4):
    rec.add_frame(np.zeros(3, np.float32), np.zeros(2, np.float32), 0.0, images={"front": np.zeros((8, 10, 3), np.uint8)})
rec.end_episode(truncated=True)
print(rec._proc.pid, flush=True)
time.sleep(1.0)  # (a message still queued in this process's socket at the instant of a crash is lost with it)
os._exit(1)  # a crashed actor: no close(), no finalize
"""


def test_a_dead_parent_loses_no_episode_the_child_received(tmp_path):
    import os
    import subprocess
    import sys
    import time

    out = subprocess.run([sys.executable, "-c", DYING_PARENT, str(tmp_path / "ds")], capture_output=True, text=True,
                         timeout=180)  # fmt: skip
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the child saves what it got, finalizes and exits
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    assert [len(e.actions) for e in load_episodes(tmp_path / "ds")] == [4]
