"""Statistics for honest numbers: success-rate intervals, comparing two policies, latency and loop cadence.

Success rates from a few dozen robot episodes are noisy, so every rate we report carries a 95% Wilson score interval
(good coverage even at 0/n or n/n, unlike the normal approximation), and "is B better than A" is answered with
Fisher's exact test (exact at small counts) next to Newcombe's hybrid score interval for the difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np


class StatsError(ValueError):
    """Counts or samples that cannot describe a real run (e.g. more successes than episodes)."""


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise StatsError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise StatsError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion. n = 0 gives (0, 1): nothing is known."""
    _check_counts(successes, n)
    z = _z(confidence)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def fisher_exact_p(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided Fisher exact test p-value for the 2x2 table [[s1, n1-s1], [s2, n2-s2]].

    Sums the probabilities of all tables with the same margins that are no more likely than the observed one.
    Integer arithmetic (math.comb), so it is exact for any count a robot session can produce.
    """
    _check_counts(s1, n1)
    _check_counts(s2, n2)
    k = s1 + s2
    if n1 == 0 or n2 == 0 or k in (0, n1 + n2):
        return 1.0

    def weight(x: int) -> int:  # proportional to the hypergeometric probability of s1 = x
        return math.comb(n1, x) * math.comb(n2, k - x)

    observed = weight(s1)
    support = range(max(0, k - n2), min(n1, k) + 1)
    tail = sum(w for w in map(weight, support) if w <= observed)
    return min(1.0, tail / math.comb(n1 + n2, k))


def two_proportion_z_p(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (large-sample approximation; for reference)."""
    _check_counts(s1, n1)
    _check_counts(s2, n2)
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:
        return 1.0
    z = (s2 / n2 - s1 / n1) / se
    return 2.0 * (1.0 - NormalDist().cdf(abs(z)))


def newcombe_interval(s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10, 1998) for the difference rate2 - rate1."""
    l1, u1 = wilson_interval(s1, n1, confidence)
    l2, u2 = wilson_interval(s2, n2, confidence)
    p1 = s1 / n1 if n1 else 0.0
    p2 = s2 / n2 if n2 else 0.0
    d = p2 - p1
    low = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return max(-1.0, low), min(1.0, high)


def compare_rates(s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95) -> dict:
    """Compare success rate 2 (e.g. fine-tuned) with rate 1 (e.g. BC). `difference` is rate2 - rate1.

    `significant` is Fisher's exact test at alpha = 1 - confidence; the Newcombe interval is given for the size of
    the effect (the two agree in almost all cases; near the boundary the exact test decides).
    """
    _check_counts(s1, n1)
    _check_counts(s2, n2)
    if n1 == 0 or n2 == 0:
        raise StatsError(
            f"cannot compare rates with an empty side (n1={n1}, n2={n2}); run some episodes first"
        )
    alpha = 1.0 - confidence
    low, high = newcombe_interval(s1, n1, s2, n2, confidence)
    p_value = fisher_exact_p(s1, n1, s2, n2)
    return {
        "rate1": s1 / n1,
        "rate2": s2 / n2,
        "ci1": wilson_interval(s1, n1, confidence),
        "ci2": wilson_interval(s2, n2, confidence),
        "difference": s2 / n2 - s1 / n1,
        "difference_ci": (low, high),
        "confidence": confidence,
        "p_value": p_value,
        "test": "Fisher exact, two-sided",
        "z_test_p_value": two_proportion_z_p(s1, n1, s2, n2),
        "significant": p_value < alpha,
    }


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """{"p50": ..., "p90": ..., "p99": ...} with linear interpolation; NaN for an empty sample."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {f"p{q:g}": math.nan for q in qs}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(arr, qs))}


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """n, mean, p50/p90/p99 and max of latencies given in milliseconds (keys end in _ms)."""
    arr = np.asarray(latencies_ms, dtype=float)
    if arr.size == 0:
        return {"n": 0, "mean_ms": math.nan, "p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan,
                "max_ms": math.nan}  # fmt: skip
    out: dict[str, float] = {"n": int(arr.size), "mean_ms": float(arr.mean())}
    out.update({f"{k}_ms": v for k, v in percentiles(arr).items()})
    out["max_ms"] = float(arr.max())
    return out


def cadence_summary(
    timestamps_s: Sequence[float], target_period_s: float | None = None, tolerance: float = 0.1
) -> dict[str, float]:
    """Loop cadence from the monotonic times at which each loop tick started (one uninterrupted run)."""
    t = np.asarray(timestamps_s, dtype=float)
    if t.size < 2:
        raise StatsError(f"cadence needs at least 2 tick timestamps, got {t.size}")
    return period_summary(np.diff(t), target_period_s, tolerance)


def period_summary(
    periods_s: Sequence[float], target_period_s: float | None = None, tolerance: float = 0.1
) -> dict[str, float]:
    """Loop cadence from measured tick-to-tick periods (use this across episodes: resets are not overruns).

    period mean/std (std = jitter), p99 and max in ms; rate_hz; overrun_pct = share of periods longer than
    target * (1 + tolerance). Without a target, the median period stands in for it.
    """
    periods = np.asarray(periods_s, dtype=float)
    if periods.size == 0:
        raise StatsError("cadence needs at least one measured period")
    if np.any(periods < 0) or not np.all(np.isfinite(periods)):
        raise StatsError("loop periods must be finite and >= 0; pass monotonic-clock times in tick order")
    target = float(np.median(periods)) if target_period_s is None else float(target_period_s)
    mean = float(periods.mean())
    overruns = int(np.count_nonzero(periods > target * (1.0 + tolerance)))
    return {
        "periods": int(periods.size),
        "target_period_ms": target * 1e3,
        "period_mean_ms": mean * 1e3,
        "jitter_std_ms": float(periods.std()) * 1e3,
        "period_p99_ms": float(np.percentile(periods, 99)) * 1e3,
        "period_max_ms": float(periods.max()) * 1e3,
        "rate_hz": 1.0 / mean if mean > 0 else math.inf,
        "overruns": overruns,
        "overrun_pct": 100.0 * overruns / periods.size,
    }
