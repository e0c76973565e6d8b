"""Episodes in and out of LeRobotDataset v3 (through the lerobot package), without ever stalling a control loop.

Writing: `EpisodeWriter.add_frame` only appends to an in-memory list; `end_episode` hands the finished episode to a
background thread that runs lerobot's `add_frame` / `save_episode`. So the loop never waits for a save, and the next
episode starts at once.

Crash safety. lerobot keeps its data and episode-metadata parquet files open across episodes and writes their footers
only in `finalize()`; a process killed before that leaves files no reader can open. With `durable=True` (the
default) the writer finalizes after every episode and resumes the dataset (`LeRobotDataset.resume`), so each
episode lives in its own closed files and a kill loses at most the episode in progress (or the one being saved at
that instant, ~0.1 s window). A resume reads the whole episode index, so it costs more as a dataset grows: while
episodes wait in the queue (a fast robot, hundreds of episodes) the writer saves them back to back and finalizes
once it has caught up, or at least every `durable_every_s`, instead of falling further behind. `repair_dataset` removes what such a kill can leave (a footer-less file, an info.json
ahead of the episode index) and runs before any append; `check_dataset` reports it.

Frame layout (the convention of lerobot's RL recordings): frame t holds the observation s_t, the action a_t actually
executed, `next.reward` r_t and `next.done` (the episode ended after a_t; `next.truncated` says it ended by a limit,
not by the task). The state after the last action is not stored; see `Episode`. Camera frames s_t are image features
`observation.images.<camera>` (uint8 [H, W, 3], stored as PNG in the parquet files, not as video: no encoder).
"""

from __future__ import annotations

import atexit
import io
import itertools
import os
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

STATE, ACTION, REWARD, DONE, TRUNCATED = (
    "observation.state",
    "action",
    "next.reward",
    "next.done",
    "next.truncated",
)
FLAGS = ("intervention", "success", "safety_stop")
CAPTURE_TIME = "capture_time"  # optional: monotonic seconds at which the frame's state was captured
# Names other recorders use for the same things (lerobot HIL-SERL, gym_manipulator), tried in order when reading.
ALIASES = {
    REWARD: (REWARD, "reward"),
    DONE: (DONE, "done"),
    TRUNCATED: (TRUNCATED, "truncated"),
    "intervention": ("intervention", "complementary_info.is_intervention", "is_intervention"),
    "success": ("success", "next.success", "complementary_info.success"),
    "safety_stop": ("safety_stop",),
}
IMAGES = "observation.images."  # + camera name: one image feature per camera
ENV_STATE = "observation.environment_state"  # appended to observation.state when a dataset stores it apart
# Only used for decoding, which the writer never does. Naming it stops lerobot from probing torchcodec (and logging
# a long traceback where it cannot load) at every per-episode resume.
_VIDEO_BACKEND = "pyav"


class DatasetError(RuntimeError):
    """A dataset cannot be written or read as asked; the message says what to do."""


def dataset_features(
    state_dim: int,
    action_dim: int,
    state_names: Sequence[str] | None = None,
    action_names: Sequence[str] | None = None,
    extra: dict[str, dict] | None = None,
    capture_time: bool = False,
) -> dict[str, dict]:
    """lerobot feature spec of our recordings; `extra` adds e.g. camera features ({"dtype": "video", ...}).

    lerobot's own `timestamp` is always frame_index / fps; `capture_time=True` also stores the monotonic time each
    state was captured, so `dataset check` can validate the real cadence of a real-time recording.
    """

    def scalar(dtype: str) -> dict:
        return {"dtype": dtype, "shape": (1,), "names": None}

    features = {
        STATE: {
            "dtype": "float32",
            "shape": (int(state_dim),),
            "names": list(state_names) if state_names else None,
        },
        ACTION: {
            "dtype": "float32",
            "shape": (int(action_dim),),
            "names": list(action_names) if action_names else None,
        },
        REWARD: scalar("float32"),
        DONE: scalar("bool"),
        TRUNCATED: scalar("bool"),
        **{flag: scalar("bool") for flag in FLAGS},
    }
    if capture_time:
        features[CAPTURE_TIME] = scalar("float64")
    features.update(extra or {})
    return features


