"""`expo-robot eval`: a checkpoint's fixed policy on the robot, through the driver's full safety layer, with a report.

    expo-robot eval eval.policy=runs/<date>/<finetune run> eval.episodes=20    # its checkpoints/latest.safetensors
    expo-robot eval eval.policy=runs/X eval.compare=runs/X/checkpoints/pretrained.safetensors eval.compare_act=base
                                                       # fine-tuned EXPO vs the BC start (the base alone)
    expo-robot eval eval.policy=runs/X eval.compare=runs/X eval.compare_act=base   # OTF EXPO vs its own base alone

Nothing learns. Every policy plays the same scenes (seeds EVAL_SEED_OFFSET + i), so a comparison is paired. The
agent is built from the config stored in the checkpoint unless `agent=`/`agent.*` is given. An episode ended by a
safety stop or the e-stop is a failure with its reason (names in expo_robot/observe/summary.py). The driver is started
here (`expo-robot driver`, the robot config decides what it drives) unless eval.start_driver=false. Writes
eval_report.md, eval_report.json and eval.png into runs/<date>/<time>_eval_<robot>_<task>/.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from expo_robot.agent import AGENTS, AgentStateError, agent_params
from expo_robot.config import ConfigError, expand_override, make_run_dir, split_words
from expo_robot.observe import metrics as M
from expo_robot.observe.live import LiveStatus
from expo_robot.observe.report import EVAL_PLOT, write_eval_report
from expo_robot.observe.stats import latency_summary
from expo_robot.runtime import scheduling
from expo_robot.runtime.actor import EVAL_SEED_OFFSET, Actor, EpisodeResult
from expo_robot.runtime.checkpoint import CheckpointError, checkpoint_file, load_checkpoint
from expo_robot.runtime.launcher import Launcher
from expo_robot.transport.protocol import PeerTimeoutError
from expo_robot.transport.robot_client import RobotClient

log = logging.getLogger(__name__)
ACTS = ("agent", "base")
BASE_MODULES = ("norm", "base", "base_ema")  # what BCAgent holds; EXPO and best-of-N share it
STOPPED = "session stopped"  # Actor's abort reason on Ctrl-C: that episode is not counted


class EvalError(ConfigError):
    """The checkpoint or the eval settings cannot be evaluated as asked; the message says what to change."""


@dataclass
class Policy:
    """One thing to evaluate: a checkpoint, how it acts, and the agent config that fits it."""

    label: str
    act: str  # agent | base
    path: Path
    agent_cfg: DictConfig
    state: dict  # agent state_dict to load
    trained: dict  # highlights of the checkpoint (robot, updates, env steps)


# ---- checkpoints ----
def _stored_config(ckpt: dict, path: Path) -> DictConfig:
    text = ckpt.get("config")
    if not text:
        raise EvalError(
            f"{path} stores no config, so its agent is unknown: name it, e.g. agent=expo profile=<as trained>"
        )
    return OmegaConf.create(text)


def _base_only(agent_cfg: DictConfig, state: dict, path: Path) -> tuple[DictConfig, dict]:
    """The checkpoint's base policy alone, as the BC agent (same base config, same weights)."""
    missing = [m for m in BASE_MODULES if m not in state.get("modules", {})]
    if missing:
        raise EvalError(
            f"eval.act=base: {path} ({agent_cfg.get('name')}) has no base policy (lacks {missing}); "
            "only EXPO, best_of_n and BC checkpoints have one"
        )
    cfg = agent_cfg.copy()
    with open_dict(cfg):
        cfg.name = "bc"
    base_state = {
        "agent": "BCAgent",
        "modules": {k: state["modules"][k] for k in BASE_MODULES},
        "optims": {k: v for k, v in state.get("optims", {}).items() if k == "base"},
        "counters": state.get("counters", {}),
        "rng": state["rng"],
    }
    return cfg, base_state


def load_policy(cfg: DictConfig, path: str | Path, act: str, agent_overridden: bool) -> Policy:
    """Read a checkpoint; its stored agent config is used unless the operator gave agent overrides."""
    if act not in ACTS:
        raise EvalError(f"act must be one of {', '.join(ACTS)} (got '{act}')")
    file = checkpoint_file(path)
    ckpt = load_checkpoint(file, trust=bool(cfg.get("trust_checkpoint", False)))
    if "agent" not in ckpt:
        raise CheckpointError(
            f"{file} holds no agent state (keys: {sorted(ckpt)}); is it a learner checkpoint?"
        )
    stored = _stored_config(ckpt, file) if not agent_overridden or ckpt.get("config") else None
    agent_cfg = cfg.agent if agent_overridden else stored.agent
    state = ckpt["agent"]
    if act == "base":
        agent_cfg, state = _base_only(agent_cfg, state, file)
    _check_agent_type(agent_cfg, state, file)
    counters = ckpt.get("counters", {})
    trained = {
        "robot": stored.robot.name if stored is not None and "robot" in stored else "unknown",
        "agent": f"{stored.agent.name}, profile {stored.agent.get('profile')}"
        if stored is not None
        else "unknown",
        "updates": counters.get("updates", state.get("counters", {}).get("updates", 0)),
        "env_steps": counters.get("env_steps", 0),
    }
    return Policy("", act, file, agent_cfg, state, trained)


