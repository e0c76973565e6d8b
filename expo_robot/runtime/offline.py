"""Offline (teleop) data for a session: which datasets, and how their episodes become chunk transitions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from expo_robot.data.chunking import chunk_transitions
from expo_robot.data.dataset_io import Episode, load_episodes

log = logging.getLogger(__name__)


def offline_dataset_paths(cfg: DictConfig) -> list[Path]:
    """The configured datasets, or (simulated robot, none configured) scripted teleop data made on demand."""
    paths = [Path(p) for p in cfg.session.offline.datasets]
    if paths:
        return paths
    if cfg.robot.type != "sim":
        raise FileNotFoundError(
            "no offline datasets configured for a real robot: record demonstrations with `expo-robot record` and "
            "pass them as session.offline.datasets=[path,...]"
        )
    from expo_robot.data.seed import ensure_seed_dataset

    off = cfg.session.offline
    return [ensure_seed_dataset(cfg.robot, cfg.task, off.episodes, off.sigma, cfg.seed, root=off.root)]


def episode_chunks(
    episode: Episode, chunk: int, gamma: float, stride: int = 1
) -> dict[str, np.ndarray] | None:
    """Chunk transitions of one recorded episode (every start when stride=1), or None if it has no full step.

    lerobot stores no state after the last action: a terminated episode bootstraps nothing there, so its last state
    stands in; a truncated one loses its last action.
    """
    states, actions, rewards, flags = episode.states, episode.actions, episode.rewards, episode.intervention
    if episode.terminated:
        states = np.concatenate([states, states[-1:]])
    else:
        actions, rewards, flags = actions[:-1], rewards[:-1], flags[:-1]
    if len(actions) == 0:
        return None
    return chunk_transitions(states, actions, rewards, episode.terminated, chunk, gamma, stride, flags)


def load_offline_transitions(
    paths: list[Path], chunk: int, gamma: float
) -> tuple[dict[str, np.ndarray], dict]:
    """All chunk transitions of the datasets, and a short summary (episodes, frames, success rate)."""
    episodes = load_episodes(paths)
    parts = [c for c in (episode_chunks(ep, chunk, gamma) for ep in episodes) if c is not None]
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
