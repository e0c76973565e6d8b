"""`expo-robot finetune`: driver, learner and actor as three processes on this machine, supervised, one run folder.

Each process is the same `expo-robot <process>` command an operator would start on another machine, with the same
overrides plus `run_dir=`. The launcher watches them (a dead process is reported; the driver's watchdog keeps the
robot safe on its own), shows a live status from the metrics they log, and on the actor's end or Ctrl-C stops the
driver first (robot to its safe state), then the actor, then the learner (final checkpoint), and writes the report.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from expo_robot.config import command_line, make_run_dir, split_words
from expo_robot.observe import metrics as M
from expo_robot.observe.live import LiveStatus
from expo_robot.observe.report import write_finetune_report
from expo_robot.observe.summary import rate
from expo_robot.runtime.offline import check_offline_data
from expo_robot.runtime.scheduling import die_with_parent

log = logging.getLogger(__name__)
STOP_ORDER = ("driver", "actor", "learner")  # robot safe first, checkpoint last
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


@dataclass
class MetricsTail:
    """Reads the lines appended to metrics.jsonl since the last call (for the live status)."""

    path: Path
    offset: int = 0
    latest: dict = field(default_factory=dict)

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
        if rec.get("source") == "actor" and M.EPISODE_SUCCESS in rec:
            s["episodes"] = s.get("episodes", 0) + 1
            s["successes"] = s.get("successes", 0) + int(rec[M.EPISODE_SUCCESS] > 0.5)
            s["env steps"] = rec["step"]
            s["policy p99 ms"] = rec.get("policy/latency_p99_ms")
            s["weights"] = rec.get("weights/version")
            s["intervention steps"] = s.get("intervention steps", 0) + int(
                rec.get(M.EPISODE_INTERVENTIONS) or 0
            )
        if rec.get("source") == "learner":
            if M.LEARNER_UPDATES in rec:
                s["updates"] = rec[M.LEARNER_UPDATES]
            if M.BUFFER_SIZE in rec:
                s["buffer"] = rec[M.BUFFER_SIZE]
            if "critic/loss" in rec:
                s["critic loss"] = rec["critic/loss"]
        if rec.get("source") == "eval":
            s[f"eval {rec.get('eval/label', '')}"] = f"{rec.get(M.EVAL_SUCCESSES)}/{rec.get(M.EVAL_EPISODES)}"


class Launcher:
    def __init__(self, cfg: DictConfig, overrides: list[str], run_dir: Path):
        self.cfg, self.overrides, self.run_dir = cfg, overrides, run_dir
        self.procs: dict[str, Proc] = {}
        self.started = time.time()
        self.stopped_by = "actor finished its budget"
        self.notes: list[str] = []

    def start(self, name: str, extra: list[str] | None = None) -> Proc:
        cmd = [
            sys.executable,
            "-m",
            "expo_robot.cli",
            name,
            *self.overrides,
            f"run_dir={self.run_dir}",
            *(extra or []),
        ]
        log_path = self.run_dir / f"{name}.out"
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_detach_and_follow
            )
        self.procs[name] = Proc(name, popen, log_path)
        log.info("started %s (pid %d): %s", name, popen.pid, shlex.join(cmd[2:]))
        return self.procs[name]

    def run(self) -> int:
        # SIGTERM (e.g. from a supervisor) stops the session like Ctrl-C: children are in their own sessions.
        signal.signal(signal.SIGTERM, _interrupt)
        self.start("driver", operator_terminal(self.cfg, sys.stdin))
        self.start("learner")
        self.start("actor", ["actor_id=actor-0"])
        tail = MetricsTail(self.run_dir / M.METRICS_FILE)
        code = 0
        with LiveStatus(self.cfg.get("live", "auto"), title="finetune") as live:
            try:
                code = self._supervise(tail, live)
            except KeyboardInterrupt:
                self.stopped_by = "operator (Ctrl-C)"
                log.warning("Ctrl-C: stopping the robot first, then the actor and the learner")
        self.stop_all()
        self.write_report()
        return code

    def _supervise(self, tail: MetricsTail, live: LiveStatus) -> int:
        while True:
            live.update(**tail.poll())
            for p in self.procs.values():
                if p.exit_code is None and (rc := p.popen.poll()) is not None:
                    p.exit_code = rc
                    if p.name == "actor" and rc == 0:
                        return 0
                    why = last_meaningful_line(p.log_path) or "no output"
                    msg = f"{p.name} exited with code {rc}: {why} (log: {p.log_path})"
                    self.notes.append(msg)
                    log.error(msg)
                    if p.name == "learner":
                        log.error(
                            "the actor continues as configured (session.on_learner_loss=%s); restart the "
                            "learner with `expo-robot learner run_dir=%s session.resume=%s`",
                            self.cfg.session.on_learner_loss,
                            self.run_dir,
                            self.run_dir,
                        )
                        continue
                    self.stopped_by = f"{p.name} failed"
                    return 1
            time.sleep(0.5)

    def stop_all(self) -> None:
        for name in STOP_ORDER:
            p = self.procs.get(name)
            if p is None or p.popen.poll() is not None:
                continue
            p.popen.send_signal(signal.SIGTERM)
            try:
                p.exit_code = p.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s; killing it", name, STOP_TIMEOUT_S)
                p.popen.kill()
                p.exit_code = p.popen.wait()

    def write_report(self) -> Path:
        actor = {}
        actor_file = self.run_dir / "actor-0.json"
        if actor_file.exists():
            actor = json.loads(actor_file.read_text())
        cfg = self.cfg
        summary = {
            "command": "expo-robot finetune " + shlex.join(self.overrides),
            "task": cfg.task.name,
            "agent": cfg.agent.name,
            "robot": cfg.robot.name,
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
            "stopped_by": self.stopped_by,
            "duration_s": time.time() - self.started,
            "target_period_s": 1.0 / float(cfg.robot.fps),
            "checkpoints": [str(p) for p in sorted((self.run_dir / "checkpoints").glob("*.pt"))],
            "config": {
                "agent": cfg.agent.name,
                "profile": cfg.profile,
                "chunk": cfg.agent.chunk,
                "env_steps budget": cfg.session.env_steps,
                "robot mode": cfg.robot.mode,
            },
            "notes": self.notes,
        }
        for label in ("before", "after"):
            if label in actor and actor[label]["episodes"]:
                e = actor[label]
                summary[f"success_{label}"] = rate(e["successes"], e["episodes"])
                summary["success_basis"] = (
                    f"{e['episodes']} evaluation episodes before and after, same scenes"
                )
        path = write_finetune_report(self.run_dir, summary)
        log.info("report: %s", path)
        log.info("plot:   %s", self.run_dir / "finetune.png")
        return path


def main(cfg: DictConfig, words: list[str], overrides: list[str] | None = None) -> int:
    check_offline_data(cfg)  # refused here, before any process starts, with `dataset check`'s message
    run_dir = make_run_dir(cfg, "finetune")
    if overrides is None:  # as the CLI split them
        overrides = split_words(sys.argv[2:])[1]
    overrides = [o for o in overrides if not o.startswith("run_dir=")]
    print(f"run folder: {run_dir}")
    code = Launcher(cfg, overrides, run_dir.resolve()).run()
    print(f"report: {run_dir / 'report.md'}\nplot:   {run_dir / 'finetune.png'}")
    bc_start = cfg.session.pretrained or run_dir / "checkpoints" / "pretrained.pt"
    if code == 0 and Path(bc_start).exists():
        evaluate = command_line(
            "eval", overrides, f"policy={run_dir}", f"compare={bc_start}", "compare_act=base"
        )
        print(f"fine-tuned vs its BC start: {evaluate}")
    return code
