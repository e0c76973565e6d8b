"""`expo-robot dataset info|check|repair PATH` through the real CLI entry point."""

from __future__ import annotations

import numpy as np
import pytest

from expo_robot.cli import main
from expo_robot.data.dataset_io import EpisodeWriter, dataset_features


def _record(root, fps=10, capture_period=None, done_at=None, episodes=2, n=8):
    features = dataset_features(3, 2, capture_time=capture_period is not None)
    with EpisodeWriter(root, fps=fps, features=features, task="cli test") as w:
        t = 0.0
        for ep in range(episodes):
            for i in range(n):
                w.add_frame(
                    np.full(3, i),
                    np.zeros(2),
                    float(i == n - 1 and ep == 0),
                    done=i == done_at,
                    intervention=i < 2,
                    success=ep == 0 and i == n - 1,
                    capture_time=t if capture_period else None,
                )
                t += capture_period or 0.0
            w.end_episode()
    return root


@pytest.mark.timeout(120)
def test_info_and_check_of_a_good_dataset(tmp_path, capfd):
    root = _record(tmp_path / "good", capture_period=0.1)
    assert main(["dataset", "info", str(root)]) == 0
    out = capfd.readouterr().out
    assert "episodes                    2" in out and "frames                      16" in out
    assert "success_rate                0.5" in out and "intervention_rate           0.25" in out
    assert "observation.state" in out and "capture_time" in out
    assert main(["dataset", "check", str(root)]) == 0
    assert "OK" in capfd.readouterr().out


@pytest.mark.timeout(120)
def test_check_reports_flag_and_rate_problems(tmp_path, capfd):
    root = _record(tmp_path / "bad", capture_period=0.2, done_at=3)  # recorded at 5 Hz, labelled 10 Hz
    assert main(["dataset", "check", str(root)]) == 1
    err = capfd.readouterr().err
    assert "next.done set before the last frame (frames [3])" in err
    assert "recorded at 5.00 Hz, the dataset says 10 Hz" in err


@pytest.mark.timeout(60)
def test_bad_usage_and_missing_dataset(tmp_path, capfd):
    assert main(["dataset", "frobnicate", str(tmp_path)]) == 2
    assert main(["dataset", "check", str(tmp_path / "nothing")]) == 1
    assert "not a LeRobotDataset" in capfd.readouterr().err
