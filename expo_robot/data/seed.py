"""Simulated teleop seed data: the scripted noisy operator records a LeRobotDataset, made on demand and cached.

    path = ensure_seed_dataset(cfg.robot, cfg.task, episodes=50, sigma=None, seed=0)   # sigma None: task default
    episodes = load_episodes(path)

The cache folder is named by every argument that changes the data (task, robot kwargs, episode count, sigma, seed and
the operator version), so a changed request never reuses stale data. A dataset is generated in a temporary folder and
renamed into place only when complete: an interrupted generation leaves no half dataset behind. data/ is git-ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from drivers.sim_env import make_sim_task
from expo_robot.data.dataset_io import EpisodeWriter, dataset_features
from expo_robot.data.scripted_operator import OPERATOR_VERSION, default_sigma, make_operator

log = logging.getLogger(__name__)
INFO_FILE = "seed.json"  # written last: its presence marks a complete dataset


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def seed_key(robot_cfg: Any, task_cfg: Any, episodes: int, sigma: float, seed: int) -> str:
    """Folder name of a seed dataset: readable prefix + hash of everything that changes its content."""
    content = {
        "env_id": robot_cfg.get("env_id"),
        "env_kwargs": _plain(robot_cfg.get("env_kwargs")),
        "fps": robot_cfg.get("fps"),
        "max_episode_steps": task_cfg.get("max_episode_steps"),
        "task": task_cfg.get("description"),
        "episodes": int(episodes),
        "sigma": float(sigma),
        "seed": int(seed),
        "operator": OPERATOR_VERSION,
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{robot_cfg.get('name')}_{task_cfg.get('name')}_n{episodes}_sigma{sigma:g}_seed{seed}_{digest}"


def ensure_seed_dataset(
    robot_cfg: Any,
    task_cfg: Any,
    episodes: int,
    sigma: float | None,
    seed: int,
    root: str | Path = "data/seed",
) -> Path:
    """Path of the seed dataset for these arguments, generating it first if it is not cached yet."""
    if sigma is None:
        sigma = default_sigma(robot_cfg)
    path = Path(root) / seed_key(robot_cfg, task_cfg, episodes, sigma, seed)
    if (path / INFO_FILE).exists():
        log.info("seed data: using cached %s", path)
        return path
    if path.exists():  # a folder without the marker is from an older, interrupted layout: rebuild it
        shutil.rmtree(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        summary = generate_seed_dataset(robot_cfg, task_cfg, episodes, sigma, seed, tmp)
        (tmp / INFO_FILE).write_text(json.dumps(summary, indent=2))
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same dataset first: use theirs
            if not (path / INFO_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("seed data: %s (success %.2f)", path, summary["success_rate"])
    return path


def generate_seed_dataset(
    robot_cfg: Any, task_cfg: Any, episodes: int, sigma: float, seed: int, out: Path
) -> dict:
    """Record `episodes` scripted-operator episodes into a new LeRobotDataset at `out`; return a summary."""
    task = make_sim_task(robot_cfg, task_cfg)
    operator = make_operator(robot_cfg, sigma, np.random.default_rng(seed))
    features = dataset_features(task.state_dim, task.action_dim)
    max_steps = int(task_cfg.get("max_episode_steps") or 1000)
    t0, steps, successes = time.monotonic(), 0, 0
    # durable=False: one finalize at the end is faster, and the rename above already makes the cache atomic.
    writer = EpisodeWriter(
        out, fps=int(robot_cfg.get("fps", 10)), features=features, task=str(task_cfg.get("description", "")),
        robot_type=str(robot_cfg.get("name")), durable=False,
    )  # fmt: skip
    try:
        with _progress(episodes, f"seed data {robot_cfg.get('name')} sigma={sigma:g}") as advance:
            for ep in range(episodes):
                n, success = _record_episode(task, operator, writer, seed * 100_003 + ep, max_steps)
                writer.end_episode()
                steps, successes = steps + n, successes + success
                advance(success)
        writer.close()
    finally:
        task.close()
    seconds = time.monotonic() - t0
    return {
        "env_id": robot_cfg.get("env_id"),
        "episodes": episodes,
        "frames": steps,
        "sigma": sigma,
        "seed": seed,
        "success_rate": successes / max(episodes, 1),
        "seconds": round(seconds, 2),
        "steps_per_s": round(steps / max(seconds, 1e-9), 1),
    }


def _record_episode(task: Any, operator: Any, writer: EpisodeWriter, reset_seed: int, max_steps: int):
    state = task.reset(reset_seed)
    operator.reset()
    for t in range(max_steps):
        action = operator.act(task, state)
        result = task.step(action)
        truncated = (result.truncated or t == max_steps - 1) and not result.terminated
        writer.add_frame(
            state, action, result.reward, done=result.terminated or truncated, truncated=truncated,
            success=result.success,
        )  # fmt: skip
        state = result.state
        if result.terminated or truncated:
            return t + 1, bool(result.success)
    return max_steps, False


@contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[bool], None]]:
    """A rich progress bar on a terminal; elsewhere (CI, logs, pipes) a log line every ~10%."""
    done = {"n": 0, "ok": 0}
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
        )
        with Progress(*columns, TimeRemainingColumn(), transient=True) as bar:
            task_id = bar.add_task(description, total=total, rate="")

            def advance(success: bool) -> None:
                done["n"], done["ok"] = done["n"] + 1, done["ok"] + int(success)
                bar.update(task_id, advance=1, rate=f"success {done['ok'] / done['n']:.2f}")

            yield advance
        return
    step = max(1, total // 10)

    def advance_log(success: bool) -> None:
        done["n"], done["ok"] = done["n"] + 1, done["ok"] + int(success)
        if done["n"] % step == 0 or done["n"] == total:
            log.info(
                "%s: %d/%d episodes, success %.2f", description, done["n"], total, done["ok"] / done["n"]
            )

    yield advance_log
