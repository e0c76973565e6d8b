"""Clocks and the loop timer. The driver takes a clock object, so tests can use a fake one and pacing is exact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class FakeClock:
    """A clock that only moves when told (or when something sleeps on it)."""

    t: float = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class LoopStats:
    """Cadence of a fixed-rate loop: measured period, jitter (vs the target), overruns (ticks later than a period)."""

    target_s: float
    ticks: int = 0
    overruns: int = 0
    last_s: float = 0.0
    _sum: float = 0.0
    _sq_err: float = 0.0
    _max_err: float = 0.0
    _prev: float | None = field(default=None, repr=False)

    def tick(self, now: float) -> None:
        if self._prev is not None:
            period = now - self._prev
            err = period - self.target_s
            self.ticks += 1
            self.last_s = period
            self._sum += period
            self._sq_err += err * err
            self._max_err = max(self._max_err, abs(err))
            if err > self.target_s:
                self.overruns += 1
        self._prev = now

    def restart(self) -> None:
        """The tick grid starts again (a reset): the gap across it is the reset's time, not a tick period."""
        self._prev = None

    def summary(self) -> dict:
        n = max(1, self.ticks)
        return {
            "period_ms": 1000 * self._sum / n,
            "jitter_ms": 1000 * (self._sq_err / n) ** 0.5,
            "max_jitter_ms": 1000 * self._max_err,
            "overruns": self.overruns,
            "ticks": self.ticks,
            "target_ms": 1000 * self.target_s,
        }


class Deadline:
    """Fixed-rate deadlines: next() gives the next tick time; a late loop skips missed ticks instead of bursting."""

    def __init__(self, period_s: float, clock: MonotonicClock | FakeClock):
        self.period, self.clock = period_s, clock
        self.restart(clock.now())

    def restart(self, t: float) -> None:
        """A new grid of ticks at t + k periods (the driver restarts it when an episode starts)."""
        self.next_t = t + self.period

    def remaining(self) -> float:
        return self.next_t - self.clock.now()

    def advance(self) -> None:
        now = self.clock.now()
        self.next_t += self.period
        if self.next_t < now:  # overran by more than a period: realign rather than catch up
            self.next_t = now + self.period