def _check_agent_type(agent_cfg: DictConfig, state: dict, path: Path) -> None:
    """Fail before any robot moves when the checkpoint holds another kind of agent (sizes are checked on load)."""
    name = agent_params(agent_cfg).get("name")
    expected = AGENTS.get(name, ":?").split(":")[1]
    if state.get("agent") != expected:
        raise EvalError(
            f"{path} holds a {state.get('agent')} agent, but agent '{name}' is a {expected}: drop agent=/agent.* "
            "overrides to use the agent stored in the checkpoint"
        )


def _labels(policies: list[Policy]) -> None:
    """Short distinct names: file stem and act mode, with the run folder where two stems are the same."""

    def name(p: Policy, long: bool) -> str:
        stem = f"{p.path.parent.parent.name}/{p.path.stem}" if long else p.path.stem
        return f"{stem} [{p.act if p.act == 'base' else p.agent_cfg.name}]"

    for p in policies:
        p.label = name(p, False)
    if len(policies) == 2 and policies[0].label == policies[1].label:
        for p in policies:
            p.label = name(p, True)
    if len(policies) == 2 and policies[0].label == policies[1].label:
        policies[1].label += " (2)"


# ---- episodes ----
def stop_reason(r: EpisodeResult) -> str:
    """Why an episode ended; safety stops, the e-stop and an operator's failure key are failures."""
    state, why = r.safety.get("state", ""), str(r.safety.get("reason", ""))
    if r.stop_reason:
        if state == "estop" or r.stop_reason.startswith("estop"):
            return "estop"
        if state in ("hold", "safe_state"):
            return "safety:watchdog"
        return "stalled"
    if r.label == "failure":  # the operator's key, e.g. on hardware where the task has no success detector
        return "operator:failure"
    if r.success:
        return "success"
    if why.startswith("episode limit"):
        return "safety:episode_limit"
    return "timeout" if why == "truncated" else "terminated"


def _counter_delta(before: dict, after: dict) -> dict[str, int]:
    """Safety-layer events during one episode (clamps, rate limits, workspace, holds), from the driver's counters."""
    keys = set(before) | set(after)
    delta = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in keys if k != "episode_end"}
    return {k: v for k, v in sorted(delta.items()) if v > 0}


def episode_record(r: EpisodeResult, seed: int, before: dict) -> dict:
    reason = stop_reason(r)
    return {
        "seed": seed,
        "success": bool(r.success) and reason == "success",
        "length": r.length,
        "return": r.ret,
        "interventions": r.interventions,
        "stop_reason": reason,
        "detail": r.stop_reason or str(r.safety.get("reason", "")),
        "safety_events": _counter_delta(before, r.safety.get("counters", {})),
    }


def _periods_ms(walls: list[float]) -> list[float]:
    return [1e3 * d for d in np.diff(walls)] if len(walls) > 1 else []


