"""The dataset contract: what a demonstration dataset must hold to seed a session on a given robot.

    expo-robot dataset schema robot=my_env          # prints it for a robot (features, shapes, the state layout)
    expo-robot dataset check data/demos robot=my_env  # says what differs; a session refuses such a dataset

A dataset is a LeRobotDataset v3 (lerobot's own API writes one). Frame t holds the observation s_t, the action a_t
executed from it and what followed (`next.*`), the layout of lerobot's RL recordings (data/dataset_io.py). The robot's
side of the contract comes from its config: the simulated env's observation and action spaces (state layout as
drivers/sim_env.py flattens it), or the robot class's declared dimensions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from expo_robot.data.dataset_io import (
    ACTION,
    CAPTURE_TIME,
    DONE,
    ENV_STATE,
    FLAGS,
    IMAGES,
    REWARD,
    STATE,
    TRUNCATED,
    DatasetError,
)

FLOATS = ("float32", "float64")
FLAG_MEANING = {
    "success": "the task succeeded on this frame (an episode with any is a success)",
    "intervention": "a person drove this step (takeover); kept as offline-quality data",
    "safety_stop": "the driver's safety layer stopped the episode on this frame",
}


@dataclass
class RobotContract:
    """What a dataset must match to seed a session on this robot."""

    robot: str  # the robot config's name: recorded as the dataset's robot_type
    env_id: str | None  # the simulated env (also accepted as robot_type)
    fps: int
    state_dim: int | None  # None: known only once the robot is connected
    action_dim: int | None
    state_names: list[str] | None = None
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    cameras: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def robot_types(self) -> list[str]:
        return [t for t in (self.robot, self.env_id) if t]


def robot_contract(cfg: DictConfig) -> RobotContract:
    """The contract for cfg.robot (a simulated robot builds its env once to read the spaces)."""
    from drivers.cameras import configured_shapes

    robot_cfg = cfg.robot
    common = {
        "robot": str(robot_cfg.name),
        "env_id": robot_cfg.get("env_id"),
        "fps": round(float(robot_cfg.get("fps", 10))),
        "cameras": dict(configured_shapes(cfg.get("cameras"))),
    }
    if robot_cfg.get("type") == "sim":
        from drivers.sim_env import SimUnavailableError, make_sim_task

        from expo_robot.config import ConfigError

        try:
            task = make_sim_task(robot_cfg, cfg.get("task"))
        except SimUnavailableError as e:  # the operator's robot config names an env that cannot be built
            module = str(robot_cfg.env_id).partition(":")[0] if ":" in str(robot_cfg.env_id) else ""
            hint = f" (is the module '{module}' importable: installed, or on PYTHONPATH?)" if module else ""
            raise ConfigError(f"{e}{hint}") from e
        try:
            low, high = robot_cfg.get("action_low"), robot_cfg.get("action_high")
            return RobotContract(
                **common,
                state_dim=task.state_dim,
                action_dim=task.action_dim,
                state_names=task.state_names,
                action_low=[float(x) for x in (low if low else task.action_low)],
                action_high=[float(x) for x in (high if high else task.action_high)],
            )
        finally:
            task.close()
    from drivers.robot import make_robot

    robot = make_robot(robot_cfg, cfg.get("task"))  # not connected: the declared dimensions only
    return RobotContract(
        **common,
        state_dim=getattr(robot, "state_dim", None),
        action_dim=getattr(robot, "action_dim", None),
        state_names=robot.state_names,
        action_low=_floats(getattr(robot, "action_low", None)),
        action_high=_floats(getattr(robot, "action_high", None)),
    )


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(x) for x in values]


def schema_lines(c: RobotContract) -> list[str]:
    """The contract as text (`expo-robot dataset schema robot=...`)."""
    s = "?" if c.state_dim is None else c.state_dim
    a = "?" if c.action_dim is None else c.action_dim
    lines = [
        f"dataset contract for robot '{c.robot}'" + (f" (env {c.env_id})" if c.env_id else ""),
        "a LeRobotDataset v3 (lerobot's LeRobotDataset.create / add_frame / save_episode / finalize);",
        "frame t: observation s_t, the action a_t executed from it, and what followed it (next.*)",
        "",
        f"fps        {c.fps}",
        f"robot_type {' or '.join(repr(t) for t in c.robot_types)}  (LeRobotDataset.create(robot_type=...))",
        "",
        "required:",
        f"  {STATE:<30} float32 [{s}]  names: the state layout below (recorded names are checked)",
        f"  {ACTION:<30} float32 [{a}]  the action executed" + _bounds(c),
        *[
            f"  {IMAGES}{k:<{30 - len(IMAGES)}} image uint8 {list(v)}  (cameras= of the session)"
            for k, v in c.cameras.items()
        ],
        "optional (defaults when absent):",
        f"  {REWARD:<30} float32 [1]  reward for a_t (0; success then = last reward >= 1)",
        f"  {DONE:<30} bool [1]     the episode ended after a_t: only on the last frame",
        f"  {TRUNCATED:<30} bool [1]     ended by a step/time limit, not by the task (not terminal)",
        *[f"  {k:<30} bool [1]     {FLAG_MEANING[k]}" for k in FLAGS],
        f"  {CAPTURE_TIME:<30} float64 [1]  monotonic capture time of s_t (real-time recordings)",
        f"  {ENV_STATE:<30} float32 [k]  appended to {STATE} when stored apart (gym-hil recordings)",
        "",
        f"state layout ({s} values):",
    ]
    if c.state_names:
        lines += [f"  {i:>3}  {name}" for i, name in enumerate(c.state_names)]
    else:
        lines.append("  as the robot's driver reports it (joint order of the robot class)")
    return lines


def _bounds(c: RobotContract) -> str:
    if c.action_low is None or c.action_high is None:
        return ""
    return f", within {[round(x, 4) for x in c.action_low]} .. {[round(x, 4) for x in c.action_high]}"


@dataclass
class FitReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def dataset_fit(root: str | Path, c: RobotContract) -> FitReport:
    """What differs between a dataset's recorded metadata (meta/info.json) and the robot's contract."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise DatasetError(
            f"{root} is not a LeRobotDataset (no meta/info.json); give the dataset's root folder"
        )
    info = json.loads(info_path.read_text())
    features, report = info.get("features", {}), FitReport()
    for name in (STATE, ACTION):
        if name not in features:
            report.problems.append(f"no '{name}' feature (features: {', '.join(features)})")
    if report.problems:
        return report
    _check_vector(report, features, STATE, c.state_dim, extra=features.get(ENV_STATE))
    _check_vector(report, features, ACTION, c.action_dim)
    _check_names(report, features, c)
    if int(info.get("fps", 0)) != c.fps:
        report.problems.append(f"recorded at {info.get('fps')} Hz, robot '{c.robot}' runs at {c.fps} Hz")
    recorded = info.get("robot_type")
    if not recorded:
        report.notes.append("no robot_type recorded: the robot it was recorded on cannot be checked")
    elif recorded not in c.robot_types:
        report.problems.append(
            f"recorded on robot_type '{recorded}', this robot is {' / '.join(repr(t) for t in c.robot_types)}"
        )
    for cam, shape in c.cameras.items():
        got = features.get(IMAGES + cam)
        if got is None or tuple(got["shape"]) != tuple(shape):
            report.problems.append(
                f"camera '{cam}': the session sees {list(shape)}, the dataset holds "
                f"{'nothing' if got is None else list(got['shape'])} as {IMAGES}{cam}"
            )
    return report


