"""Numbers of a run, computed once and shared by the plots and the reports.

An **evaluation result** is the dict the eval command produces for one policy:

    {
      "label": "bc",                      # short name for tables and legends
      "policy": "base",                   # base | expo | a baseline name
      "checkpoint": "runs/.../ckpt",      # what was evaluated
      "config": {"robot": "sim_panda", ...},   # highlights shown in the report
      "target_period_s": 0.1,             # control period
      "episodes": [{"success": True, "length": 23, "stop_reason": "success", "interventions": 0,
                    "return": 1.0}, ...],
      "loop_period_ms": [...],            # measured tick-to-tick periods of the control loop
      "policy_latency_ms": [...],         # observation in -> chunk out, per policy step
    }

Stop reasons are free strings; "success" ends a successful episode, "timeout" an episode limit, "estop" the e-stop
latch, "safety:<layer>" a safety-layer stop (e.g. "safety:workspace"). A safety stop or e-stop is always a failure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from expo_robot.observe import metrics as m
from expo_robot.observe.stats import StatsError, latency_summary, period_summary, wilson_interval

SUCCESS_REASON = "success"


def is_safety_stop(reason: str) -> bool:
    return reason == "estop" or reason.startswith("safety")


def rate(successes: int, n: int) -> dict:
    """{"successes", "n", "rate", "ci95": [low, high]}: a success rate as every report shows it."""
    return {
        "successes": int(successes),
        "n": int(n),
        "rate": successes / n if n else math.nan,
        "ci95": list(wilson_interval(int(successes), int(n))),
    }


def _check_episode(i: int, ep: Mapping) -> None:
    missing = [k for k in ("success", "length", "stop_reason") if k not in ep]
    if missing:
        raise StatsError(f"eval episode {i} lacks {missing}; each episode needs success, length, stop_reason")
    if ep["success"] and is_safety_stop(str(ep["stop_reason"])):
        raise StatsError(
            f"eval episode {i} is marked successful but stopped with '{ep['stop_reason']}'; "
            "a safety stop or e-stop must end the episode as a failure"
        )


def summarize_eval(result: Mapping) -> dict:
    """Success rate with its 95% Wilson interval, stops by reason, interventions, lengths, cadence, latency."""
    episodes: Sequence[Mapping] = result.get("episodes", [])
    for i, ep in enumerate(episodes):
        _check_episode(i, ep)
    successes = sum(bool(ep["success"]) for ep in episodes)
    lengths = np.asarray([ep["length"] for ep in episodes], dtype=float)
    interventions = [int(ep.get("interventions", 0)) for ep in episodes]
    stops = Counter(str(ep["stop_reason"]) for ep in episodes)
    target = result.get("target_period_s")
    periods = np.asarray(result.get("loop_period_ms", []), dtype=float) / 1e3
    returns = [float(ep["return"]) for ep in episodes if "return" in ep]
    return {
        "label": result.get("label", "policy"),
        "policy": result.get("policy"),
        "checkpoint": result.get("checkpoint"),
        "config": dict(result.get("config", {})),
        "success": rate(successes, len(episodes)),
        "stops": dict(stops.most_common()),
        "safety_stops": sum(c for r, c in stops.items() if is_safety_stop(r)),
        "interventions": {
            "total_steps": sum(interventions),
            "episodes_with": sum(1 for x in interventions if x > 0),
        },
        "episode_length": {
            "mean": float(lengths.mean()) if lengths.size else math.nan,
            "median": float(np.median(lengths)) if lengths.size else math.nan,
            "min": float(lengths.min()) if lengths.size else math.nan,
            "max": float(lengths.max()) if lengths.size else math.nan,
        },
        "return_mean": float(np.mean(returns)) if returns else None,
        "loop": period_summary(periods, target) if periods.size else None,
        "policy_latency": latency_summary(result.get("policy_latency_ms", [])),
    }


def _episode_records(records: Sequence[Mapping]) -> list[Mapping]:
    return sorted(
        (
            r
            for r in records
            if r.get("source") == "actor" and isinstance(r.get(m.EPISODE_SUCCESS), int | float)
        ),
        key=lambda r: r["step"],
    )


def _eval_points(records: Sequence[Mapping]) -> list[dict]:
    points = [
        {"step": int(r["step"]), **rate(int(r[m.EVAL_SUCCESSES]), int(r[m.EVAL_EPISODES]))}
        for r in records
        if r.get("source") == "eval"
        and isinstance(r.get(m.EVAL_EPISODES), int | float)
        and r[m.EVAL_EPISODES]
    ]
    return sorted(points, key=lambda p: p["step"])


def summarize_finetune(
    records: Sequence[Mapping], window: int = 20, target_period_s: float | None = None
) -> dict:
    """What a fine-tune session's metrics say: steps, duration, success before/after, timing, safety events.

    Success before/after are the first and last periodic evaluations (eval source) when there are at least two,
    otherwise the first and last `window` training episodes (which include exploration).
    """
    episodes = _episode_records(records)
    evals = _eval_points(records)
    times = [float(r["time"]) for r in records]
    wins = [float(r[m.EPISODE_SUCCESS]) > 0.5 for r in episodes]
    first, last = wins[:window], wins[-window:]
    if len(evals) >= 2:
        before, after, basis = evals[0], evals[-1], "evaluation episodes"
    else:
        before, after = rate(sum(first), len(first)), rate(sum(last), len(last))
        basis = f"first/last {window} training episodes"
    lengths = [float(r.get(m.EPISODE_LENGTH) or 0) for r in episodes]
    helped = [float(r.get(m.EPISODE_INTERVENTIONS) or 0) for r in episodes]
    _, periods = m.series(records, m.LOOP_PERIOD_MS)
    _, latencies = m.series(records, m.POLICY_LATENCY_MS)
    _, updates = m.series(records, m.LEARNER_UPDATES, "learner")
    _, buffer = m.series(records, m.BUFFER_SIZE)
    safety = Counter(str(r[m.SAFETY_EVENT]) for r in records if r.get(m.SAFETY_EVENT) is not None)
    duration = max(times) - min(times) if times else 0.0
    return {
        "env_steps": max((int(r["step"]) for r in records), default=0),
        "duration_s": duration,
        "episodes": len(episodes),
        "training_successes": rate(sum(wins), len(wins)),
        "success_before": before,
        "success_after": after,
        "success_basis": basis,
        "evaluations": evals,
        "intervention_rate": sum(helped) / sum(lengths) if sum(lengths) else 0.0,
        "learner_updates": int(max(updates)) if updates else 0,
        "updates_per_s": max(updates) / duration if updates and duration > 0 else 0.0,
        "buffer_size": int(buffer[-1]) if buffer else 0,
        "loop": period_summary(np.asarray(periods) / 1e3, target_period_s) if periods else None,
        "policy_latency": latency_summary(latencies) if latencies else None,
        "driver_loop": _driver_loop(records),
        "safety_events": dict(safety.most_common()),
    }


def _driver_loop(records: Sequence[Mapping]) -> dict | None:
    """The driver's own tick cadence as the actor last relayed it (real time: late ticks, the robot step's time)."""
    last = next((r for r in reversed(records) if "driver/ticks" in r), None)
    if last is None:
        return None
    return {k.removeprefix("driver/"): last[k] for k in last if k.startswith("driver/")}
