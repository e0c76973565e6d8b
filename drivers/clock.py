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
    """Cadence of a fixed-rate loop: measured period, jitter (vs the target), overruns (ticks later than a period).

    Each overrun is put down to one cause, from what the loop timed itself:
    - `robot_overruns`: the device's own step in the previous tick (`robot_s`; None: no step) took longer than a
      period (a simulator slower than the rate, a slow bus);
    - `wakeup_overruns`: the loop was idle, waiting for its tick, and ran more than a period after it was due
      (`wakeup_late_s`): the CPU was not given to it. Under the normal policy that can be any process beside it;
      under SCHED_FIFO only the kernel (its real-time throttling, interrupts) or the host (a virtual machine's
      stolen time);
    - the rest: the loop's own work (handling commands, the safety filter, publishing), device calls other than
      the step (hold), or two causes each under a period together. Counted as the stack's.
    """

    target_s: float
    ticks: int = 0
    overruns: int = 0
    robot_overruns: int = 0
    wakeup_overruns: int = 0
    last_s: float = 0.0
    _sum: float = 0.0
    _sq_err: float = 0.0
    _max_err: float = 0.0
    _robot_sum: float = 0.0
    _robot_steps: int = 0
    _robot_max: float = 0.0
    _wakeup_max: float = 0.0
    _prev: float | None = field(default=None, repr=False)

    def tick(self, now: float, robot_s: float | None = None, wakeup_late_s: float = 0.0) -> None:
        if self._prev is not None:
            if robot_s is not None:
                self._robot_steps += 1
                self._robot_sum += robot_s
                self._robot_max = max(self._robot_max, robot_s)
            self._wakeup_max = max(self._wakeup_max, wakeup_late_s)
            period = now - self._prev
            err = period - self.target_s
            self.ticks += 1
            self.last_s = period
            self._sum += period
            self._sq_err += err * err
            self._max_err = max(self._max_err, abs(err))
            if err > self.target_s:
                self.overruns += 1
                if robot_s is not None and robot_s > self.target_s:
                    self.robot_overruns += 1
                elif wakeup_late_s > self.target_s:
                    self.wakeup_overruns += 1
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
            "robot_overruns": self.robot_overruns,
            "robot_step_ms": 1000 * self._robot_sum / max(1, self._robot_steps),  # per step, not per tick
            "max_robot_step_ms": 1000 * self._robot_max,
            "wakeup_overruns": self.wakeup_overruns,
            "max_wakeup_late_ms": 1000 * self._wakeup_max,
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
