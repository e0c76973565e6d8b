"""`expo-robot finetune`: driver, learner and actor as processes on this machine, supervised, one run folder.

Each process is the same `expo-robot <process>` command an operator would start on another machine, with the same
overrides plus `run_dir=`. `session.robots=N` starts N driver + actor pairs feeding the one learner (robot i: its own
ports, seed, actor id and episode folders, see `robot_pairs`). The launcher watches them (a dead process is
reported; the driver's watchdog keeps the robot safe on its own; a failed pair is stopped while the other robots go
on), shows a live status from the metrics they log, and when the actors end or on Ctrl-C stops the drivers first
(robots to their safe state), then the actors, then the learner (final checkpoint), and writes the report.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from expo_robot.config import ConfigError, command_line, make_run_dir, split_words
from expo_robot.observe import metrics as M
from expo_robot.observe.live import LiveStatus
from expo_robot.observe.report import write_finetune_report
from expo_robot.observe.summary import rate
from expo_robot.runtime.checkpoint import PRETRAINED
from expo_robot.runtime.offline import check_offline_data
from expo_robot.runtime.scheduling import die_with_parent, thread_env

log = logging.getLogger(__name__)
STOP_ORDER = ("driver", "actor", "learner")  # robots safe first, checkpoint last
STOP_TIMEOUT_S = 60.0


def _detach_and_follow() -> None:
    """In the child before exec: its own session (Ctrl-C reaches only the launcher, which stops the processes in a
    safe order), and it dies with the launcher."""
    os.setsid()
    die_with_parent()


def operator_terminal(cfg: DictConfig, stdin: Any) -> list[str]:
    """The driver runs in its own session, without a terminal: a keyboard operator's keys (takeover, success,
    e-stop) are read from the launcher's terminal, named to the driver by path."""
    teleop = cfg.get("teleop") or {}
    if teleop.get("type") != "keyboard" or teleop.get("source") != "terminal" or teleop.get("tty"):
        return []
    try:
        return [f"teleop.tty={os.ttyname(stdin.fileno())}"] if stdin.isatty() else []
    except (OSError, ValueError):  # no terminal (CI, a service): the driver reports that it cannot read keys
        return []


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@dataclass(frozen=True)
class RobotPair:
    """One robot of the session: its driver and actor processes and what sets them apart from the other robots."""

    index: int
    driver: str  # process names (their logs: <name>.out, <name>.log)
    actor: str
    actor_id: str  # the learner's name for its data; also <run>/episodes/<actor_id> and <run>/<actor_id>.json
    driver_overrides: tuple[str, ...]
    actor_overrides: tuple[str, ...]


def robot_pairs(cfg: DictConfig) -> list[RobotPair]:
    """session.robots driver + actor pairs. One robot keeps the plain names and the configured ports; robot i of
    several uses obs_port/cmd_port + i * runtime.robot_port_stride, seed + i (its own episodes) and robot_index=i
    (its own evaluation scenes, logs <process>-i.log)."""
    n = _robot_count(cfg)
    if n == 1:
        return [RobotPair(0, "driver", "actor", "actor-0", (), ("actor_id=actor-0",))]
    teleop = cfg.get("teleop") or {}
    if teleop.get("type") == "keyboard" and teleop.get("source") == "terminal":
        raise ConfigError(
            f"teleop=keyboard reads keys from this one terminal, which cannot serve session.robots={n} robots: "
            "use teleop=none, or start each robot's driver in its own terminal (`expo-robot driver`)"
        )
    rt, stride = cfg.runtime, _int(cfg, "runtime.robot_port_stride")
    ports = [(int(rt.obs_port) + i * stride, int(rt.cmd_port) + i * stride) for i in range(n)]
    _check_ports(cfg, ports)
    pairs = []
    for i, (obs, cmd) in enumerate(ports):
        common = (f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}", f"seed={int(cfg.seed) + i}",
                  f"robot_index={i}")  # fmt: skip
        pairs.append(
            RobotPair(i, f"driver-{i}", f"actor-{i}", f"actor-{i}", common, (*common, f"actor_id=actor-{i}"))
        )
    return pairs


