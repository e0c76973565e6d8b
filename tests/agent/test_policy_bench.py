"""`expo-robot bench policy`: the timed step runs the actor's path (decode, act, encode), with and without a camera;
the real-time figures say which overruns are the stack's."""

import pytest

from expo_robot.bench.policy import CAMERA, _agent, realtime_figures, run, time_policy_steps
from expo_robot.config import load_config
from expo_robot.observe.metrics import LOOP_PERIOD_MS, MetricsLogger


def test_policy_step_timing_with_and_without_a_camera():
    cfg = load_config(["profile=demo"])
    for cameras in (None, CAMERA):
        agent, spec = _agent(cfg, "cpu", cameras)
        assert dict(spec.images) == (cameras or {})
        ms = time_policy_steps(agent, spec, 5)
        assert len(ms) == 5 and all(m > 0 for m in ms)


def test_realtime_figures_count_late_wakeups_as_the_stacks_only_without_the_realtime_policy(tmp_path):
    """Under SCHED_FIFO no process of the stack can delay the driver's wake-up, so only the loop's own work is the
    stack's; under the normal policy the actor and learner can, so late wake-ups are the stack's too."""
    for fifo, stack in ((50, 2), (0, 5)):
        folder = tmp_path / f"fifo{fifo}"
        loop = {
            "ticks": 10_000,
            "overruns": 12,
            "robot_overruns": 7,
            "wakeup_overruns": 3,
            "fifo_priority": fifo,
        }
        with MetricsLogger(folder, tensorboard=False) as log:
            log.log(100, "driver", **{LOOP_PERIOD_MS: 20.0})
            log.log(100, "actor", **{f"driver/{k}": v for k, v in loop.items()})
        figures = realtime_figures(folder, 50)
        assert (figures["overruns"], figures["robot_overruns"], figures["wakeup_overruns"]) == (12, 7, 3)
        assert figures["stack_overruns"] == stack and figures["stack_overrun_pct"] == 100.0 * stack / 10_000


def test_an_unknown_profile_is_named_with_the_choices():
    with pytest.raises(
        ValueError, match="unknown profile 'fast'; choose one of quick, full, latency, realtime"
    ):
        run(load_config(["profile=demo"]), ["fast"])
