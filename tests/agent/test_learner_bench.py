"""`expo-robot bench learner`: eager and fast paths timed in turns, at the demo profile's sizes (seconds)."""

import pytest

from expo_robot.bench.learner import (
    BenchLearnerError,
    compare_paths,
    markdown_table,
    run_profile,
    settings_for,
)
from expo_robot.config import load_config


def test_eager_and_fast_paths_are_timed_side_by_side():
    out = compare_paths(load_config(["profile=demo"]), "demo", 2, with_compile=False, with_backups=False)
    eager, fast = out["variants"]["eager"], out["variants"]["fast"]
    assert eager["speedup_vs_eager"] == 1.0 and fast["compile_s"] is None
    for v in (eager, fast):
        assert v["full_update_ms"] > 0 and v["critic_step_ms"] > 0
        assert v["updates_per_s"] == pytest.approx(1e3 / v["full_update_ms"], rel=0.01)
    assert fast["speedup_vs_eager"] == pytest.approx(
        eager["full_update_ms"] / fast["full_update_ms"], rel=0.01
    )


@pytest.mark.slow  # eight backup options, each timed: about a minute on a loaded 2-core machine
def test_backup_options_are_costed_against_the_exact_backup():
    costs = compare_paths(load_config(["profile=demo"]), "demo", 1, with_compile=False, with_backups=True)[
        "backup_costs"
    ]
    assert costs["exact"]["cost_ratio_vs_exact"] == 1.0 and costs["distilled_one_step"]["proposal_steps"] == 1
    assert all(v["critic_step_ms"] > 0 for v in costs.values())


def test_profile_splits_the_eager_update_into_sections(tmp_path):
    cfg = load_config(["profile=demo"])
    settings = settings_for(cfg, ["profile"]) | {"profiles": ["demo"], "reps": {"demo": 1}}
    doc = run_profile(cfg, settings, tmp_path)
    sections = doc["sections_ms"]
    assert "backup sampler (base proposals)" in sections and "critic backward" in sections
    assert sum(v for k, v in sections.items() if k != "total") <= sections["total"] * 1.01
    assert set(doc["operators"]) == {"eager", "fast"} and (tmp_path / "learner_profile.txt").read_text()


def test_an_unknown_profile_is_named_with_the_choices():
    with pytest.raises(BenchLearnerError, match="full, quick, profile"):
        settings_for(load_config([]), ["fastest"])


def test_the_readme_table_is_made_from_the_result():
    variant = {"full_update_ms": 100.0, "updates_per_s": 10.0, "critic_step_ms": 40.0, "speedup_vs_eager": 1.0,
               "compile_s": None}  # fmt: skip
    costs = {
        "exact": {"n_backup": 8, "proposal_steps": 5, "critic_step_ms": 40.0, "cost_ratio_vs_exact": 1.0}
    }
    doc = {"results": {"cpu": {"variants": {"eager": variant, "fast": variant | {"compile_s": 12.3}},
                               "backup_costs": costs}}}  # fmt: skip
    table = markdown_table(doc)
    assert "| cpu | eager | 100 | 10.00 | 40 | 1.00x |  |" in table and "| 12 |" in table
    assert "| exact | 8 | 5 | 40 | 1.00 |" in table
