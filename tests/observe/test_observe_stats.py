"""Wilson intervals against published values, the two-rate comparison, latency and cadence summaries."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expo_robot.observe.stats import (
    StatsError,
    cadence_summary,
    compare_rates,
    fisher_exact_p,
    latency_summary,
    newcombe_interval,
    percentiles,
    period_summary,
    two_proportion_z_p,
    wilson_interval,
)

# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven methods",
# Stat. Med. 17:857-872, worked examples, method 3 (Wilson score interval without continuity correction), 95%.
NEWCOMBE_SINGLE = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0000, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
    ((29, 29), (0.8830, 1.0000)),
]
# Newcombe (1998), "Interval estimation for the difference between independent proportions: comparison of
# eleven methods", Stat. Med. 17:873-890, worked examples, method 10 (hybrid score), 95%:
# (s_a, n_a, s_b, n_b) -> interval for p_a - p_b.
NEWCOMBE_DIFFERENCE = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_SINGLE)
def test_wilson_matches_published_values(counts, expected):
    low, high = wilson_interval(*counts)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


def test_wilson_other_confidence_and_empty_sample():
    # 90% for 81/263: z = 1.6449 -> narrower than 95% on both sides.
    low90, high90 = wilson_interval(81, 263, confidence=0.90)
    low95, high95 = wilson_interval(81, 263)
    assert low95 < low90 < 81 / 263 < high90 < high95
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("bad", [(-1, 5), (6, 5), (1, -1)])
def test_wilson_rejects_impossible_counts(bad):
    with pytest.raises(StatsError, match="successes"):
        wilson_interval(*bad)


def test_wilson_rejects_bad_confidence():
    with pytest.raises(StatsError, match="confidence"):
        wilson_interval(3, 10, confidence=95)


@settings(deadline=None)  # a loaded shared CPU must not fail a pure-math property
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_bounds_solve_the_score_equation(counts):
    """The Wilson bounds are the p where |p_hat - p| = z * sqrt(p (1 - p) / n)."""
    k, n = counts
    p_hat = k / n
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= p_hat <= high <= 1.0
    z = 1.959963984540054
    for bound in (low, high):
        if 0.0 < bound < 1.0:
            assert abs(p_hat - bound) == pytest.approx(z * math.sqrt(bound * (1 - bound) / n), abs=1e-9)


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_DIFFERENCE)
def test_newcombe_difference_matches_published_values(counts, expected):
    s_a, n_a, s_b, n_b = counts
    low, high = newcombe_interval(s_b, n_b, s_a, n_a)  # our difference is rate2 - rate1
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


def test_fisher_exact_lady_tasting_tea():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 34/70 = 0.4857.
    assert fisher_exact_p(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert fisher_exact_p(1, 4, 3, 4) == pytest.approx(34 / 70)
    # [[10, 0], [0, 10]]: p = 2 / C(20, 10).
    assert fisher_exact_p(10, 10, 0, 10) == pytest.approx(2 / math.comb(20, 10))
    assert fisher_exact_p(0, 10, 0, 10) == 1.0


def test_z_test_known_value():
    # 8/20 vs 16/20: pooled p = 0.6, se = sqrt(0.24 * 0.1), z = 0.4 / 0.15492 = 2.582 -> p = 0.00982.
    assert two_proportion_z_p(8, 20, 16, 20) == pytest.approx(0.009823, abs=1e-5)


def test_compare_rates_significant_and_not():
    big = compare_rates(8, 20, 18, 20)
    assert big["difference"] == pytest.approx(0.5)
    assert big["significant"] and big["p_value"] < 0.05
    assert big["difference_ci"][0] > 0
    small = compare_rates(8, 20, 10, 20)
    assert not small["significant"] and small["p_value"] > 0.5
    assert small["difference_ci"][0] < 0 < small["difference_ci"][1]
    assert small["ci1"] == wilson_interval(8, 20)
    with pytest.raises(StatsError, match="empty side"):
        compare_rates(0, 0, 3, 10)


def test_percentiles_and_latency_summary():
    values = list(range(1, 101))  # 1..100 ms
    p = percentiles(values)
    assert p["p50"] == pytest.approx(50.5)
    assert p["p99"] == pytest.approx(99.01)
    s = latency_summary(values)
    assert s["n"] == 100 and s["max_ms"] == 100 and s["mean_ms"] == pytest.approx(50.5)
    assert math.isnan(latency_summary([])["p99_ms"])


def test_cadence_counts_overruns_and_jitter():
    # 50 Hz loop: 98 ticks on time, then one 30 ms period (late) and one 10 ms catch-up period.
    periods = [0.02] * 97 + [0.03, 0.01]
    times = [0.0]
    for p in periods:
        times.append(times[-1] + p)
    s = cadence_summary(times, target_period_s=0.02)
    assert s["periods"] == 99 and s["overruns"] == 1
    assert s["overrun_pct"] == pytest.approx(100 / 99)
    assert s["period_mean_ms"] == pytest.approx(20.0)
    assert s["rate_hz"] == pytest.approx(50.0)
    assert s["period_max_ms"] == pytest.approx(30.0)
    assert s["jitter_std_ms"] == pytest.approx(math.sqrt(2 * 100 / 99), rel=1e-6)
    # Without a target the median (20 ms) stands in.
    assert cadence_summary(times)["overruns"] == 1


def test_cadence_rejects_bad_input():
    with pytest.raises(StatsError, match="at least 2"):
        cadence_summary([1.0])
    with pytest.raises(StatsError, match=r"backwards|>= 0"):
        cadence_summary([1.0, 0.5])
    with pytest.raises(StatsError):
        period_summary([])