class Evaluation:
    """Runs each policy's episodes on one driver with the same seeds, then writes the report."""

    def __init__(self, cfg: DictConfig, run_dir: Path, stop: threading.Event, live: LiveStatus):
        self.cfg, self.run_dir, self.stop, self.live = cfg, run_dir, stop, live
        self.n = int(cfg.eval.episodes)
        self.halted = ""  # why no further episode can run (e.g. the e-stop is latched); "" while all is well
        self.counters: dict | None = None  # the driver's safety counters after the last episode (one driver)

    def _actor(self, policy: Policy, index: int) -> Actor:
        cfg = self.cfg.copy()
        with open_dict(cfg):
            cfg.agent = policy.agent_cfg
        actor = Actor(cfg, self.run_dir, f"eval-{index}", self.stop, learn=False)
        try:
            actor.connect(agent_state=policy.state)
        except (AgentStateError, KeyError, ValueError, RuntimeError) as e:
            actor.close()
            if isinstance(e, RuntimeError) and "state_dict" not in str(e):
                raise  # not a load failure (e.g. a handshake error): as it is
            raise EvalError(
                f"{policy.path} does not fit agent '{policy.agent_cfg.get('name')}' on robot "
                f"{self.cfg.robot.name} (trained on {policy.trained['robot']} with agent {policy.trained['agent']}): "
                f"{' '.join(str(e).split())[:300]}. "
                "Evaluate on the robot it was trained on, and drop agent=/agent.* overrides to use its stored agent"
            ) from e
        return actor

    def run_policy(self, policy: Policy, index: int) -> dict:
        actor = self._actor(policy, index)
        episodes: list[dict] = []
        latencies, periods = [], []
        try:
            for i in range(self.n):
                if self.stop.is_set() or self.halted:
                    break
                before = self._counters(actor)
                try:
                    r = actor.run_episode("eval", learn=False, seed=EVAL_SEED_OFFSET + i)
                except TimeoutError as e:  # the driver refused or missed a reset
                    self.halted = str(e)
                    break
                if r.stop_reason == STOPPED:
                    break
                self.counters = dict(r.safety.get("counters", {}))
                episodes.append(episode_record(r, EVAL_SEED_OFFSET + i, before))
                latencies += r.latencies_ms
                periods += _periods_ms(r.step_wall)
                self._progress(actor, policy, episodes, latencies)
                if r.safety.get("state") == "estop":  # latched: the driver refuses resets until it is cleared
                    self.halted = (
                        f"{r.safety.get('reason', 'e-stop')} (latched: clear it on the driver, run again)"
                    )
        finally:
            actor.close()
        if self.halted:
            log.error("%s: evaluation ended after %d episodes: %s", policy.label, len(episodes), self.halted)
        return self._result(policy, index, episodes, latencies, periods)

    def _counters(self, actor: Actor) -> dict:
        if self.counters is not None:
            return self.counters
        latest = actor.robot.latest  # the driver's counters before our first episode, when it published any
        return dict(latest.safety.get("counters", {})) if latest is not None else {}

    def _progress(self, actor: Actor, policy: Policy, episodes: list[dict], latencies: list[float]) -> None:
        ep = episodes[-1]
        wins = sum(e["success"] for e in episodes)
        lat = latency_summary(latencies)
        actor.metrics.log(
            len(episodes),
            "eval",
            **{
                "eval/label": policy.label,
                M.EPISODE_SUCCESS: float(ep["success"]),
                M.EPISODE_LENGTH: ep["length"],
                M.EPISODE_INTERVENTIONS: ep["interventions"],
                "eval/stop_reason": ep["stop_reason"],
                M.EVAL_SUCCESSES: wins,
                M.EVAL_EPISODES: len(episodes),
            },
        )
        self.live.update(
            policy=policy.label,
            episode=f"{len(episodes)}/{self.n}",
            successes=wins,
            success_rate=wins / len(episodes),
            step_ms=lat["p50_ms"],
            step_p99_ms=lat["p99_ms"],
            safety_events=sum(e["stop_reason"].startswith(("safety", "estop")) for e in episodes),
        )
        log.info("%s episode %d: %s (%d steps)", policy.label, len(episodes), ep["stop_reason"], ep["length"])

    def _result(
        self, policy: Policy, index: int, episodes: list[dict], latencies: list[float], periods: list[float]
    ) -> dict:
        cfg = self.cfg
        events: dict[str, int] = {}
        for e in episodes:
            for k, v in e["safety_events"].items():
                events[k] = events.get(k, 0) + v
        config = {
            "robot": f"{cfg.robot.name} ({cfg.robot.mode}, {cfg.robot.fps} Hz)",
            "task": cfg.task.name,
            "agent": policy.agent_cfg.name,
            "act": "base policy alone" if policy.act == "base" else "the agent's own policy (eval mode)",
            "profile": policy.agent_cfg.get("profile"),
            "chunk / replan every": f"{policy.agent_cfg.chunk} / {policy.agent_cfg.get('replan_every') or 'chunk'}",
            "episodes": f"{len(episodes)} of {self.n}, seeds {EVAL_SEED_OFFSET}..{EVAL_SEED_OFFSET + self.n - 1}",
            "checkpoint": str(policy.path),
            "trained on": f"{policy.trained['robot']}, {policy.trained['updates']} updates, "
            f"{policy.trained['env_steps']} env steps",
            "safety max_episode_steps": cfg.safety.max_episode_steps,
            "safety-layer events": ", ".join(f"{k} {v}" for k, v in events.items()) or "none",
            "episodes recorded to": str(self.run_dir / "episodes" / f"eval-{index}")
            if cfg.session.get("record_episodes", True)
            else "not recorded (session.record_episodes=false)",
        }
        if len(episodes) < self.n:
            config["ended early"] = self.halted or "stopped by the operator (Ctrl-C)"
        return {
            "label": policy.label,
            "policy": "base" if policy.act == "base" else policy.agent_cfg.name,
            "checkpoint": str(policy.path),
            "config": config,
            "target_period_s": 1.0 / float(cfg.robot.fps),
            "episodes": episodes,
            "loop_period_ms": periods,
            "policy_latency_ms": latencies,
        }


