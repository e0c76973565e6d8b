"""The safety layer: every command passes through here before it reaches a robot. It lives in the driver and
depends on no other process being alive.

Six layers (../ARCHITECTURE.md), configured by configs/safety/*.yaml with per-robot overrides (robot.safety):
1. validation (shape, finite) and clamping to action bounds, per-axis speed and position limits;
2. per-step change limit, and the workspace box for EE-delta robots: the next end-effector position stays in the box,
   with a braking margin so the change limit never has to be broken to stop at a wall;
3. start-up guard: the first command of an episode (or after a hold) far from the hold command is ramped or refused;
4. watchdog: a silent policy process means hold, then the safe state;
5. e-stop latch, cleared only by an explicit reset;
6. episode step/time limits; NaN/Inf guard (validation, again, on what the network delivered).
Every intervention is counted by reason and published with the observation.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
EPS = 1e-6
STATES = ("ok", "hold", "safe_state", "estop", "episode_end")


class SafetyConfigError(ValueError):
    """A safety setting is missing or wrong; the message names the key."""


@dataclass(frozen=True)
class SafetyConfig:
    max_step_change: float | list[float] = 0.5
    max_ee_speed_mps: float | None = None
    position_limits: dict | None = None
    startup_mode: str = "ramp"
    startup_ramp_steps: int = 5
    startup_max_jump: float = 0.25
    watchdog_hold_periods: float = 1.0
    watchdog_min_hold_s: float = 0.03
    watchdog_safe_state_s: float = 2.0
    max_episode_steps: int = 1000
    max_episode_time_s: float = 600.0

    @classmethod
    def from_config(cls, safety_cfg: Any, robot_cfg: Any | None = None) -> SafetyConfig:
        """configs/safety merged with the robot's `safety:` overrides; unknown keys are errors."""
        merged = dict(safety_cfg or {})
        merged.update(dict((robot_cfg.get("safety") if robot_cfg is not None else None) or {}))
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - valid)
        if unknown:
            raise SafetyConfigError(f"unknown safety keys {unknown}; valid keys: {', '.join(sorted(valid))}")
        if merged.get("startup_mode", "ramp") not in ("ramp", "refuse"):
            raise SafetyConfigError("safety.startup_mode must be 'ramp' or 'refuse'")
        plain = {
            k: (list(v) if hasattr(v, "__len__") and not isinstance(v, (str, dict)) else v)
            for k, v in merged.items()
        }
        if plain.get("position_limits") is not None:
            plain["position_limits"] = {k: list(v) for k, v in dict(plain["position_limits"]).items()}
        return cls(**plain)


@dataclass
class Limits:
    """Static per-robot limits, in action units (per step)."""

    low: np.ndarray
    high: np.ndarray
    max_change: np.ndarray
    ee_step_m: float | None = None
    box_low: np.ndarray | None = None
    box_high: np.ndarray | None = None

    @classmethod
    def build(cls, cfg: SafetyConfig, robot: Any, workspace: Any | None) -> Limits:
        low, high = robot.action_low.astype(np.float64), robot.action_high.astype(np.float64)
        if cfg.position_limits:
            low = np.maximum(low, np.asarray(cfg.position_limits["low"], np.float64))
            high = np.minimum(high, np.asarray(cfg.position_limits["high"], np.float64))
        if cfg.max_ee_speed_mps is not None and robot.ee_step_m:
            per_axis = cfg.max_ee_speed_mps / (robot.fps * robot.ee_step_m)
            low[:3], high[:3] = np.maximum(low[:3], -per_axis), np.minimum(high[:3], per_axis)
        if np.any(low > high):
            raise SafetyConfigError(f"safety limits leave no admissible action: low {low} > high {high}")
        change = np.broadcast_to(np.asarray(cfg.max_step_change, np.float64), low.shape).copy()
        box = (None, None)
        if workspace and robot.ee_step_m:
            box = (np.asarray(workspace["low"], np.float64), np.asarray(workspace["high"], np.float64))
        return cls(low, high, change, robot.ee_step_m, *box)