def _int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be a whole number")
    return value


def _robot_count(cfg: DictConfig) -> int:
    n = _int(cfg, "session.robots")
    if n < 1:
        raise ConfigError(f"session.robots={n}: give the number of driver + actor pairs to start (1 or more)")
    return n


def _check_ports(cfg: DictConfig, ports: list[tuple[int, int]]) -> None:
    """Every robot's ports distinct from each other and from the learner's, and valid TCP ports."""
    rt = cfg.runtime
    taken = {
        int(rt.weights_port): "runtime.weights_port",
        int(rt.transitions_port): "runtime.transitions_port",
    }
    for i, pair in enumerate(ports):
        for port, what in zip(pair, ("obs", "cmd"), strict=True):
            if not 1 <= port <= 65535:
                raise ConfigError(
                    f"robot {i}'s {what} port would be {port} (runtime.{what}_port + {i} * "
                    f"runtime.robot_port_stride): lower the ports or the stride"
                )
            if port in taken:
                raise ConfigError(
                    f"robot {i}'s {what} port {port} is also {taken[port]}: set runtime.robot_port_stride "
                    f"(now {rt.robot_port_stride}) so that no two ports meet"
                )
            taken[port] = f"robot {i}'s {what} port"


LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ [\w.]+: ")  # setup_logging's format
ERROR_MARKS = ("Error", "error:", " ERROR ", "CRITICAL", "Exception", "refus", "expo-robot ")