# ---- the driver ----
def _wait_for_driver(
    cfg: DictConfig, launcher: Launcher | None, timeout_s: float, stop: threading.Event
) -> None:
    """Until the driver answers a handshake; fails at once if its process exits (the log says why)."""

    def check_driver() -> None:
        proc = launcher.procs["driver"] if launcher is not None else None
        if proc is not None and proc.popen.poll() is not None:
            raise ConnectionError(f"the driver exited with code {proc.popen.returncode}; see {proc.log_path}")

    probe = RobotClient(cfg.runtime)
    try:
        probe.connect_when_up(timeout_s, check_driver, stop)
    except PeerTimeoutError:
        raise TimeoutError(
            f"no driver answered within {timeout_s:.0f} s"
            + (" (eval.start_driver=false: start `expo-robot driver` first)" if launcher is None else "")
        ) from None
    finally:
        probe.close()


def _start_driver(cfg: DictConfig, overrides: list[str], run_dir: Path) -> Launcher | None:
    if not cfg.eval.start_driver:
        return None
    driver_dir = run_dir / "driver"
    driver_dir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(cfg, [o for o in overrides if not o.lstrip("+~").startswith("eval.")], driver_dir)
    launcher.start("driver")
    return launcher


def _agent_overridden(overrides: list[str]) -> bool:
    return any(o.lstrip("+~").startswith(("agent=", "agent.")) for o in overrides)


def evaluate(
    cfg: DictConfig, overrides: list[str], run_dir: Path, stop: threading.Event
) -> tuple[Path | None, str]:
    """Evaluate eval.policy (and eval.compare), write the report. Returns (report or None, why it ended early)."""
    ev = cfg.eval
    if not ev.policy:
        raise ConfigError("no policy to evaluate: give eval.policy=<checkpoint .safetensors or run folder>")
    if int(ev.episodes) < 1:
        raise ConfigError(f"eval.episodes must be >= 1 (got {ev.episodes})")
    overridden = _agent_overridden(overrides)
    policies = [load_policy(cfg, ev.policy, ev.act, overridden)]
    if ev.compare:
        policies.append(load_policy(cfg, ev.compare, ev.compare_act or ev.act, overridden))
    _labels(policies)
    launcher = _start_driver(cfg, overrides, run_dir)
    results = []
    try:
        _wait_for_driver(cfg, launcher, float(ev.driver_start_timeout_s), stop)
        with LiveStatus(cfg.get("live", "auto"), title="eval") as live:
            evaluation = Evaluation(cfg, run_dir, stop, live)
            for i, p in enumerate(policies):
                if not (stop.is_set() or evaluation.halted):
                    results.append(evaluation.run_policy(p, i))
    finally:
        if launcher is not None:
            launcher.stop_all()  # the robot goes to its safe state first thing
    ended_early = evaluation.halted or ("stopped by the operator" if stop.is_set() else "")
    done = [r for r in results if r["episodes"]]
    if not done:
        if stop.is_set():
            return None, ended_early
        raise ConnectionError(f"no evaluation episode finished: {ended_early or 'see the log'}")
    if len(done) < len(policies):
        log.warning("only %s has episodes: the report shows it alone", done[0]["label"])
    return write_eval_report(run_dir, done[0], done[1] if len(done) > 1 else None), ended_early


def main(cfg: DictConfig, words: list[str], overrides: list[str] | None = None) -> int:
    """`expo-robot eval eval.policy=... [eval.compare=...] [eval.episodes=N]`; Ctrl-C ends it early with a report."""
    if overrides is None:  # as the CLI split them
        overrides = [expand_override(a, "eval") for a in split_words(sys.argv[2:])[1]]
    overrides = [o for o in overrides if not o.startswith("run_dir=")]
    run_dir = make_run_dir(cfg, "eval").resolve()
    scheduling.apply(cfg.runtime, "actor")
    torch.set_num_threads(1)  # the policy step is small; a second thread only adds jitter
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"run folder: {run_dir}")
    report, ended_early = evaluate(cfg, overrides, run_dir, stop)
    if report is not None:
        print(f"report: {report}\nplot:   {run_dir / EVAL_PLOT}")
    if ended_early:
        print(f"ended early: {ended_early}", file=sys.stderr)
    return 130 if stop.is_set() else 1 if ended_early else 0
