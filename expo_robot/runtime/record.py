"""`expo-robot record`: teleop demonstrations into a LeRobotDataset v3.

    expo-robot record teleop=keyboard teleop.episodes=20 teleop.root=data/pick_demos
    expo-robot record teleop=scripted teleop.episodes=5             # CI / demos: the scripted operator, no person

The operator loop of runtime/teleop.py drives the robot; each executed step becomes a frame: the state it started
from, the action the driver really executed (after safety), the reward, the flags (intervention, success, safety
stop) and `capture_time` = the driver-clock time of that state, plus each camera's frame of that state
(`observation.images.<camera>`, when the driver has cameras). Keys: success / failure end the episode with that
label, re-record drops it, quit stops (the episode in progress is dropped). `EpisodeWriter` saves on its own thread
and closes each episode's files, so the loop never waits for a save and a kill loses at most the episode in progress.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from omegaconf import DictConfig

from expo_robot.config import make_run_dir
from expo_robot.data.dataset_io import EpisodeWriter, camera_features, dataset_features
from expo_robot.observe.live import LiveStatus
from expo_robot.runtime.teleop import EpisodeEnd, OperatorLoop, install_stop_handlers, operator_cfg
from expo_robot.transport.robot_client import Observation

log = logging.getLogger(__name__)


class RecordingSink:
    """Frames into an EpisodeWriter. The newest frame is held back one step, so an operator key can still label it
    before it is written: the success key marks it a success and rewards it (`success_reward`, as a session's actor
    does), so a task without a success detector is rewarded by the operator."""

    def __init__(self, writer: EpisodeWriter, episodes: int, success_reward: float = 1.0):
        self.writer, self.limit, self.success_reward = writer, episodes, success_reward
        self.saved = self.successes = self.discarded = self.frames = 0
        self.interventions = 0
        self._held: dict | None = None

    def start(self, obs: Observation) -> None:
        self._held = None

    def step(self, prev: Observation, obs: Observation) -> None:
        self._flush()
        self._held = {
            "state": prev.state, "action": obs.action, "reward": obs.reward, "intervention": obs.intervention,
            "success": obs.success, "capture_time": prev.t, "images": prev.images,
        }  # fmt: skip

    def _flush(self) -> None:
        if self._held is not None:
            self.writer.add_frame(**self._held)
            self.frames += 1
            self.interventions += int(self._held["intervention"])
            self._held = None

    def end(self, end: EpisodeEnd) -> None:
        if not end.keep or self._held is None:
            self._held = None
            self.writer.discard_episode()
            self.discarded += int(end.reason == "rerecord")
            return
        last = self._held
        last["success"] = bool(last["success"] or end.success)
        if end.reason == "success":
            last["reward"] = max(float(last["reward"]), self.success_reward)
        last["safety_stop"] = end.safety_stop
        self._flush()
        index = self.writer.end_episode(truncated=end.truncated)  # queued: never waits for the disk
        self.saved += 1
        self.successes += int(last["success"])
        log.info("episode %d queued for saving (%s)", index, end.reason)

    def done(self) -> bool:
        return 0 < self.limit <= self.saved


def record(cfg: DictConfig, run_dir: Path, stop: threading.Event | None = None) -> dict:
    """Record cfg.teleop.episodes episodes into cfg.teleop.root (or <run_dir>/dataset); return a summary."""
    cfg = operator_cfg(cfg)
    root = Path(cfg.teleop.root) if cfg.teleop.get("root") else run_dir / "dataset"
    task = str(cfg.teleop.get("task") or cfg.task.description)
    stop = stop or threading.Event()
    with (
        LiveStatus(cfg.get("live", "auto"), title="record") as live,
        OperatorLoop(cfg, stop, live, run_dir) as loop,
    ):
        spec = loop.client.spec
        features = dataset_features(
            spec.state_dim,
            spec.action_dim,
            spec.state_names or None,  # the layout, for `dataset check robot=`
            extra=camera_features(spec.cameras),
            capture_time=True,
        )
        writer = EpisodeWriter(root, fps=round(spec.fps), features=features, task=task, robot_type=spec.robot)
        success_reward = float(cfg.session.get("operator_success_reward", 1.0))
        sink = RecordingSink(writer, int(cfg.teleop.episodes), success_reward)
        log.info("recording into %s at %.0f Hz (%s): '%s'", root, spec.fps, spec.mode, task)
        try:
            loop.run(sink)
        finally:
            writer.close()  # saves what is queued; the episode in progress was dropped by the loop
        loop_stats = dict(loop.loop_stats)
    summary = {
        "dataset": str(root),
        "episodes": sink.saved,
        "successes": sink.successes,
        "rerecorded": sink.discarded,
        "frames": sink.frames,
        "intervention_rate": round(sink.interventions / sink.frames, 3) if sink.frames else None,
        "loop": loop_stats,
    }
    (run_dir / "record.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(cfg: DictConfig, words: list[str]) -> int:
    run_dir = make_run_dir(operator_cfg(cfg), "record")
    stop = threading.Event()
    install_stop_handlers(stop)
    summary = record(cfg, run_dir, stop)
    log.info("recorded %d episodes (%d successes) into %s", summary["episodes"], summary["successes"],
             summary["dataset"])  # fmt: skip
    print(f"dataset: {summary['dataset']}\nsummary: {run_dir / 'record.json'}")
    return 0