def brake_cap(room: float, c: float) -> float:
    """Largest delta u >= 0 such that moving u, then u - c, u - 2c, ... until stopped covers at most `room`.

    With per-step change limit c, keeping u <= brake_cap(distance to the wall) means the robot can always stop at
    the wall without breaking the change limit.
    """
    if room <= 0:
        return 0.0
    if not math.isfinite(c) or c <= 0:  # no change limit: the robot can stop at once
        return room
    n = 0
    while True:  # u in (n c, (n+1) c]: distance = (n+1) u - c n (n+1) / 2
        u = (room + c * n * (n + 1) / 2) / (n + 1)
        if u <= (n + 1) * c:
            return u
        n += 1


class ActionFilter:
    """Layers 1-3 for one action at a time. Returns (action or None if refused, reasons)."""

    def __init__(self, limits: Limits, cfg: SafetyConfig):
        self.limits, self.cfg = limits, cfg
        self.prev: np.ndarray | None = None
        self._anchor: np.ndarray | None = None  # start-up guard armed at this command
        self._ramp_i = 0

    def arm(self, hold_action: np.ndarray) -> None:
        """New episode or leaving a hold: the next command starts from the hold command, behind the guard."""
        self.prev = np.asarray(hold_action, np.float64).copy()
        self._anchor, self._ramp_i = self.prev.copy(), 0

    def __call__(self, action: Any, ee: np.ndarray | None = None) -> tuple[np.ndarray | None, list[str]]:
        lim = self.limits
        a = np.asarray(action, dtype=np.float64)
        if a.shape != lim.low.shape or not np.isfinite(a).all():
            return None, ["invalid_command"]
        reasons: list[str] = []
        clamped = np.clip(a, lim.low, lim.high)
        if not np.array_equal(clamped, a):
            reasons.append("clamp")
        self._fill_unknown(clamped)
        a = self._startup(clamped, reasons)
        if a is None:
            return None, reasons
        a = self._rate_and_box(a, ee, reasons)
        self.prev = a
        return a.astype(np.float32), reasons

    def _fill_unknown(self, a: np.ndarray) -> None:
        """Hold dims unknown at arming (NaN: e.g. an absolute gripper before its first command) take the command."""
        for ref in (self.prev, self._anchor):
            if ref is not None:
                unknown = np.isnan(ref)
                ref[unknown] = a[unknown]

    def _startup(self, a: np.ndarray, reasons: list[str]) -> np.ndarray | None:
        if self._anchor is None:
            return a
        n = max(1, self.cfg.startup_ramp_steps)
        if self._ramp_i == 0 and np.max(np.abs(a - self._anchor)) <= self.cfg.startup_max_jump:
            self._anchor = None  # close to the hold command: nothing to guard
            return a
        if self.cfg.startup_mode == "refuse" and self._ramp_i == 0:
            reasons.append("startup_refused")
            return None
        self._ramp_i += 1
        out = self._anchor + (a - self._anchor) * min(1.0, self._ramp_i / n)
        if self._ramp_i >= n:
            self._anchor = None
        reasons.append("startup_ramp")
        return out

    def _rate_and_box(self, a: np.ndarray, ee: np.ndarray | None, reasons: list[str]) -> np.ndarray:
        lim = self.limits
        lo, hi = lim.low.copy(), lim.high.copy()
        if self.prev is not None:
            lo, hi = np.maximum(lo, self.prev - lim.max_change), np.minimum(hi, self.prev + lim.max_change)
        out = np.clip(a, lo, hi)
        if not np.allclose(out, a, atol=EPS):
            reasons.append("rate_limit")
        if lim.box_low is None or ee is None or lim.ee_step_m is None:
            return out
        box_lo, box_hi = self._box_interval(np.asarray(ee, np.float64))
        boxed = out.copy()
        feasible_lo, feasible_hi = np.maximum(lo[:3], box_lo), np.minimum(hi[:3], box_hi)
        ok = feasible_lo <= feasible_hi + EPS
        # Where the box and the change limit conflict (never with exact kinematics), the box wins.
        fb_lo = np.where(ok, feasible_lo, np.maximum(lim.low[:3], box_lo))
        fb_hi = np.where(ok, feasible_hi, np.minimum(lim.high[:3], box_hi))
        boxed[:3] = np.clip(out[:3], fb_lo, np.maximum(fb_lo, fb_hi))
        boxed[:3] = np.clip(boxed[:3], lim.low[:3], lim.high[:3])
        if not ok.all():
            reasons.append("workspace_override")
        elif not np.allclose(boxed, out, atol=EPS):
            reasons.append("workspace")
        return boxed

    def _box_interval(self, ee: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lim, s = self.limits, self.limits.ee_step_m
        c = lim.max_change[:3]
        up = np.array([brake_cap((lim.box_high[i] - ee[i]) / s, c[i]) for i in range(3)])
        down = np.array([brake_cap((ee[i] - lim.box_low[i]) / s, c[i]) for i in range(3)])
        return -down, up


@dataclass
class Status:
    state: str = "ok"
    reason: str = ""


class SafetyMonitor:
    """Layers 4-6 as a small state machine: ok -> hold -> safe_state (watchdog), estop (latched), episode_end."""

    def __init__(self, cfg: SafetyConfig, fps: float):
        self.cfg = cfg
        # never below the floor: at a high rate one period is shorter than an ordinary scheduling hiccup of a busy
        # policy process (at 50 Hz the floor is 1.5 periods, and a dead policy is still held within 2)
        self.hold_after_s = max(cfg.watchdog_hold_periods / fps, cfg.watchdog_min_hold_s)
        self.status = Status("ok", "")
        self.counters: Counter = Counter()
        self._silent_since: float | None = None

    @property
    def state(self) -> str:
        return self.status.state

    def _enter(self, state: str, reason: str) -> None:
        if self.status.state != state or self.status.reason != reason:
            log.warning("safety: %s (%s)", state, reason) if state != "ok" else log.info(
                "safety: ok (%s)", reason
            )
            if state != "ok":
                self.counters[state] += 1
        self.status = Status(state, reason)

    def count(self, reasons: list[str]) -> None:
        for r in reasons:
            self.counters[r] += 1

    def watchdog(self, now: float, last_alive: float | None) -> str | None:
        """Update from liveness; returns the new state when it changed."""
        before = self.state
        if self.state in ("estop", "episode_end"):
            return None
        silent = last_alive is None or now - last_alive > self.hold_after_s
        if not silent:
            self._silent_since = None
            if self.state == "hold":
                self._enter("ok", "policy alive again")
        elif last_alive is not None:
            since = now - last_alive
            if since > self.cfg.watchdog_safe_state_s and self.state != "safe_state":
                self._enter("safe_state", f"watchdog: policy silent for {since:.2f} s")
            elif self.state == "ok":
                self._enter("hold", f"watchdog: policy silent for {since * 1000:.0f} ms")
        return self.state if self.state != before else None

    def estop(self, reason: str) -> None:
        self._enter("estop", f"e-stop: {reason}")

    def clear_estop(self) -> bool:
        if self.state != "estop":
            return False
        self._enter("hold", "e-stop cleared by operator; waiting for commands")
        return True

    def shutdown(self, reason: str = "driver shutting down") -> None:
        self._enter("safe_state", reason)

    def episode_end(self, reason: str) -> None:
        if self.state != "estop":
            self._enter("episode_end", reason)

    def new_episode(self) -> bool:
        """A reset starts an episode unless the e-stop is latched (a reset moves the robot)."""
        if self.state == "estop":
            return False
        self._enter("ok", "new episode")
        return True

    def episode_limit(self, step: int, elapsed_s: float) -> str | None:
        if step >= self.cfg.max_episode_steps:
            return f"episode limit: {step} steps"
        if elapsed_s >= self.cfg.max_episode_time_s:
            return f"episode limit: {elapsed_s:.0f} s"
        return None

    def snapshot(self) -> dict:
        return {"state": self.status.state, "reason": self.status.reason, "counters": dict(self.counters)}