def last_meaningful_line(log_path: Path, tail_bytes: int = 65536) -> str:
    """The line of a process's output that says why it ended: the last error-like line (a one-line CLI error, a
    traceback's final line, an ERROR log record), else the last line that is not part of a traceback."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, log_path.stat().st_size - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [
        ln.strip() for ln in lines if ln.strip() and not ln[:1].isspace() and not ln.startswith("Traceback")
    ]
    line = next(
        (ln for ln in reversed(lines) if any(m in ln for m in ERROR_MARKS)), lines[-1] if lines else ""
    )
    return LOG_PREFIX.sub("", line)  # the launcher's own log line has the time already


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    exit_code: int | None = None
    kind: str = ""  # driver | actor | learner


@dataclass
class MetricsTail:
    """Reads the lines appended to metrics.jsonl since the last call (for the live status). `phase`, first in the
    status, says what the session is doing and how far it has got, from its first second: starting, seed data,
    pretraining, evaluation before, fine-tuning, evaluation after."""

    path: Path
    env_steps_budget: int | None = None
    offset: int = 0
    latest: dict = field(default_factory=lambda: {"phase": "starting the driver, the learner and the actor"})
    per_robot: bool = False  # several robots: a line per actor besides the totals
    _robots: dict = field(default_factory=dict)  # actor id -> [episodes, successes, env steps]

    def poll(self) -> dict:
        if not self.path.exists():
            return self.latest
        with self.path.open() as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._absorb(rec)
        return self.latest

    def _absorb(self, rec: dict) -> None:
        s = self.latest
        if (phase := self._phase(rec)) is not None:
            s["phase"] = phase
        if rec.get("source") == "actor" and M.EPISODE_SUCCESS in rec:
            s["episodes"] = s.get("episodes", 0) + 1
            s["successes"] = s.get("successes", 0) + int(rec[M.EPISODE_SUCCESS] > 0.5)
            s["env steps"] = rec["step"]
            s["policy p99 ms"] = rec.get("policy/latency_p99_ms")
            s["weights"] = rec.get("weights/version")
            s["intervention steps"] = s.get("intervention steps", 0) + int(
                rec.get(M.EPISODE_INTERVENTIONS) or 0
            )
            if self.per_robot and rec.get("actor"):
                s[rec["actor"]] = self._robot_line(rec)
                s["env steps"] = sum(r[2] for r in self._robots.values())  # of all robots
        if rec.get("source") == "learner":
            if M.LEARNER_UPDATES in rec:
                s["updates"] = rec[M.LEARNER_UPDATES]
            if M.BUFFER_SIZE in rec:
                s["buffer"] = rec[M.BUFFER_SIZE]
            if "critic/loss" in rec:
                s["critic loss"] = rec["critic/loss"]
        if rec.get("source") == "eval" and M.EVAL_EPISODES in rec:
            label = f"eval {rec.get('eval/label', '')}"
            if self.per_robot and rec.get("actor"):
                label = f"{rec['actor']} {label}"
            s[label] = f"{rec.get(M.EVAL_SUCCESSES)}/{rec.get(M.EVAL_EPISODES)}"

    def _robot_line(self, rec: dict) -> str:
        r = self._robots.setdefault(rec["actor"], [0, 0, 0])
        r[0] += 1
        r[1] += int(rec[M.EPISODE_SUCCESS] > 0.5)
        r[2] = rec["step"]
        return f"{r[0]} episodes, {r[1]} successful, {r[2]:,} steps"

    def _phase(self, rec: dict) -> str | None:
        source = rec.get("source")
        if isinstance(rec.get("phase"), str):  # a process names what it does (e.g. the learner loading data)
            return rec["phase"]
        if source == "learner" and "seed/episodes" in rec:
            return (
                f"seed data {rec['seed/episodes']}/{rec['seed/total']} episodes "
                f"({rec['seed/successes']} successful)"
            )
        if source == "learner" and "pretrain/step" in rec:
            loss = next((v for k, v in rec.items() if k.endswith("loss") and isinstance(v, float)), None)
            tail = f", loss {loss:.3f}" if loss is not None else ""
            return f"pretraining {rec['pretrain/step']:,}/{rec.get('pretrain/steps', '?'):,} steps{tail}"
        if source == "eval" and "eval/done" in rec:
            return (
                f"evaluation {rec['eval/label']} {rec['eval/done']}/{rec['eval/of']} episodes "
                f"({rec['eval/successes_so_far']} successful)"
            )
        if source == "eval" and rec.get("eval/label") == "before" and M.EVAL_EPISODES in rec:
            return self._fine_tuning(0)
        if source == "actor" and M.EPISODE_SUCCESS in rec:
            return self._fine_tuning(rec["step"])
        return None

    def _fine_tuning(self, env_steps: int) -> str:
        budget = f"/{self.env_steps_budget:,}" if self.env_steps_budget else ""
        return f"fine-tuning {env_steps:,}{budget} env steps"


class Launcher:
    def __init__(self, cfg: DictConfig, overrides: list[str], run_dir: Path):
        self.cfg, self.overrides, self.run_dir = cfg, overrides, run_dir
        self.pairs = robot_pairs(cfg)
        self.procs: dict[str, Proc] = {}
        self.started = time.time()
        self.stopped_by = (
            "actor finished its budget" if len(self.pairs) == 1 else "actors finished their budgets"
        )
        self.notes: list[str] = []
        self.failed: dict[int, str] = {}  # robot index -> what failed
        self.finished: set[int] = set()  # robots whose actor spent its budget

    def command(self, kind: str, extra: Sequence[str]) -> list[str]:
        """`expo-robot <kind>` with the session's overrides, its run folder, then this process's own overrides."""
        return [
            sys.executable,
            "-m",
            "expo_robot.cli",
            kind,
            *self.overrides,
            f"run_dir={self.run_dir}",
            *extra,
        ]

    def start(self, name: str, extra: Sequence[str] = (), kind: str = "") -> Proc:
        """Start process `name` (an `expo-robot <kind>` command; kind defaults to the name)."""
        kind = kind or name
        cmd = self.command(kind, extra)
        log_path = self.run_dir / f"{name}.out"
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1",
               **thread_env(self.cfg.runtime, kind)}  # fmt: skip
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_detach_and_follow
            )
        self.procs[name] = Proc(name, popen, log_path, kind=kind)
        log.info("started %s (pid %d): %s", name, popen.pid, shlex.join(cmd[2:]))
        return self.procs[name]

    def run(self) -> int:
        # SIGTERM (e.g. from a supervisor) stops the session like Ctrl-C: children are in their own sessions.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        keys = operator_terminal(self.cfg, sys.stdin)  # (one robot only: see robot_pairs)
        for pair in self.pairs:
            self.start(pair.driver, (*pair.driver_overrides, *keys), "driver")
        self.start("learner")
        for pair in self.pairs:
            self.start(pair.actor, pair.actor_overrides, "actor")
        tail = MetricsTail(
            self.run_dir / M.METRICS_FILE, int(self.cfg.session.env_steps), per_robot=len(self.pairs) > 1
        )
        code = 0
        with LiveStatus(self.cfg.get("live", "auto"), title="finetune") as live:
            try:
                code = self._supervise(tail, live)
            except KeyboardInterrupt:
                self.stopped_by = "operator (Ctrl-C)"
                log.warning("Ctrl-C: stopping the robots first, then the actors and the learner")
        self.stop_all()
        signal.signal(signal.SIGTERM, previous)
        self.write_report()
        return code

    def _supervise(self, tail: MetricsTail, live: LiveStatus) -> int:
        while True:
            live.update(**tail.poll())
            for p in self.procs.values():
                if p.exit_code is None and (rc := p.popen.poll()) is not None:
                    p.exit_code = rc
                    if p.kind == "learner":
                        self._learner_lost(p)
                    else:
                        self._pair_process_ended(p, rc)
            if len(self.finished) + len(self.failed) == len(self.pairs):
                return 1 if self.failed else 0
            time.sleep(0.5)

    def _pair_process_ended(self, p: Proc, rc: int) -> None:
        pair = next(x for x in self.pairs if p.name in (x.driver, x.actor))
        if pair.index in self.failed or pair.index in self.finished:
            return  # stopped by the launcher after its pair's end
        if p.kind == "actor" and rc == 0:
            self.finished.add(pair.index)
            self._stop(pair.driver)  # the robot to its safe state now, not when the last robot is done
            return
        why = last_meaningful_line(p.log_path) or "no output"
        msg = f"{p.name} exited with code {rc}: {why} (log: {p.log_path})"
        if len(self.pairs) > 1:
            msg = f"robot {pair.index} ({pair.actor_id}) failed: {msg}; its driver and actor were stopped"
        self.failed[pair.index] = msg
        self.notes.append(msg)
        log.error(msg)
        self._stop(pair.driver)
        self._stop(pair.actor)
        if len(self.pairs) == 1:
            self.stopped_by = f"{p.name} failed"
        elif len(self.failed) == len(self.pairs):
            self.stopped_by = "every robot failed"
        else:
            alive = len(self.pairs) - len(self.failed)
            self.stopped_by = f"{len(self.failed)} of {len(self.pairs)} robots failed; {alive} went on"

    def _learner_lost(self, p: Proc) -> None:
        why = last_meaningful_line(p.log_path) or "no output"
        msg = f"{p.name} exited with code {p.exit_code}: {why} (log: {p.log_path})"
        self.notes.append(msg)
        log.error(msg)
        log.error(
            "the actors continue as configured (session.on_learner_loss=%s); restart the "
            "learner with `expo-robot learner run_dir=%s session.resume=%s`",
            self.cfg.session.on_learner_loss,
            self.run_dir,
            self.run_dir,
        )

    def _stop(self, name: str) -> None:
        p = self.procs.get(name)
        if p is None:
            return
        if p.popen.poll() is not None:
            p.exit_code = p.popen.returncode
            return
        p.popen.send_signal(signal.SIGTERM)
        try:
            p.exit_code = p.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s; killing it", name, STOP_TIMEOUT_S)
            p.popen.kill()
            p.exit_code = p.popen.wait()

    def stop_all(self) -> None:
        for kind in STOP_ORDER:
            for p in list(self.procs.values()):
                if p.kind == kind:
                    self._stop(p.name)

    def write_report(self) -> Path:
        actors = {pair.index: self._actor_summary(pair) for pair in self.pairs}
        cfg = self.cfg
        summary = {
            "command": "expo-robot finetune " + shlex.join(self.overrides),
            "task": cfg.task.name,
            "agent": cfg.agent.name,
            "robot": cfg.robot.name if len(self.pairs) == 1 else f"{len(self.pairs)} x {cfg.robot.name}",
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
            "stopped_by": self.stopped_by,
            "duration_s": time.time() - self.started,
            "target_period_s": 1.0 / float(cfg.robot.fps),
            "checkpoints": [str(p) for p in sorted((self.run_dir / "checkpoints").glob("*.safetensors"))],
            "config": {
                "agent": cfg.agent.name,
                "profile": cfg.profile,
                "chunk": cfg.agent.chunk,
                "env_steps budget": cfg.session.env_steps
                if len(self.pairs) == 1
                else f"{cfg.session.env_steps} per robot",
                "robot mode": cfg.robot.mode,
            },
            "notes": self.notes,
        }
        for label in ("before", "after"):  # pooled over the robots: each evaluates its own scenes
            evals = [a[label] for a in actors.values() if a.get(label, {}).get("episodes")]
            if evals:
                n = sum(e["episodes"] for e in evals)
                summary[f"success_{label}"] = rate(sum(e["successes"] for e in evals), n)
                summary["success_basis"] = (
                    f"{n} evaluation episodes before and after, same scenes"
                    if len(self.pairs) == 1
                    else f"{n} evaluation episodes before and after, from {len(evals)} robots; each robot "
                    "plays its own scenes, the same before and after"
                )
        if len(self.pairs) > 1:
            summary["robots"] = self._robot_rows(actors)
        path = write_finetune_report(self.run_dir, summary)
        log.info("report: %s", path)
        log.info("plot:   %s", self.run_dir / "finetune.png")
        return path

    def _actor_summary(self, pair: RobotPair) -> dict:
        """What the actor wrote when it finished its budget (nothing if it did not)."""
        path = self.run_dir / f"{pair.actor_id}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _robot_rows(self, actors: dict[int, dict]) -> list[dict]:
        """Each robot's own figures: training episodes from the metrics, evaluations from the actor's summary."""
        records = M.read_metrics(self.run_dir) if (self.run_dir / M.METRICS_FILE).exists() else []
        rows = []
        for pair in self.pairs:
            episodes = [
                r
                for r in records
                if r.get("source") == "actor" and r.get("actor") == pair.actor_id and M.EPISODE_SUCCESS in r
            ]
            a = actors[pair.index]
            evals = {k: f"{a[k]['successes']}/{a[k]['episodes']}" for k in ("before", "after") if a.get(k)}
            outcome = self.failed.get(pair.index) or (
                "budget spent" if pair.index in self.finished else f"stopped ({self.stopped_by})"
            )
            rows.append(
                {
                    "robot": pair.index,
                    "actor": pair.actor_id,
                    "env_steps": max((int(r["step"]) for r in episodes), default=0),
                    "episodes": len(episodes),
                    "successful": sum(r[M.EPISODE_SUCCESS] > 0.5 for r in episodes),
                    "eval_before": evals.get("before", "n/a"),
                    "eval_after": evals.get("after", "n/a"),
                    "outcome": outcome,
                }
            )
        return rows


def main(cfg: DictConfig, words: list[str], overrides: list[str] | None = None) -> int:
    robot_pairs(cfg)  # a bad robot count or port layout: one line, before a run folder is made
    check_offline_data(cfg)  # refused here, before any process starts, with `dataset check`'s message
    run_dir = make_run_dir(cfg, "finetune")
    if overrides is None:  # as the CLI split them
        overrides = split_words(sys.argv[2:])[1]
    overrides = [o for o in overrides if not o.startswith("run_dir=")]
    print(f"run folder: {run_dir}")
    code = Launcher(cfg, overrides, run_dir.resolve()).run()
    print(f"report: {run_dir / 'report.md'}\nplot:   {run_dir / 'finetune.png'}")
    bc_start = cfg.session.pretrained or run_dir / "checkpoints" / PRETRAINED
    if code == 0 and Path(bc_start).exists():
        evaluate = command_line(
            "eval", overrides, f"policy={run_dir}", f"compare={bc_start}", "compare_act=base"
        )
        print(f"fine-tuned vs its BC start: {evaluate}")
    return code
