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
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from drivers.sim_env import RenderProfile, make_sim_task
from expo_robot.data.dataset_io import EpisodeWriter, camera_features, dataset_features
from expo_robot.data.scripted_operator import OPERATOR_VERSION, default_sigma, make_operator

log = logging.getLogger(__name__)
INFO_FILE = "seed.json"  # written last: its presence marks a complete dataset


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def _render_settings(robot_cfg: Any) -> dict:
    return RenderProfile.from_config(robot_cfg.get("render")).settings()


def seed_key(
    robot_cfg: Any, task_cfg: Any, episodes: int, sigma: float, seed: int, cameras: list | None = None
) -> str:
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
        # (state-only keys are unchanged: caches stay valid); frames are drawn as the robot's render profile says
        **({"cameras": _plain(cameras), "render": _render_settings(robot_cfg)} if cameras else {}),
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
    workers: int = 1,
    cameras: list | None = None,
    on_episode: Callable[[int, int, int], None] | None = None,
) -> Path:
    """Path of the seed dataset for these arguments, generating it first if it is not cached yet.

    `sigma=None` takes the task's default (DEFAULT_SIGMA, ~40% success). `workers` > 1 runs the simulator in that
    many spawned processes (the data do not depend on it; the calling script needs an `if __name__ == "__main__"`
    guard, as for any spawned multiprocessing). `cameras` (configs/cameras `list` entries of type sim) renders each
    state's frame into the dataset (~0.5 s a frame here: keep such seed sets small). `on_episode(done, total,
    successes)` is called after each generated episode (a live status).
    """
    if sigma is None:
        sigma = default_sigma(robot_cfg)
    cameras = _plain(cameras) or []
    path = Path(root) / seed_key(robot_cfg, task_cfg, episodes, sigma, seed, cameras)
    if (path / INFO_FILE).exists():
        log.info("seed data: using cached %s", path)
        return path
    if path.exists():  # a folder without the marker is an interrupted generation: rebuild it
        shutil.rmtree(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        summary = generate_seed_dataset(
            robot_cfg, task_cfg, episodes, sigma, seed, tmp, workers, cameras, on_episode
        )
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


@dataclass
class SimEpisode:
    states: np.ndarray
    actions: np.ndarray  # executed (clipped) actions
    rewards: np.ndarray
    success: np.ndarray  # per frame
    terminated: bool
    truncated: bool
    images: dict[str, np.ndarray]  # camera -> uint8 [T, H, W, 3], the frame of each state


def generate_seed_dataset(
    robot_cfg: Any,
    task_cfg: Any,
    episodes: int,
    sigma: float,
    seed: int,
    out: Path,
    workers: int = 1,
    cameras: list | None = None,
    on_episode: Callable[[int, int, int], None] | None = None,
) -> dict:
    """Record `episodes` scripted-operator episodes into a new LeRobotDataset at `out`; return a summary."""
    robot, task_plain, cameras = _plain(robot_cfg), _plain(task_cfg), _plain(cameras) or []
    workers = max(1, min(int(workers), episodes))
    t0, steps, successes = time.monotonic(), 0, 0
    shapes = {c["name"]: (int(c["height"]), int(c["width"]), 3) for c in cameras}
    with _episode_source(robot, task_plain, sigma, seed, episodes, workers, cameras) as (dims, source):
        # durable=False: one finalize at the end is faster; the rename in ensure_seed_dataset makes it atomic.
        writer = EpisodeWriter(
            out, fps=int(robot.get("fps", 10)), features=dataset_features(*dims, extra=camera_features(shapes)),
            task=str(task_plain.get("description", "")), robot_type=str(robot.get("name")), durable=False,
        )  # fmt: skip
        with _progress(episodes, f"seed data {robot.get('name')} sigma={sigma:g}") as advance:
            for done, ep in enumerate(source, 1):
                _write(writer, ep)
                steps, successes = steps + len(ep.actions), successes + bool(ep.success[-1])
                advance(bool(ep.success[-1]))
                if on_episode is not None:
                    on_episode(done, episodes, successes)
        writer.close()
    seconds = time.monotonic() - t0
    return {
        "env_id": robot.get("env_id"),
        "episodes": episodes,
        "frames": steps,
        "sigma": sigma,
        "seed": seed,
        "success_rate": successes / max(episodes, 1),
        "seconds": round(seconds, 2),
        "steps_per_s": round(steps / max(seconds, 1e-9), 1),
        "workers": workers,
    }


@contextmanager
def _episode_source(
    robot: dict, task: dict, sigma: float, seed: int, episodes: int, workers: int, cameras: list
):
    """((state_dim, action_dim, state layout), iterator of SimEpisode in episode order), simulated here or in worker
    processes."""
    with _Simulator(robot, task, sigma, seed, cameras) as sim:
        dims = (sim.task.state_dim, sim.task.action_dim, sim.task.state_names)
        if workers == 1:
            yield dims, (sim.run(ep) for ep in range(episodes))
            return
    # Spawned (not forked) workers: MuJoCo/EGL and torch state do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(robot, task, sigma, seed, cameras)) as pool:
        yield dims, pool.imap(_run_in_worker, range(episodes))


class _Simulator:
    def __init__(self, robot: dict, task: dict, sigma: float, seed: int, cameras: list):
        cfg_robot, cfg_task = OmegaConf.create(robot), OmegaConf.create(task)
        self.cameras = cameras
        self.task = make_sim_task(cfg_robot, cfg_task)
        self.robot, self.sigma, self.seed = cfg_robot, sigma, seed
        self.max_steps = int(cfg_task.get("max_episode_steps") or 1000)

    def run(self, ep: int) -> SimEpisode:
        # Per-episode seeds: episode `ep` is the same whichever process runs it.
        operator = make_operator(self.robot, self.sigma, np.random.default_rng([self.seed, ep]))
        return _simulate(self.task, operator, self.seed * 100_003 + ep, self.max_steps, self.cameras)

    def __enter__(self) -> _Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.task.close()


_WORKER_SIM: _Simulator | None = None


def _init_worker(robot: dict, task: dict, sigma: float, seed: int, cameras: list) -> None:
    global _WORKER_SIM
    _WORKER_SIM = _Simulator(robot, task, sigma, seed, cameras)


def _run_in_worker(ep: int) -> SimEpisode:
    return _WORKER_SIM.run(ep)


def _simulate(task: Any, operator: Any, reset_seed: int, max_steps: int, cameras: list = ()) -> SimEpisode:
    state = task.reset(reset_seed)
    operator.reset()
    states, actions, rewards, success = [], [], [], []
    frames: dict[str, list[np.ndarray]] = {c["name"]: [] for c in cameras}
    for t in range(max_steps):
        for c in cameras:  # the frame of the state the action answers
            frames[c["name"]].append(task.render(c.get("camera"), int(c["height"]), int(c["width"])))
        action = operator.act(task, state)
        result = task.step(action)
        states.append(state)
        actions.append(action)
        rewards.append(result.reward)
        success.append(result.success)
        state = result.state
        if result.terminated or result.truncated or t == max_steps - 1:
            break
    return SimEpisode(
        np.asarray(states, np.float32), np.asarray(actions, np.float32), np.asarray(rewards, np.float32),
        np.asarray(success, bool), bool(result.terminated), not result.terminated,
        {name: np.stack(f) for name, f in frames.items()},
    )  # fmt: skip


def _write(writer: EpisodeWriter, ep: SimEpisode) -> None:
    for t in range(len(ep.actions)):
        writer.add_frame(
            ep.states[t], ep.actions[t], float(ep.rewards[t]), success=bool(ep.success[t]),
            images={name: f[t] for name, f in ep.images.items()} or None,
        )  # fmt: skip
    writer.end_episode(truncated=ep.truncated)


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
