"""`expo-robot dataset info|check|repair PATH` and `dataset schema`: summary and validation of a local LeRobotDataset,
and the contract a dataset must meet for a robot.

check exits non-zero when it finds a problem: damaged files, frame indices or timestamps that are not 0, 1/fps,
2/fps, ..., capture times that are not monotonic or not at the recorded rate, `next.done` anywhere but on the last
frame, `next.truncated` without `next.done`, non-finite states/actions, or a dataset lerobot's own class cannot open.
With `robot=NAME` it also checks the dataset against that robot's contract (data/contract.py: features, shapes, the
state layout and robot type recorded in its metadata), with the message a session gives when it refuses it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from expo_robot.data.contract import dataset_fit, robot_contract, schema_lines
from expo_robot.data.dataset_io import DatasetError, DatasetSummary, find_damage, read_dataset, repair_dataset

log = logging.getLogger(__name__)
TIMESTAMP_TOL_S = 1e-4  # lerobot's own default tolerance_s
RATE_TOL = 0.10  # a real-time recording's median period may differ this much from 1/fps
LATE_FACTOR = 1.5  # a capture gap this many periods long counts as an overrun (reported, not an error)


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def summarize(data: DatasetSummary) -> dict:
    """The figures `dataset info` prints."""
    eps = data.episodes
    frames = int(sum(len(e) for e in eps))
    interventions = int(sum(int(e.intervention.sum()) for e in eps))
    return {
        "path": str(data.root),
        "episodes": len(eps),
        "frames": frames,
        "fps": data.fps,
        "duration_s": round(frames / data.fps, 1) if data.fps else None,
        "mean_length": round(frames / len(eps), 1) if eps else 0.0,
        "success_rate": round(float(np.mean([e.success for e in eps])), 3) if eps else None,
        "intervention_rate": round(interventions / frames, 3) if frames else None,
        "episodes_with_intervention": int(sum(bool(e.intervention.any()) for e in eps)),
        "safety_stops": int(sum(bool(e.safety_stop.any()) for e in eps)),
        "tasks": data.task_names,
        "features": {k: f"{v['dtype']} {list(v['shape'])}" for k, v in data.features.items()},
    }


def check(root: str | Path, open_with_lerobot: bool = True) -> CheckReport:
    report = CheckReport()
    root = Path(root)
    damage = find_damage(root) if (root / "meta" / "info.json").exists() else []
    if damage:
        report.problems += [f"{d} (run `expo-robot dataset repair {root}`)" for d in damage]
        return report
    data = read_dataset(root)
    if not data.episodes:
        report.problems.append("no episodes")
        return report
    expected = list(range(len(data.episodes)))
    if [e.index for e in data.episodes] != expected:
        report.problems.append(f"episode indices are not 0..{len(expected) - 1}")
    for i, ep in enumerate(data.episodes):
        report.problems += [f"episode {ep.index}: {p}" for p in _episode_problems(data, i)]
    if data.capture_time is not None:
        _check_cadence(data, report)
    if open_with_lerobot and not report.problems:
        _open_with_lerobot(root, data, report)
    return report


def _episode_problems(data: DatasetSummary, i: int) -> list[str]:
    ep, problems = data.episodes[i], []
    n = len(ep)
    if not np.array_equal(data.frame_index[i], np.arange(n)):
        problems.append("frame_index is not 0, 1, 2, ...")
    ts = data.timestamps[i]
    if np.any(np.diff(ts) <= 0):
        problems.append("timestamps are not strictly increasing")
    worst = float(np.max(np.abs(ts - np.arange(n) / data.fps)))
    if worst > TIMESTAMP_TOL_S:
        problems.append(f"timestamps are off the {data.fps} Hz grid by up to {worst:.4f} s")
    done = data.done[i]
    if done is not None:
        if not done[-1]:
            problems.append("last frame is not marked next.done")
        if done[:-1].any():
            problems.append(
                f"next.done set before the last frame (frames {np.flatnonzero(done[:-1]).tolist()})"
            )
    truncated = data.truncated[i] if data.truncated else None
    if truncated is not None and done is not None and np.any(truncated & ~done):
        problems.append("next.truncated set on a frame without next.done")
    if not (np.isfinite(ep.states).all() and np.isfinite(ep.actions).all() and np.isfinite(ep.rewards).all()):
        problems.append("non-finite values in state, action or reward")
    return problems


def _check_cadence(data: DatasetSummary, report: CheckReport) -> None:
    period = 1.0 / data.fps
    late = 0
    for ep, times in zip(data.episodes, data.capture_time, strict=True):
        gaps = np.diff(times)
        if np.any(gaps <= 0):
            report.problems.append(f"episode {ep.index}: capture times are not strictly increasing")
            continue
        if len(gaps) and abs(np.median(gaps) - period) > RATE_TOL * period:
            report.problems.append(
                f"episode {ep.index}: recorded at {1 / np.median(gaps):.2f} Hz, the dataset says {data.fps} Hz"
            )
        late += int(np.sum(gaps > LATE_FACTOR * period))
    if late:
        report.notes.append(f"{late} capture gaps longer than {LATE_FACTOR} periods (loop overruns)")


def _open_with_lerobot(root: Path, data: DatasetSummary, report: CheckReport) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        ds = LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")
        frames = sum(len(e) for e in data.episodes)
        if ds.num_episodes != len(data.episodes) or ds.num_frames != frames:
            report.problems.append(
                f"lerobot sees {ds.num_episodes} episodes / {ds.num_frames} frames, the files hold "
                f"{len(data.episodes)} / {frames}"
            )
        ds[0], ds[len(ds) - 1]
    except Exception as e:  # whatever lerobot raises, the dataset is unusable by lerobot's tools
        report.problems.append(f"lerobot's LeRobotDataset cannot open it: {type(e).__name__}: {e}")


def _print_info(info: dict) -> None:
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "features":
            print("features:")
            for name, spec in value.items():
                print(f"  {name:<28} {spec}")
        else:
            print(f"{key:<{width}}  {value}")


USAGE = "usage: expo-robot dataset info|check|repair PATH [robot=NAME], expo-robot dataset schema robot=NAME"


def main(cfg: DictConfig, words: list[str], overrides: list[str] | None = None) -> int:
    if words == ["schema"]:
        print("\n".join(schema_lines(robot_contract(cfg))))
        return 0
    if len(words) != 2 or words[0] not in {"info", "check", "repair"}:
        print(USAGE, file=sys.stderr)
        return 2
    action, path = words
    against_robot = any(o.startswith("robot=") for o in overrides or [])
    try:
        if action == "info":
            _print_info(summarize(read_dataset(path)))
            return 0
        if action == "repair":
            fixed = repair_dataset(path)
            print(f"repaired {path}: " + "; ".join(fixed) if fixed else f"{path}: nothing to repair")
            return 0
        report = check(path)
        if against_robot:
            fit = dataset_fit(path, robot_contract(cfg))
            report.problems += [f"robot '{cfg.robot.name}': {p}" for p in fit.problems]
            report.notes += fit.notes
    except DatasetError as e:
        print(f"expo-robot dataset {action}: {e}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"{path}: OK")
        return 0
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{path}: {len(report.problems)} problem(s)", file=sys.stderr)
    return 1
