"""The learning benchmark's bookkeeping (summary, plot) and, marked slow, a smoke run of the real loop."""

import numpy as np
import pytest
from PIL import Image

from expo_robot.bench.learning import BenchConfigError, bench_settings, plot, summarize
from expo_robot.config import load_config


def fake_results():
    def r(curve):
        return {"curve": curve, "final_success": curve[-1][1], "steps_to_0.8": next((s for s, v in curve if v >= 0.8), None),
                "speed": {"learner_updates_per_s": 5.0, "env_steps_per_s": 40.0}}  # fmt: skip

    return {
        "expo": {"0": r([[0, 0.3], [100, 0.8], [200, 0.9]]), "1": r([[0, 0.2], [100, 0.5], [200, 0.85]]),
                 "2": r([[0, 0.3], [100, 0.6], [200, 0.7]])},
        "rlpd": {"0": r([[0, 0.0], [100, 0.1], [200, 0.2]])},
    }  # fmt: skip


def test_summary_medians_and_never_reached():
    s = summarize(fake_results())
    assert s["expo"]["final_success"] == 0.85
    assert s["expo"]["steps_to_0.8"] == 200.0  # seeds reached at 100, 200, never -> median 200
    assert s["rlpd"]["steps_to_0.8"] is None and s["rlpd"]["final_success"] == 0.2


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    plot(fake_results(), path, "test")
    img = np.asarray(Image.open(path))
    assert img.shape[0] > 100 and img.std() > 10  # not blank


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(BenchConfigError, match="quick"):
        bench_settings(load_config([]), ["huge"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_end_to_end(tmp_path):
    from expo_robot.bench.learning import run

    cfg = load_config(["profile=demo", f"+bench.seed_root={tmp_path / 'seed'}", "+bench.result_name=partial"])
    doc = run(cfg, ["smoke"], results_dir=tmp_path)
    assert doc["result_name"] == "partial"  # `expo-robot bench` writes partial.json, not learning.json
    assert set(doc["summary"]) == {"expo", "rlpd", "bc"}
    assert doc["results"]["expo"]["0"]["updates"] > 0 and doc["results"]["bc"]["0"]["updates"] == 0
    assert doc["backup_costs"]["exact"]["cost_ratio_vs_exact"] == 1.0
    assert (tmp_path / "learning_smoke.png").exists()


def test_the_images_profile_asks_for_cameras():
    from expo_robot.bench.learning import run

    with pytest.raises(BenchConfigError, match="learns from cameras: add cameras=sim_pair"):
        run(load_config([]), ["images"])
