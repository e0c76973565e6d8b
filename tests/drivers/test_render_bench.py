"""The render benchmark: which settings each profile it compares draws with, and (slow) a smoke run of the real
measurement, each profile in a child process of its own."""

import pytest

from expo_robot.bench.render import RenderBenchError, profile_settings, run
from expo_robot.config import load_config


def test_profiles_compared_are_the_robots_own_plus_fast_with_threaded_gl():
    robot = load_config([]).robot
    assert profile_settings(robot, "quality")["offscreen_samples"] is None  # the model's own 8x multisampling
    assert profile_settings(robot, "fast") == {**profile_settings(robot, "fast_threaded"), "gl_threads": 0}
    with pytest.raises(RenderBenchError, match=r"render profile 'nope': the robot defines \['fast', 'hulls'"):
        profile_settings(robot, "nope")
    with pytest.raises(RenderBenchError, match="unknown render benchmark profile 'huge'"):
        run(load_config([]), ["huge"])
    with pytest.raises(RenderBenchError, match="robot 'fake' has no render profiles"):
        run(load_config(["robot=fake"]), ["smoke"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_measures_every_profile_and_size(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    doc = run(load_config([]), ["smoke"])
    assert set(doc["results"]) == {"quality", "fast"}
    for per_size in doc["results"].values():
        assert per_size["32px_1cam"]["ms_per_frame"] > 0
    assert doc["summary"]["32px_1cam"]["speedup_fast_vs_quality"] > 0
    assert doc["goal"]["fast_ms_per_frame_at"] == "32px_1cam"