def camera_features(cameras: dict[str, Sequence[int]]) -> dict[str, dict]:
    """Image features for cameras {name: (H, W, 3)} (a RobotSpec's `cameras`): pass as dataset_features(extra=)."""
    names = ["height", "width", "channels"]
    return {
        f"{IMAGES}{k}": {"dtype": "image", "shape": tuple(map(int, v)), "names": names}
        for k, v in cameras.items()
    }


@dataclass
class _PendingEpisode:
    frames: list[dict]
    task: str


class EpisodeWriter:
    """Record episodes into a LeRobotDataset at `root` (created, or appended to after `repair_dataset`).

    writer = EpisodeWriter("data/teleop", fps=10, features=dataset_features(21, 4), task="Pick up the cube.")
    writer.add_frame(state, action, reward, done=False, intervention=False)   # microseconds, never blocks
    writer.end_episode()        # queued; saved by the background thread
    writer.close()              # waits for the queue, finalizes

    A failure in the background thread is raised (as DatasetError) by the next call on the writer.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict],
        task: str,
        robot_type: str | None = None,
        durable: bool = True,
        durable_every_s: float = 30.0,
        max_pending: int = 64,
    ):
        import datasets
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        datasets.disable_progress_bars()  # per-episode "Map" bars from the save thread would clutter the console
        self.root = Path(root)
        self.fps = int(fps)
        self.task = task
        self.durable = durable
        self.durable_every_s = float(durable_every_s)
        self._last_durable = time.monotonic()
        self._repo_id = f"local/{self.root.name}"
        if self.root.is_dir() and not (self.root / "meta" / "info.json").exists():
            if any(self.root.iterdir()):
                raise DatasetError(
                    f"{self.root} exists and is not a LeRobotDataset: record into a new folder"
                )
            self.root.rmdir()  # lerobot creates the folder itself
        if (self.root / "meta" / "info.json").exists():
            repair_dataset(self.root)
            self._ds = LeRobotDataset.resume(self._repo_id, root=self.root, video_backend=_VIDEO_BACKEND)
            _require_same_features(self._ds.meta.features, features, self.fps, self._ds.meta.fps, self.root)
        else:
            self._ds = LeRobotDataset.create(
                self._repo_id, fps=self.fps, features=features, root=self.root, robot_type=robot_type,
                use_videos=True, video_backend=_VIDEO_BACKEND,
            )  # fmt: skip
        self._features = self._ds.meta.features
        self._has_capture_time = CAPTURE_TIME in self._features
        self._cameras = [
            k[len(IMAGES) :]
            for k, v in self._features.items()
            if k.startswith(IMAGES) and v["dtype"] == "image"
        ]
        self.saved_episodes = self._ds.meta.total_episodes
        self._queued_episodes = self.saved_episodes
        self._frames: list[dict] = []
        self._queue: queue.Queue[_PendingEpisode | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"episode-writer:{self.root.name}", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)  # an uncaught exception in the caller still saves the queued episodes

    # ── caller side (control loop) ─────────────────────────────────────────────
    def add_frame(
        self,
        state: np.ndarray,
        action: np.ndarray,
        reward: float,
        *,
        done: bool = False,
        truncated: bool = False,
        intervention: bool = False,
        success: bool = False,
        safety_stop: bool = False,
        capture_time: float | None = None,
        images: dict[str, np.ndarray] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Append one frame to the episode in progress. `action` is the action actually executed.

        `done` may be left False on the last frame: `end_episode` sets it. `capture_time` (monotonic seconds) is
        stored when the dataset has that feature; it defaults to now. `images`: camera name -> uint8 [H, W, 3],
        one per camera feature of the dataset (copied: a received frame is a view on a socket buffer).
        """
        self._raise_if_failed()
        images = images or {}
        if sorted(images) != sorted(self._cameras):
            raise DatasetError(
                f"frame has images of {sorted(images)}, the dataset's cameras are {self._cameras}"
            )
        frame = {
            STATE: np.array(state, dtype=np.float32),
            ACTION: np.array(action, dtype=np.float32),
            REWARD: np.array([reward], dtype=np.float32),
            DONE: np.array([done]),
            TRUNCATED: np.array([truncated]),
            "intervention": np.array([intervention]),
            "success": np.array([success]),
            "safety_stop": np.array([safety_stop]),
        }
        if self._has_capture_time:
            t = time.monotonic() if capture_time is None else capture_time
            frame[CAPTURE_TIME] = np.array([t], dtype=np.float64)
        for name, image in images.items():
            frame[IMAGES + name] = np.array(image, dtype=np.uint8)
        if extra:
            frame.update(extra)
        self._frames.append(frame)

    @property
    def frames_in_episode(self) -> int:
        return len(self._frames)

    def end_episode(self, task: str | None = None, truncated: bool | None = None) -> int:
        """Queue the episode in progress for saving; return its episode index. Never waits for the disk.

        The last frame is marked `next.done`; `truncated` (if given) says whether the episode was cut by a limit
        rather than ended by the task.
        """
        self._raise_if_failed()
        if not self._frames:
            raise DatasetError("end_episode() with no frames: call add_frame() first (or discard_episode())")
        if self._closed:
            raise DatasetError(f"writer for {self.root} is closed")
        last = self._frames[-1]
        last[DONE] = np.array([True])
        if truncated is not None:
            last[TRUNCATED] = np.array([truncated])
        try:
            self._queue.put_nowait(_PendingEpisode(self._frames, task or self.task))
        except queue.Full as e:
            raise DatasetError(
                f"{self._queue.maxsize} episodes are waiting to be saved to {self.root}: the disk is too slow "
                "or the writer thread is stuck; check the log"
            ) from e
        self._frames = []
        self._queued_episodes += 1
        return self._queued_episodes - 1

    def discard_episode(self) -> None:
        """Drop the episode in progress (re-record)."""
        self._frames = []

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued episode is saved (for tests and shutdown); True if drained in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        self._raise_if_failed()
        return True

    def close(self, timeout: float | None = 120.0) -> None:
        """Save everything queued (the episode in progress is dropped: it was never ended), then finalize."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._frames:
            log.info("dropping %d frames of an episode that was not ended", len(self._frames))
            self._frames = []
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("episode writer for %s did not finish within %s s", self.root, timeout)
        self._raise_if_failed()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise DatasetError(f"saving episodes to {self.root} failed: {self._error}") from self._error

    # ── background thread ──────────────────────────────────────────────────────
    def _run(self) -> None:
        try:  # saving is never urgent: on a busy machine this thread yields the CPU to the control loop
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # (Linux: per-thread niceness)
        except (OSError, AttributeError):  # not Linux, or not permitted: saving still happens off the loop
            log.debug("could not lower the save thread's priority")
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    self._ds.finalize()
                    return
                if self._error is None:
                    self._save(item)
            except (
                Exception
            ) as e:  # kept and re-raised on the caller's thread; the loop must not die silently
                log.exception("saving an episode to %s failed", self.root)
                self._error = e
            finally:
                self._queue.task_done()

    def _save(self, episode: _PendingEpisode) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        for frame in episode.frames:
            self._ds.add_frame({**frame, "task": episode.task})
        self._ds.save_episode()
        self.saved_episodes += 1
        caught_up = self._queue.qsize() == 0  # (the finalize below would only delay the waiting episodes)
        if self.durable and (caught_up or time.monotonic() - self._last_durable >= self.durable_every_s):
            self._ds.finalize()  # close the files of the saved episodes, reopen for the next ones
            self._ds = LeRobotDataset.resume(self._repo_id, root=self.root, video_backend=_VIDEO_BACKEND)
            self._last_durable = time.monotonic()


def _require_same_features(found: dict, wanted: dict, fps: int, found_fps: int, root: Path) -> None:
    from lerobot.utils.constants import DEFAULT_FEATURES  # timestamp, frame_index, ... added by lerobot

    def shape_dtype(spec: dict) -> dict:
        return {k: (v["dtype"], tuple(v["shape"])) for k, v in spec.items() if k not in DEFAULT_FEATURES}

    if shape_dtype(found) != shape_dtype(wanted) or fps != found_fps:
        raise DatasetError(
            f"{root} already holds a dataset with other features or fps ({found_fps} Hz, "
            f"{shape_dtype(found)}) than this recording ({fps} Hz, {shape_dtype(wanted)}); "
            "record into a new folder"
        )


# ── repair ─────────────────────────────────────────────────────────────────────
def _readable(path: Path) -> bool:
    try:
        pq.ParquetFile(path)
        return True
    except Exception:  # pyarrow raises several types for a truncated file
        return False


def find_damage(root: str | Path) -> list[str]:
    """What a killed writer left behind (unreadable parquet files, info.json ahead of the episode index)."""
    root = Path(root)
    problems = [
        f"unreadable (unfinished) file {p.relative_to(root)}"
        for p in sorted(root.glob("**/*.parquet"))
        if not _readable(p)
    ]
    if problems:
        return problems
    info = json.loads((root / "meta" / "info.json").read_text())
    episodes = _episode_index(root)
    n_saved = len(episodes["episode_index"])
    if info["total_episodes"] != n_saved:
        problems.append(f"info.json counts {info['total_episodes']} episodes, meta/episodes holds {n_saved}")
    referenced = {(int(c), int(f)) for c, f in zip(episodes["data/chunk_index"], episodes["data/file_index"])}
    for p in sorted((root / "data").glob("chunk-*/file-*.parquet")):
        if _chunk_file(p) not in referenced:
            problems.append(f"data file {p.relative_to(root)} belongs to no saved episode")
    return problems


def repair_dataset(root: str | Path) -> list[str]:
    """Undo what a kill during a save left behind; return what was fixed (empty if the dataset was intact).

    Only the episode being saved at the kill is lost: its unfinished or unreferenced files are removed and
    info.json / stats.json are rebuilt from the episodes that were fully saved.
    """
    from lerobot.datasets.compute_stats import aggregate_stats
    from lerobot.datasets.io_utils import cast_stats_to_numpy, load_info, write_info, write_stats

    root = Path(root)
    problems = find_damage(root)
    if not problems:
        return []
    for p in sorted(root.glob("**/*.parquet")):
        if not _readable(p):
            p.unlink()
    episodes = _episode_index(root, with_stats=True)
    referenced = {(int(c), int(f)) for c, f in zip(episodes["data/chunk_index"], episodes["data/file_index"])}
    for p in sorted((root / "data").glob("chunk-*/file-*.parquet")):
        if _chunk_file(p) not in referenced:
            p.unlink()
    n_saved = len(episodes["episode_index"])
    info = load_info(root)
    info.total_episodes = n_saved
    info.total_frames = int(sum(episodes["length"]))
    info.splits = {"train": f"0:{info.total_episodes}"}
    write_info(info, root)
    if n_saved:
        write_stats(
            aggregate_stats([_row_stats(episodes, i, cast_stats_to_numpy) for i in range(n_saved)]), root
        )
    elif (root / "meta" / "stats.json").exists():
        (root / "meta" / "stats.json").unlink()
    for leftover in root.glob("tmp*"):  # lerobot's temporary video folders
        shutil.rmtree(leftover, ignore_errors=True)
    log.warning("repaired %s: %s", root, "; ".join(problems))
    return problems


def _chunk_file(path: Path) -> tuple[int, int]:
    return int(path.parent.name.split("-")[1]), int(path.stem.split("-")[1])


def _episode_index(root: Path, with_stats: bool = False) -> dict[str, list]:
    """Columns of meta/episodes (all files), sorted by episode index."""
    import pyarrow as pa

    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    tables = [pq.read_table(p) for p in files]
    if not tables:
        return {"episode_index": [], "length": [], "data/chunk_index": [], "data/file_index": []}
    table = pa.concat_tables(tables, promote_options="permissive")
    if not with_stats:
        table = table.select([c for c in table.column_names if not c.startswith("stats/")])
    cols = table.to_pydict()
    order = np.argsort(cols["episode_index"], kind="stable")
    return {k: [v[i] for i in order] for k, v in cols.items()}


def _row_stats(episodes: dict[str, list], i: int, cast) -> dict:
    stats: dict[str, dict] = {}
    for key, values in episodes.items():
        if key.startswith("stats/"):
            _, feature, stat = key.split("/", 2)
            stats.setdefault(feature, {})[stat] = values[i]
    return cast(stats)


# ── reading ────────────────────────────────────────────────────────────────────
@dataclass
class Episode:
    """One episode as the learner sees it. Row t: state s_t, action a_t, reward r_t for that action.

    The state after the last action is not stored (lerobot's layout), so the last row is a complete transition only
    when `terminated` (no bootstrap needed, any next state will do); for a truncated or cut-off episode the last row
    has no next state and `transitions()` drops it.
    """

    states: np.ndarray  # f32[T, S]
    actions: np.ndarray  # f32[T, A]
    rewards: np.ndarray  # f32[T]
    terminated: bool  # ended by the task (success or failure state), not by a step/time limit
    success: bool
    intervention: np.ndarray  # bool[T]
    safety_stop: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # bool[T]
    task: str = ""
    source: str = ""  # dataset root
    index: int = 0  # episode_index in that dataset
    # camera -> uint8 [T, H, W, 3], frame t seen at state s_t (datasets with image features; else empty)
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)

    def transitions(self) -> dict[str, np.ndarray]:
        """(obs, action, reward, next_obs, done) arrays of the complete transitions of this episode."""
        n = len(self) if self.terminated else len(self) - 1
        next_states = np.concatenate(
            [self.states[1:], self.states[-1:]]
        )  # last row: placeholder when terminated
        done = np.zeros(len(self), dtype=bool)
        done[-1] = self.terminated
        return {
            "obs": self.states[:n],
            "action": self.actions[:n],
            "reward": self.rewards[:n],
            "next_obs": next_states[:n],
            "done": done[:n],
            "intervention": self.intervention[:n],
        }


@dataclass
class DatasetSummary:
    root: Path
    fps: int
    features: dict[str, dict]
    task_names: list[str]
    episodes: list[Episode]
    timestamps: list[np.ndarray]  # per episode, seconds from its start
    frame_index: list[np.ndarray]
    flags: dict[str, list[np.ndarray]]  # per flag, per episode (only flags the dataset stores)
    done: list[np.ndarray | None]
    truncated: list[np.ndarray | None] = field(default_factory=list)
    capture_time: list[np.ndarray] | None = None  # per episode, when the dataset stores it


def _first(columns: Iterable[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in columns), None)


def read_dataset(root: str | Path, images: bool = True) -> DatasetSummary:
    """Read a local LeRobotDataset (v3) into per-episode arrays, mapping other recorders' feature names.

    images: decode the image features (`observation.images.<camera>`) into Episode.images; video features are
    not read."""
    import pyarrow as pa

    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise DatasetError(
            f"{root} is not a LeRobotDataset (no meta/info.json); give the dataset's root folder"
        )
    damage = find_damage(root)
    if damage:
        raise DatasetError(
            f"{root} was left damaged by a killed writer ({'; '.join(damage)}); "
            f"run `expo-robot dataset repair {root}` (loses only the episode that was being saved)"
        )
    info = json.loads(info_path.read_text())
    features = info["features"]
    for needed in (STATE, ACTION):
        if needed not in features:
            raise DatasetError(f"{root} has no '{needed}' feature (features: {', '.join(features)})")
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    wanted = [STATE, ENV_STATE, ACTION, "episode_index", "frame_index", "timestamp", "index", "task_index"]
    wanted.append(CAPTURE_TIME)
    wanted += [n for names in ALIASES.values() for n in names]
    cameras = [k for k, v in features.items() if images and k.startswith(IMAGES) and v["dtype"] == "image"]
    wanted += cameras
    tables = [pq.read_table(p, columns=[c for c in wanted if c in features]) for p in files]
    cols = pa.concat_tables(tables).to_pydict() if tables else {c: [] for c in wanted if c in features}
    tasks = _task_names(root)
    order = np.lexsort((np.asarray(cols["frame_index"]), np.asarray(cols["episode_index"])))
    ep_index = np.asarray(cols["episode_index"])[order]

    def column(name: str | None, dtype: Any) -> np.ndarray | None:
        if name is None:
            return None
        arr = np.asarray(cols[name], dtype=dtype)[order]
        return arr.reshape(len(order), -1).squeeze(-1) if arr.ndim > 1 and arr.shape[1] == 1 else arr

    if len(order) == 0:
        return DatasetSummary(root, int(info["fps"]), features, tasks, [], [], [], {}, [])
    states = column(STATE, np.float32).reshape(len(order), -1)
    if ENV_STATE in cols:
        states = np.concatenate([states, column(ENV_STATE, np.float32).reshape(len(order), -1)], axis=1)
    actions = column(ACTION, np.float32).reshape(len(order), -1)
    names = {key: _first(cols, aliases) for key, aliases in ALIASES.items()}
    rewards = column(names[REWARD], np.float32)
    done = column(names[DONE], bool)
    truncated = column(names[TRUNCATED], bool)
    flags = {f: column(names[f], bool) for f in FLAGS}
    task_index = column("task_index", np.int64)

    timestamps, frame_index = column("timestamp", np.float64), column("frame_index", np.int64)
    summary = DatasetSummary(root, int(info["fps"]), features, tasks, [], [], [], {}, [])
    bounds = np.flatnonzero(np.diff(ep_index)) + 1
    for sl in _slices(bounds, len(order)):
        n = sl.stop - sl.start
        ep_rewards = rewards[sl] if rewards is not None else np.zeros(n, np.float32)
        ep_success = _episode_success(flags["success"], ep_rewards, sl)
        ended = bool(done[sl][-1]) if done is not None else ep_success
        ep_truncated = bool(truncated[sl][-1]) if truncated is not None else False
        summary.episodes.append(
            Episode(
                states=states[sl],
                actions=actions[sl],
                rewards=ep_rewards,
                terminated=ended and not ep_truncated,
                success=ep_success,
                intervention=flags["intervention"][sl]
                if flags["intervention"] is not None
                else np.zeros(n, bool),
                safety_stop=flags["safety_stop"][sl]
                if flags["safety_stop"] is not None
                else np.zeros(n, bool),
                task=tasks[int(task_index[sl][0])] if task_index is not None and tasks else "",
                source=str(root),
                index=int(ep_index[sl.start]),
                images={k[len(IMAGES) :]: _decode_images(cols[k], order[sl]) for k in cameras},
            )
        )
        summary.timestamps.append(timestamps[sl])
        summary.frame_index.append(frame_index[sl])
        summary.done.append(done[sl] if done is not None else None)
        summary.truncated.append(truncated[sl] if truncated is not None else None)
    if CAPTURE_TIME in cols:
        capture = column(CAPTURE_TIME, np.float64)
        summary.capture_time = [capture[sl] for sl in _slices(bounds, len(order))]
    summary.flags = {
        f: [arr[sl] for sl in _slices(bounds, len(order))] for f, arr in flags.items() if arr is not None
    }
    return summary


def _decode_images(cells: list[dict], rows: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] from lerobot's embedded image cells ({"bytes": PNG, "path": ...})."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(cells[i]["bytes"])).convert("RGB")) for i in rows])


def _slices(bounds: np.ndarray, total: int) -> list[slice]:
    edges = [0, *bounds.tolist(), total]
    return [slice(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _episode_success(success: np.ndarray | None, rewards: np.ndarray, sl: slice) -> bool:
    # Without a success flag, a sparse task reward of 1 on the last frame is the usual success signal.
    return bool(success[sl].any()) if success is not None else bool(rewards[-1] >= 1.0)


def _task_names(root: Path) -> list[str]:
    path = root / "meta" / "tasks.parquet"
    if not path.exists():
        return []
    table = pq.read_table(path).to_pandas()
    return [str(t) for t in table.sort_values("task_index").index]


def load_episodes(paths: str | Path | Sequence[str | Path], images: bool = True) -> list[Episode]:
    """Episodes of one or more local LeRobotDatasets (roots), in dataset then episode order.

    Needs `observation.state` and `action`; `observation.environment_state` is appended to the state when present
    (gym-hil recordings keep it apart); rewards, done/truncated and the flags are read under the names in ALIASES
    and default to zeros/False when absent (success then falls back to a final reward >= 1). Camera images come
    in Episode.images (`images=False` skips decoding them).
    """
    roots = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not roots:
        raise DatasetError("load_episodes() needs at least one dataset path")
    episodes: list[Episode] = []
    dims: tuple[int, int] | None = None
    for root in roots:
        for ep in read_dataset(root, images).episodes:
            shape = (ep.states.shape[1], ep.actions.shape[1])
            if dims is not None and shape != dims:
                raise DatasetError(
                    f"{root} has state/action sizes {shape}, the datasets before it {dims}: "
                    "seed a run only with datasets of the same robot and task"
                )
            dims = shape
            episodes.append(ep)
    return episodes
