"""Reports hold the right numbers: Wilson intervals, stop reasons, comparison, timing, safety events."""

import json

import pytest
import torch

from expo_robot.observe.metrics import MetricsLogger, read_metrics
from expo_robot.observe.report import write_eval_report, write_finetune_report
from expo_robot.observe.stats import StatsError, compare_rates, wilson_interval
from expo_robot.observe.summary import rate, summarize_eval, summarize_finetune

torch.set_num_threads(1)


def _episodes(successes, safety=0, estop=0, timeouts=0):
    eps = [{"success": True, "length": 25, "stop_reason": "success", "interventions": 0}] * successes
    eps += [{"success": False, "length": 12, "stop_reason": "safety:workspace", "interventions": 1}] * safety
    eps += [{"success": False, "length": 7, "stop_reason": "estop", "interventions": 0}] * estop
    eps += [{"success": False, "length": 100, "stop_reason": "timeout", "interventions": 0}] * timeouts
    return eps


def _result(label, **counts):
    return {"label": label, "policy": "expo", "checkpoint": f"ckpt/{label}", "config": {"robot": "sim_panda"},
            "target_period_s": 0.1, "episodes": _episodes(**counts),
            "loop_period_ms": [100.0] * 98 + [150.0, 50.0], "policy_latency_ms": [float(i) for i in range(1, 101)]}  # fmt: skip


def test_eval_summary_counts_safety_stops_as_failures():
    s = summarize_eval(_result("bc", successes=6, safety=3, estop=1, timeouts=10))
    assert s["success"]["successes"] == 6 and s["success"]["n"] == 20
    assert s["success"]["ci95"] == list(wilson_interval(6, 20))
    assert s["stops"] == {"timeout": 10, "success": 6, "safety:workspace": 3, "estop": 1}
    assert s["safety_stops"] == 4
    assert s["interventions"] == {"total_steps": 3, "episodes_with": 3}
    assert s["loop"]["overruns"] == 1 and s["loop"]["overrun_pct"] == pytest.approx(1.0)
    assert s["policy_latency"]["p99_ms"] == pytest.approx(99.01)


def test_eval_summary_refuses_a_safety_stop_marked_successful():
    bad = _result("bc", successes=1)
    bad["episodes"] = [{"success": True, "length": 5, "stop_reason": "safety:velocity"}]
    with pytest.raises(StatsError, match="must end the episode as a failure"):
        summarize_eval(bad)


def test_eval_report_single_policy(tmp_path):
    path = write_eval_report(tmp_path, _result("bc", successes=6, safety=3, estop=1, timeouts=10))
    text = path.read_text()
    low, high = wilson_interval(6, 20)
    assert "| successes | 6/20 |" in text
    assert f"{100 * low:.1f}% – {100 * high:.1f}%" in text  # 11.9% – 52.1%
    assert "| safety:workspace | 3 |" in text and "| estop | 1 |" in text and "| timeout | 10 |" in text
    assert "p99 99.01 ms" in text and "`ckpt/bc`" in text
    assert "Comparison" not in text
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["result"]["success"]["rate"] == pytest.approx(0.3)
    assert doc["compare"] is None and len(doc["episodes"]["bc"]) == 20
    assert (tmp_path / "eval.png").stat().st_size > 20_000


def test_eval_report_compare_side_by_side(tmp_path):
    tuned, bc = _result("finetuned", successes=18, timeouts=2), _result("bc", successes=8, timeouts=12)
    text = write_eval_report(tmp_path, tuned, compare=bc).read_text()
    assert "| | finetuned | bc |" in text.replace("|  |", "| |")
    assert "| successes | 18/20 | 8/20 |" in text
    expected = compare_rates(8, 20, 18, 20)
    assert f"**{100 * expected['difference']:+.1f} points**" in text  # +50.0
    assert f"p = {expected['p_value']:.3g}" in text and "**significant**" in text
    doc = json.loads((tmp_path / "eval_report.json").read_text())
    assert doc["comparison"]["significant"] is True
    assert doc["comparison"]["difference_ci"] == pytest.approx(list(expected["difference_ci"]))
    close = write_eval_report(tmp_path / "close", _result("a", successes=9, timeouts=11), _result("b", successes=8,
                              timeouts=12)).read_text()  # fmt: skip
    assert "not significant" in close


