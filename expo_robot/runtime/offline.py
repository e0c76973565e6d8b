"""Offline (teleop) data for a session: which datasets, and how their episodes become chunk transitions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from expo_robot.agent.encoder import resize_frames
from expo_robot.data.chunking import episode_chunks
from expo_robot.data.contract import require_fit, robot_contract
from expo_robot.data.dataset_io import load_episodes
from expo_robot.data.scripted_operator import OPERATORS

log = logging.getLogger(__name__)


def check_offline_data(cfg: DictConfig, paths: list[Path] | None = None) -> list[Path]:
    """The datasets a session or pretraining will use (`paths`, else session.offline.datasets), refused at start when
    they do not fit the robot (the dataset contract), or when there are none and none can be made. [] = the scripted
    seed data will be made (a simulated robot with a scripted operator)."""
    paths = [Path(p) for p in cfg.session.offline.datasets] if paths is None else paths
    if paths:
        missing = [str(p) for p in paths if not (p / "meta" / "info.json").exists()]
        if missing:
            raise FileNotFoundError(  # before any loading starts: one line, not a traceback from deep in the reader
                f"session.offline.datasets: not a LeRobotDataset (no meta/info.json): {', '.join(missing)}; "
                "give each dataset's root folder"
            )
        require_fit(paths, robot_contract(cfg))
        return paths
    record = f"record some (`expo-robot record robot={cfg.robot.name} teleop=keyboard`)"
    if cfg.robot.type != "sim":
        raise FileNotFoundError(
            f"no offline datasets configured for a real robot: {record} and pass them as "
            "session.offline.datasets=[path,...]"
        )
    if cfg.robot.get("env_id") not in OPERATORS:
        raise FileNotFoundError(
            f"no demonstrations for robot '{cfg.robot.name}' ({cfg.robot.get('env_id')}), and no scripted operator "
            f"to make them: {record}, or write a LeRobotDataset with lerobot (`expo-robot dataset schema "
            f"robot={cfg.robot.name}`), then pass session.offline.datasets=[path,...]"
        )
    return paths


def offline_dataset_paths(
    cfg: DictConfig, on_episode: Callable[[int, int, int], None] | None = None
) -> list[Path]:
    """The configured datasets, or (simulated robot, none configured) scripted teleop data made on demand
    (`on_episode(done, total, successes)` after each episode it makes)."""
    paths = check_offline_data(cfg)
    if paths:
        return paths
    from expo_robot.data.seed import ensure_seed_dataset

    off = cfg.session.offline
    cameras = list((cfg.get("cameras") or {}).get("list") or [])  # rendered into the seed data (type sim)
    path = ensure_seed_dataset(
        cfg.robot, cfg.task, off.episodes, off.sigma, cfg.seed, root=off.root, cameras=cameras,
        workers=int(off.get("workers") or 1), on_episode=on_episode,
    )  # fmt: skip
    return [path]


def load_offline_transitions(
    paths: list[Path], chunk: int, gamma: float, cameras: dict | None = None, resize_to: dict | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """All chunk transitions of the datasets (every start, stride 1), and a summary (episodes, frames, success).
    `cameras` (name -> (H, W, 3)): the agent sees these cameras, so their frames come too (and must be there), resized
    to `resize_to` (the agent's sizes) when given."""
    episodes = load_episodes(paths, images=bool(cameras))
    for ep in episodes if cameras else ():
        got = {k: tuple(v.shape[1:]) for k, v in ep.images.items()}
        if any(got.get(k) != tuple(shape) for k, shape in cameras.items()):
            raise ValueError(
                f"the offline datasets {', '.join(map(str, paths))} hold camera frames {got}; this session's cameras "
                f"are {dict(cameras)}: record with the same cameras (names and sizes), or set cameras= to match"
            )
        if resize_to:
            ep.images = {k: resize_frames(v, resize_to[k]) for k, v in ep.images.items() if k in resize_to}
    parts = [c for c in (episode_chunks(ep, chunk, gamma, stride=1) for ep in episodes) if c is not None]
    if not parts:
        raise ValueError(f"the offline datasets {', '.join(map(str, paths))} hold no usable episode")
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    summary = {
        "episodes": len(episodes),
        "frames": int(sum(len(ep) for ep in episodes)),
        "success_rate": float(np.mean([ep.success for ep in episodes])),
        "transitions": len(batch["obs"]),
    }
    log.info("offline data: %s", summary)
    return batch, summary
