"""Child process for the kill tests: records episodes with EpisodeWriter until its parent SIGKILLs it.

python kill_writer_child.py ROOT mid_episode   # 3 saved episodes, then frames of a 4th; prints READY
python kill_writer_child.py ROOT continuous    # ends episodes back to back; prints SAVED n as they are saved
python kill_writer_child.py ROOT in_save       # kills itself inside the 3rd save, after lerobot's save_episode
                                               # wrote an open data file and info.json, before finalize
"""

import os
import signal
import sys
import time

import numpy as np

from expo_robot.data.dataset_io import EpisodeWriter, dataset_features


def _die_in_third_finalize() -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    real, calls = LeRobotDataset.finalize, []

    def finalize(self):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self)

    LeRobotDataset.finalize = finalize


def main(root: str, mode: str) -> None:
    if mode == "in_save":
        _die_in_third_finalize()
    rng = np.random.default_rng(0)
    writer = EpisodeWriter(
        root, fps=30, features=dataset_features(21, 4, capture_time=True), task="kill test"
    )
    period, t = 1 / 30, 0.0

    def frames(n: int) -> None:
        nonlocal t
        for _ in range(n):
            writer.add_frame(rng.normal(size=21), rng.normal(size=4), 0.0, capture_time=t)
            t += period

    if mode == "mid_episode":
        for _ in range(3):
            frames(20)
            writer.end_episode()
        writer.wait(timeout=60)
        frames(10)  # the episode in progress: lost by the kill
        print("READY", flush=True)
        time.sleep(600)
    else:
        while True:
            frames(20)
            writer.end_episode()
            print(f"SAVED {writer.saved_episodes}", flush=True)
            time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