def _check_vector(
    report: FitReport, features: dict, name: str, want: int | None, extra: dict | None = None
) -> None:
    spec = features[name]
    if spec.get("dtype") not in FLOATS:
        report.problems.append(f"'{name}' is {spec.get('dtype')}, expected float32")
    width = int(spec["shape"][0]) + (int(extra["shape"][0]) if extra else 0)
    if want is not None and width != want:
        what = f"{name} + {ENV_STATE}" if extra else name
        report.problems.append(f"'{what}' has {width} values, the robot's has {want}")


def _check_names(report: FitReport, features: dict, c: RobotContract) -> None:
    names = features[STATE].get("names")
    if isinstance(names, dict):  # lerobot also allows {"axes": [...]}
        names = next(iter(names.values()), None)
    if ENV_STATE in features:
        names = None if names is None else [*names, *(features[ENV_STATE].get("names") or [])]
    if not names:
        report.notes.append(f"no names recorded for '{STATE}': its layout cannot be checked")
        return
    if c.state_names is None or len(names) != len(c.state_names):
        return  # unknown layout, or a width problem reported already
    differ = [i for i, (a, b) in enumerate(zip(names, c.state_names, strict=True)) if a != b]
    if differ:
        i = differ[0]
        report.problems.append(
            f"'{STATE}' layout differs at {len(differ)} of {len(names)} places, first at index {i}: the dataset has "
            f"'{names[i]}', robot '{c.robot}' has '{c.state_names[i]}' (`expo-robot dataset schema robot={c.robot}`)"
        )


def require_fit(paths: list[Path], c: RobotContract) -> None:
    """Refuse datasets that do not fit the robot, with `dataset check`'s message (a ConfigError: the operator named
    them)."""
    from expo_robot.config import ConfigError

    for path in paths:
        problems = dataset_fit(path, c).problems
        if problems:
            raise ConfigError(
                f"{path} does not fit robot '{c.robot}': {'; '.join(problems)} "
                f"(`expo-robot dataset check {path} robot={c.robot}`)"
            )
