"""The safety layer on its own: each layer, and a property test over random command streams."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from drivers.safety import ActionFilter, Limits, SafetyConfig, SafetyConfigError, SafetyMonitor, brake_cap

LOW, HIGH = np.array([-1.0, -1.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0, 2.0])
BOX_LOW, BOX_HIGH = np.array([0.2, -0.3, 0.0]), np.array([0.6, 0.3, 0.5])
STEP_M = 0.025
HOLD = np.array([0.0, 0.0, 0.0, 1.0])


class _Spec:  # the parts of a Robot that Limits.build reads
    action_low, action_high, ee_step_m, fps = LOW.astype(np.float32), HIGH.astype(np.float32), STEP_M, 10.0


def make_filter(**overrides) -> ActionFilter:
    cfg = SafetyConfig(**overrides)
    f = ActionFilter(Limits.build(cfg, _Spec(), {"low": BOX_LOW, "high": BOX_HIGH}), cfg)
    f.arm(HOLD)
    return f


def test_invalid_commands_are_refused():
    f = make_filter()
    for bad in ([np.nan, 0, 0, 1], [0, np.inf, 0, 1], [0, 0, 1], [[0, 0, 0, 1]]):
        action, reasons = f(np.array(bad, dtype=np.float64))
        assert action is None and reasons == ["invalid_command"]


def test_clamp_and_rate_limit():
    f = make_filter(startup_max_jump=10.0)  # start-up guard off for this test
    action, reasons = f(np.array([5.0, 0.0, 0.0, 1.0]), np.array([0.4, 0.0, 0.25]))
    assert "clamp" in reasons and "rate_limit" in reasons
    np.testing.assert_allclose(action, [0.5, 0.0, 0.0, 1.0])  # clamped to 1, then at most 0.5 from the hold
    action, _ = f(np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.4, 0.0, 0.25]))
    np.testing.assert_allclose(action, [1.0, 0.0, 0.0, 1.0])


def test_startup_ramp_and_refuse():
    f = make_filter(startup_ramp_steps=4, max_step_change=10.0)
    target = np.array([0.8, 0.0, 0.0, 1.0])
    xs = [f(target, np.array([0.4, 0.0, 0.25]))[0][0] for _ in range(5)]
    np.testing.assert_allclose(xs, [0.2, 0.4, 0.6, 0.8, 0.8], atol=1e-6)
    f = make_filter(startup_mode="refuse")
    assert f(target)[0] is None and f(target)[1] == ["startup_refused"]
    assert f(np.array([0.1, 0.0, 0.0, 1.0]))[0] is not None  # a command near the hold pose is accepted


def test_unknown_hold_dims_take_the_first_command():
    """An absolute gripper with no known position: the first command sets it, without a ramp or rate limit."""
    cfg = SafetyConfig(startup_max_jump=0.25, max_step_change=0.5)
    f = ActionFilter(Limits.build(cfg, _Spec(), None), cfg)
    f.arm(np.array([0.0, 0.0, 0.0, np.nan]))
    action, reasons = f(np.array([0.1, 0.0, 0.0, 2.0]))
    np.testing.assert_allclose(action, [0.1, 0.0, 0.0, 2.0], atol=1e-6)
    assert reasons == []
    action, _ = f(np.array([0.1, 0.0, 0.0, 0.0]))
    assert action[3] == pytest.approx(1.5)  # known from now on: rate-limited


def test_position_limits_clamp_absolute_commands():
    """Robots commanded in joint positions: limits from config intersect the action bounds."""
    limits = {"low": [-0.5, -2.0, -2.0, 0.5], "high": [0.5, 2.0, 2.0, 1.5]}
    f = make_filter(position_limits=limits, startup_max_jump=10.0, max_step_change=10.0)
    action, reasons = f(np.array([0.9, -0.9, 0.0, 2.0]))
    np.testing.assert_allclose(action, [0.5, -0.9, 0.0, 1.5], atol=1e-6)
    assert "clamp" in reasons


def test_speed_limit_is_per_axis():
    f = make_filter(max_ee_speed_mps=0.1, startup_max_jump=10.0, max_step_change=10.0)  # 0.1 m/s = 0.4 units
    action, reasons = f(np.array([1.0, -1.0, 0.3, 1.0]), np.array([0.4, 0.0, 0.25]))
    np.testing.assert_allclose(action, [0.4, -0.4, 0.3, 1.0], atol=1e-6)
    assert "clamp" in reasons


def test_brake_cap():
    assert brake_cap(0.0, 0.5) == 0.0 and brake_cap(-1.0, 0.5) == 0.0
    assert brake_cap(0.3, 0.5) == pytest.approx(0.3)  # one step, then stopped
    assert brake_cap(1.5, 0.5) == pytest.approx(1.0)  # 1.0 + 0.5 = 1.5
    assert brake_cap(2.0, float("inf")) == 2.0


def test_workspace_stops_at_the_wall():
    f = make_filter(startup_max_jump=10.0)
    pos = np.array([0.55, 0.0, 0.25])
    for _ in range(40):
        action, _ = f(np.array([1.0, 0.0, 0.0, 1.0]), pos)
        pos = pos + action[:3] * STEP_M
        assert pos[0] <= BOX_HIGH[0] + 1e-9
    assert pos[0] == pytest.approx(BOX_HIGH[0], abs=1e-3)  # it gets there, not just near


def test_config_overrides_and_unknown_keys():
    robot = OmegaConf.create({"safety": {"max_step_change": 0.2}})
    assert SafetyConfig.from_config({"max_step_change": 0.5}, robot).max_step_change == 0.2
    with pytest.raises(SafetyConfigError, match="max_step_chnage"):
        SafetyConfig.from_config({"max_step_chnage": 0.5})


def test_monitor_watchdog_estop_and_limits():
    m = SafetyMonitor(SafetyConfig(watchdog_hold_periods=1.0, watchdog_safe_state_s=1.0), fps=10.0)
    assert m.watchdog(0.0, None) is None and m.state == "ok"  # nobody ever connected: idle, not a fault
    assert m.watchdog(1.0, 0.95) is None
    assert m.watchdog(1.11, 0.95) == "hold" and "watchdog" in m.status.reason
    assert m.watchdog(1.2, 1.15) == "ok"  # the policy is back
    assert m.watchdog(3.0, 1.15) == "safe_state"
    assert m.watchdog(3.1, 3.05) is None and m.state == "safe_state"  # only a reset leaves the safe state
    assert m.new_episode() and m.state == "ok"
    m.estop("test")
    assert m.watchdog(10.0, 10.0) is None and m.state == "estop"
    assert not m.new_episode()  # a reset moves the robot: refused while latched
    assert m.clear_estop() and m.state == "hold"
    assert m.episode_limit(1000, 0.0) and m.episode_limit(1, 600.0) and m.episode_limit(1, 1.0) is None
    assert m.counters["estop"] == 1 and m.counters["hold"] == 2 and m.counters["safe_state"] == 1


def test_watchdog_window_is_periods_with_a_floor_that_still_holds_within_two_periods():
    assert SafetyMonitor(SafetyConfig(), fps=10.0).hold_after_s == pytest.approx(0.1)  # 1 period
    fast = SafetyMonitor(SafetyConfig(), fps=50.0)  # 1 period would be 20 ms: the 30 ms floor applies
    assert fast.hold_after_s == pytest.approx(0.03)
    # the driver checks every hold_after_s / 4: a dead policy is held within 1.25 windows = 1.875 periods < 2
    assert 1.25 * fast.hold_after_s < 2 / 50.0
    assert fast.watchdog(1.0, 0.975) is None and fast.watchdog(1.031, 1.0) == "hold"


# ---- property test: random command streams never violate bounds, change limit or the workspace box ----
finite = st.floats(-3.0, 3.0, allow_nan=False)
weird = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30])
command = st.lists(st.one_of(finite, finite, finite, weird), min_size=4, max_size=4)
stream = st.lists(command, min_size=1, max_size=40)
start = st.tuples(st.floats(0.2, 0.6), st.floats(-0.3, 0.3), st.floats(0.0, 0.5))
config = st.fixed_dictionaries(
    {
        "max_step_change": st.floats(0.05, 2.0),
        "startup_mode": st.sampled_from(["ramp", "refuse"]),
        "startup_ramp_steps": st.integers(1, 8),
        "startup_max_jump": st.floats(0.0, 1.0),
        "max_ee_speed_mps": st.one_of(st.none(), st.floats(0.01, 0.5)),
    }
)


def check_stream(cfg: dict, pos0: tuple, commands: list) -> None:
    f = make_filter(**cfg)
    lim, pos, prev = f.limits, np.array(pos0), HOLD.copy()
    for cmd in commands:
        action, reasons = f(np.array(cmd), pos)
        assert "workspace_override" not in reasons
        if action is None:
            continue
        a = action.astype(np.float64)
        assert np.isfinite(a).all()
        assert np.all(a >= lim.low - 1e-6) and np.all(a <= lim.high + 1e-6), "bounds"
        assert np.all(np.abs(a - prev) <= lim.max_change + 1e-5), "per-step change"
        pos = pos + a[:3] * STEP_M
        assert np.all(pos >= BOX_LOW - 1e-6) and np.all(pos <= BOX_HIGH + 1e-6), "workspace box"
        prev = a


@settings(max_examples=500, deadline=None, derandomize=True)
@given(config, start, stream)
def test_property_random_streams_respect_limits(cfg, pos0, commands):
    check_stream(cfg, pos0, commands)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(config, start, stream)
def test_property_random_streams_respect_limits_10k(cfg, pos0, commands):
    check_stream(cfg, pos0, commands)