def test_eval_report_needs_distinct_labels(tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        write_eval_report(tmp_path, _result("x", successes=1), _result("x", successes=2))


def test_finetune_summary_and_report_from_metrics(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(0, "eval", **{"eval/successes": 4, "eval/episodes": 10})
        for i in range(10):
            step = (i + 1) * 50
            for _ in range(5):
                log.log(step, "driver", **{"loop/period_ms": 100.0})
                log.log(step, "actor", **{"policy/latency_ms": 2.0})
            log.log(step, "actor", **{"episode/success": float(i >= 5), "episode/return": float(i >= 5),
                                      "episode/length": 50, "episode/interventions": 5 if i < 2 else 0})  # fmt: skip
            log.log(
                step,
                "learner",
                **{"learner/updates": step * 2, "buffer/size": 1000 + step, "critic/loss": 0.1},
            )
        log.log(120, "driver", **{"safety/event": "workspace"})
        log.log(300, "driver", **{"safety/event": "workspace"})
        log.log(310, "driver", **{"safety/event": "estop"})
        log.log(500, "eval", **{"eval/successes": 9, "eval/episodes": 10})
        driver = {
            "ticks": 5000,
            "overruns": 12,
            "robot_overruns": 7,
            "wakeup_overruns": 3,
            "fifo_priority": 50,
            "robot_step_ms": 9.5,
            "max_robot_step_ms": 41.0,
        }
        log.log(500, "actor", **{f"driver/{k}": v for k, v in driver.items()})
    s = summarize_finetune(read_metrics(tmp_path), target_period_s=0.1)
    assert s["env_steps"] == 500 and s["episodes"] == 10
    assert s["success_before"] == {"step": 0, **rate(4, 10)} and s["success_after"] == {
        "step": 500,
        **rate(9, 10),
    }
    assert s["training_successes"]["successes"] == 5
    assert s["intervention_rate"] == pytest.approx(10 / 500)
    assert s["learner_updates"] == 1000 and s["buffer_size"] == 1500
    assert s["safety_events"] == {"workspace": 2, "estop": 1}
    assert s["loop"]["rate_hz"] == pytest.approx(10.0) and s["policy_latency"]["p50_ms"] == 2.0
    assert s["driver_loop"] == driver

    path = write_finetune_report(tmp_path, {"command": "expo-robot finetune seed=1", "task": "pick_cube",
                                            "agent": "expo", "target_period_s": 0.1, "checkpoints": "ckpt/last",
                                            "config": {"agent.utd": 2}})  # fmt: skip
    text = path.read_text()
    assert "# Fine-tune report: pick_cube with expo" in text and "`expo-robot finetune seed=1`" in text
    assert "| before (BC start) | 4/10 | 40.0% |" in text and "| after | 9/10 | 90.0% |" in text
    assert "+50.0 points" in text
    assert "| workspace | 2 |" in text and "| estop | 1 |" in text
    assert "| control rate | 10.00 Hz (target period 100.0 ms) |" in text
    assert (
        "| driver ticks > a period late | 12 of 5000 (0.24%): 7 after a robot step longer than a period, "
        "3 woken more than a period late (driver under SCHED_FIFO 50), 2 (0.04%) the loop's own work |"
        in text
        and "| robot step mean / max | 9.50 ms / 41.00 ms |" in text
    )
    assert "`ckpt/last`" in text and "| agent.utd | 2 |" in text and "`finetune.png`" in text
    assert (tmp_path / "finetune.png").stat().st_size > 50_000
    assert json.loads((tmp_path / "report.json").read_text())["success_after"]["successes"] == 9


def test_finetune_report_with_given_numbers_and_no_metrics(tmp_path):
    text = write_finetune_report(
        tmp_path, {"success_before": rate(3, 10), "success_after": rate(7, 10)}
    ).read_text()
    assert "| before (BC start) | 3/10 | 30.0% |" in text and "no metrics were logged" in text
    assert "None recorded." in text and not (tmp_path / "finetune.png").exists()


def test_driver_rows_of_a_run_recorded_before_late_wakeups_were_told_apart():
    """Such a run has no wakeup_overruns: the row keeps the two causes it recorded, not a wrong three-way split."""
    from expo_robot.observe.report import _driver_rows

    old = {"ticks": 1000, "overruns": 5, "robot_overruns": 3, "robot_step_ms": 9.0, "max_robot_step_ms": 30.0}
    row = _driver_rows(old)[0][1]
    assert row == "5 of 1000 (0.50%): 3 after a robot step longer than a period, 2 (0.20%) the stack's"


def test_driver_rows_of_a_lockstep_run_show_the_robot_step_only():
    """In lock-step the driver waits for each command by design: there is no tick grid to be late on."""
    from expo_robot.observe.report import _driver_rows

    loop = {"realtime": 0, "ticks": 900, "overruns": 0, "robot_overruns": 0, "robot_step_ms": 11.5,
            "max_robot_step_ms": 40.0}  # fmt: skip
    assert _driver_rows(loop) == [["robot step mean / max", "11.50 ms / 40.00 ms"]]
