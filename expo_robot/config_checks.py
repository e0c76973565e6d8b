"""Types and ranges of config values, checked as soon as a config is composed, before any process starts.

A bad value (`robot.fps=abc`, `runtime.obs_port=99999`, a negative timeout) is one line naming the key, the value and
what is expected, instead of a traceback deep in a driver or a socket that silently binds something else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig


@dataclass(frozen=True)
class Rule:
    expected: str  # what the operator reads after "expected"
    ok: Callable[[Any], bool]
    nullable: bool = False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


PORT = Rule("an integer port 1-65535", lambda v: _integer(v) and 1 <= v <= 65535)
POSITIVE = Rule("a number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE = Rule("a number >= 0", lambda v: _number(v) and v >= 0)
COUNT = Rule("an integer >= 1", lambda v: _integer(v) and v >= 1)
NON_NEGATIVE_COUNT = Rule("an integer >= 0", lambda v: _integer(v) and v >= 0)
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
POSITIVE_PER_DIM = Rule(
    "a number > 0 or a list of them (one per action dim)",
    lambda v: (_number(v) and v > 0) or (isinstance(v, ListConfig) and all(_number(x) and x > 0 for x in v)),
)

SAFETY = {
    "max_step_change": POSITIVE_PER_DIM,
    "max_ee_speed_mps": Rule(POSITIVE.expected, POSITIVE.ok, nullable=True),
    "startup_mode": Rule("ramp or refuse", lambda v: v in ("ramp", "refuse")),
    "startup_ramp_steps": COUNT,
    "startup_max_jump": POSITIVE,
    "watchdog_hold_periods": POSITIVE,
    "watchdog_min_hold_s": NON_NEGATIVE,
    "watchdog_safe_state_s": NON_NEGATIVE,
    "max_episode_steps": COUNT,
    "max_episode_time_s": POSITIVE,
}
RULES: dict[str, Rule] = {
    "seed": Rule("an integer", _integer, nullable=True),
    **{f"runtime.{name}_port": PORT for name in ("obs", "cmd", "weights", "transitions")},
    "runtime.heartbeat_s": POSITIVE,
    "runtime.recv_timeout_s": POSITIVE,
    "runtime.rebuild_after_s": POSITIVE,
    "runtime.obs_hwm": COUNT,
    "robot.fps": POSITIVE,
    "robot.max_chunk_len": COUNT,
    "task.max_episode_steps": COUNT,
    **{f"safety.{k}": rule for k, rule in SAFETY.items()},
    **{f"robot.safety.{k}": rule for k, rule in SAFETY.items()},  # a robot's own overrides
    "session.env_steps": NON_NEGATIVE_COUNT,
    "session.eval_episodes": NON_NEGATIVE_COUNT,
    "session.pretrain_steps": NON_NEGATIVE_COUNT,
    "session.updates_per_chunk": NON_NEGATIVE_COUNT,
    "session.weights_every": COUNT,
    "session.checkpoint_every": COUNT,
    "session.learner_timeout_s": Rule(  # the learner's heartbeat is learner.STATUS_EVERY_S = 0.2 s
        "a number >= 1 (five learner heartbeats: a shorter one counts a working learner as lost)",
        lambda v: _number(v) and v >= 1,
    ),
    "session.final_store_timeout_s": NON_NEGATIVE,
    "session.on_learner_loss": Rule("continue or hold", lambda v: v in ("continue", "hold")),
    "session.max_policy_lag_steps": NON_NEGATIVE_COUNT,
    "session.realtime_lead_steps": NON_NEGATIVE_COUNT,
    "session.robots": Rule("an integer >= 1 (the number of driver + actor pairs)", COUNT.ok),
    "runtime.robot_port_stride": Rule("a non-zero integer", lambda v: _integer(v) and v != 0),
    "session.offline.workers": COUNT,
    "session.record_episodes": BOOL,
    "session.transitions.max_abs_reward": POSITIVE,
    "session.transitions.max_abs_state": POSITIVE,
    "session.transitions.max_actors": Rule("an integer 1-4096", lambda v: _integer(v) and 1 <= v <= 4096),
    **{
        f"runtime.scheduling.{role}.threads": Rule(COUNT.expected, COUNT.ok, nullable=True)
        for role in ("driver", "actor", "learner")
    },
    "trust_checkpoint": BOOL,  # (a string "no" would be true: pickles would load)
    "agent.fast": BOOL,
    "agent.compile": BOOL,
    "agent.backup_bf16": BOOL,
    "session.first_weights_timeout_s": POSITIVE,
    "eval.episodes": NON_NEGATIVE_COUNT,
    "eval.driver_start_timeout_s": POSITIVE,
}
_ABSENT = object()


def config_problems(cfg: DictConfig) -> list[str]:
    """One 'key=value: expected ...' per value that breaks its rule; keys a config does not have are skipped."""
    problems = []
    for key, rule in RULES.items():
        value = _lookup(cfg, key)
        if value is _ABSENT or (value is None and rule.nullable) or (value is not None and rule.ok(value)):
            continue
        problems.append(
            f"{key}={_show(value)}: expected {rule.expected}{' or null' if rule.nullable else ''}"
        )
    return problems


def check_config(cfg: DictConfig) -> DictConfig:
    """cfg unchanged, or ConfigError listing every bad value on one line."""
    from expo_robot.config import ConfigError  # (config.py calls this module: imported here, not at the top)

    problems = config_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def _lookup(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
