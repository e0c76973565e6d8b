"""Episode recording in a process of its own, for a control process (the actor).

An EpisodeWriter saves on a thread, but that thread shares its process's interpreter lock: turning an episode into
parquet holds the lock for long stretches, and a policy step that needs the lock waits. Measured in a 50 Hz real-time
session on 2 cores: policy step p99 5 ms without recording, 26-99 ms with it in the actor's process. A
RecorderProcess keeps EpisodeWriter's caller API (add_frame, end_episode, discard_episode, close); each ended episode
goes as one wire message (a msgpack header and raw arrays, no pickle) to a child process that owns the EpisodeWriter,
and the child reports every save or failure back. Both sides check the other's values, not only the message's form:
an episode whose fields disagree on its length, or a report naming an episode never sent, is counted by reason,
logged and dropped (the child says which episode it dropped, so the parent does not wait for it). The child runs at a low priority and follows its parent's death
(it then saves what it already received and finalizes the dataset).

    python -m expo_robot.runtime.recorder_process '<json settings>'   # the child; started by RecorderProcess
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from expo_robot.data.dataset_io import FLAGS, DatasetError, EpisodeWriter
from expo_robot.runtime.messages import MessageRejected
from expo_robot.runtime.scheduling import die_with_parent
from expo_robot.transport.sockets import Channel, Pair
from expo_robot.transport.wire import FieldSpec, Schema

log = logging.getLogger(__name__)
MAX_EPISODE_BYTES = 1 << 30  # a 1000-step episode with two 96x96 cameras is ~55 MB
MAX_PENDING = 64  # ended episodes the child has not saved yet; more means the disk cannot keep up
MAX_ERROR_CHARS = 500  # a child's error message, as the parent shows it
MAX_TASK_CHARS = 1000
STATUS = {t: Schema(t, meta={"index": int}) for t in ("ready", "saved", "closed")} | {
    "failed": Schema("failed", meta={"error": str}),
    "dropped": Schema("dropped", meta={"reason": str}),
}


def episode_schema(state_dim: int, action_dim: int, cameras: dict[str, tuple[int, ...]]) -> dict[str, Schema]:
    """What the child accepts: one ended episode ([T, ...] per field) or the order to finish. A record keeps what
    happened, so non-finite values are not a reason to drop it (the learner's own checks are elsewhere)."""
    fields = {
        "state": FieldSpec("float32", (None, state_dim), finite=False),
        "action": FieldSpec("float32", (None, action_dim), finite=False),
        "reward": FieldSpec("float32", (None,), finite=False),
        "capture_time": FieldSpec("float64", (None,), finite=False),
        **{flag: FieldSpec("bool", (None,)) for flag in FLAGS},
        **{f"image.{k}": FieldSpec("uint8", (None, *shape)) for k, shape in cameras.items()},
    }
    return {
        "episode": Schema("episode", fields, {"truncated": bool, "task": str}, max_bytes=MAX_EPISODE_BYTES),
        "close": Schema("close"),
    }


def _dims(features: dict) -> tuple[int, int, dict[str, tuple[int, ...]]]:
    cams = {k.split(".")[-1]: tuple(v["shape"]) for k, v in features.items() if v["dtype"] == "image"}
    return features["observation.state"]["shape"][0], features["action"]["shape"][0], cams


class RecorderProcess:
    """EpisodeWriter's caller API, with the writer in a child process, started at once and ready after
    `wait_ready()`. Raises DatasetError as EpisodeWriter does: when the child cannot open the dataset (a folder that
    is not a matching one), and on the call after a save failed or the child died."""

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict,
        task: str,
        robot_type: str | None = None,
        nice: int = 10,
        start_timeout_s: float = 120.0,
    ):
        self.root, self.task = Path(root), task
        self._state_dim, self._action_dim, self._cameras = _dims(features)
        self._frames: list[dict] = []
        self._error: str | None = None
        self._closed = False
        self.queued_episodes = self.saved_episodes = 0
        # a socket file in a private (0700) folder: no other user's process can reach the episodes channel
        self._ipc_dir = tempfile.mkdtemp(prefix="expo-recorder-")
        self._chan = Pair(
            f"ipc://{self._ipc_dir}/episodes",
            STATUS,
            bind=True,
            hwm=MAX_PENDING,
            name=f"recorder:{self.root.name}",
        )
        endpoint = self._chan.sock.last_endpoint.decode()
        settings = {"endpoint": endpoint, "root": str(self.root), "fps": int(fps), "features": features,
                    "task": task, "robot_type": robot_type, "nice": nice, "parent": os.getpid()}  # fmt: skip
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "expo_robot.runtime.recorder_process", json.dumps(settings)]
        )
        self._ready = False
        self.start_timeout_s = start_timeout_s
        self.dropped: Counter = (
            Counter()
        )  # reports of the child dropped for their values, and episodes it dropped

    def wait_ready(self) -> None:
        """Block until the child has opened the dataset (importing lerobot takes ~13 s here): call it before the
        control loop starts, which then never waits for it. Raises DatasetError if the child could not open it."""
        if self._ready:
            return
        first = self._chan.recv(self.start_timeout_s)
        error = self._start_problem(first)
        if error:
            self._closed = True
            self._stop_child()
            raise DatasetError(f"recorder for {self.root} did not start: {error}")
        self._ready = True
        self.queued_episodes = self.saved_episodes = first.meta["index"]

    def _start_problem(self, first) -> str:
        if first is None:
            return f"no answer within {self.start_timeout_s:.0f} s"
        if first.type == "failed":
            return first.meta["error"][:MAX_ERROR_CHARS]
        if first.type != "ready" or first.meta["index"] < 0:
            return f"its first message was '{first.type}' ({first.meta}), not 'ready' with an episode count"
        return ""

    # ── caller side (control loop) ─────────────────────────────────────────────
    def add_frame(self, state, action, reward: float, *, intervention=False, success=False, safety_stop=False,
                  capture_time: float | None = None, images: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
        """Keep one frame of the episode in progress (images copied: a received frame is a socket buffer)."""
        self._raise_if_failed()
        if sorted(images or {}) != sorted(self._cameras):
            raise DatasetError(
                f"frame has images of {sorted(images or {})}, the dataset's cameras are {sorted(self._cameras)}"
            )
        t = time.monotonic() if capture_time is None else capture_time
        self._frames.append({"state": state, "action": action, "reward": reward, "intervention": intervention,
                             "success": success, "safety_stop": safety_stop, "capture_time": t,
                             **{f"image.{k}": np.array(v, np.uint8) for k, v in (images or {}).items()}})  # fmt: skip

    @property
    def frames_in_episode(self) -> int:
        return len(self._frames)

    def end_episode(self, task: str | None = None, truncated: bool | None = None) -> int:
        """Send the episode in progress to the child; return its episode index. Never waits for the disk."""
        self.wait_ready()
        self._raise_if_failed()
        if not self._frames:
            raise DatasetError("end_episode() with no frames: call add_frame() first (or discard_episode())")
        if self._closed:
            raise DatasetError(f"recorder for {self.root} is closed")
        arrays = {k: np.stack([np.asarray(f[k]) for f in self._frames]) for k in self._frames[0]}
        arrays = {k: v.astype(_DTYPES.get(k, v.dtype), copy=False) for k, v in arrays.items()}
        meta = {"truncated": bool(truncated), "task": task or self.task}
        if self.queued_episodes - self.saved_episodes >= MAX_PENDING or not self._chan.send(
            "episode", arrays, meta
        ):
            raise DatasetError(
                f"{MAX_PENDING} episodes are waiting to be saved to {self.root}: the disk is too slow or the "
                "recorder process is stuck; check its log"
            )
        self._frames = []
        self.queued_episodes += 1
        return self.queued_episodes - 1

    def discard_episode(self) -> None:
        self._frames = []

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the child has saved every episode sent (tests); True if it did in time."""
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while (
            self.saved_episodes < self.queued_episodes and self._error is None and time.monotonic() < deadline
        ):
            self._absorb(self._chan.recv(min(0.2, max(0.0, deadline - time.monotonic()))))
        self._raise_if_failed()
        return self.saved_episodes >= self.queued_episodes

    def close(self, timeout: float | None = 120.0) -> None:
        """Have the child save everything sent, finalize the dataset and exit."""
        if self._closed:
            return
        self._closed = True
        if not self._ready:  # nothing was sent (end_episode waits for ready): no dataset to finish
            self._stop_child()
            return
        if self._frames:
            log.info("dropping %d frames of an episode that was not ended", len(self._frames))
            self._frames = []
        if self._proc.poll() is None:
            self._chan.send("close")
            deadline = time.monotonic() + (timeout or 120.0)
            while self._proc.poll() is None and time.monotonic() < deadline:
                self._absorb(self._chan.recv(0.2))
        try:
            self._raise_if_failed()  # (reads the last reports first)
        finally:
            self._stop_child()

    # ── status from the child ──────────────────────────────────────────────────
    def _absorb(self, msg) -> None:
        if msg is None:
            return
        if msg.type == "failed":
            self._error = msg.meta["error"][:MAX_ERROR_CHARS] or "unknown error"
        elif msg.type == "dropped":
            if self.queued_episodes <= self.saved_episodes:  # it has nothing of ours to drop
                self.dropped["report.dropped"] += 1
                return
            self.queued_episodes -= 1  # (not waited for)
            self.dropped[f"episode.{msg.meta['reason'][:40]}"] += 1
            log.error("recorder for %s dropped an episode (%s; the recorder's log says more)", self.root,
                      msg.meta["reason"][:40])  # fmt: skip
        elif 0 <= msg.meta["index"] <= self.queued_episodes:
            self.saved_episodes = max(self.saved_episodes, msg.meta["index"])
        else:  # more saved than were ever sent
            self.dropped["report.index"] += 1
            log.warning("recorder for %s: dropped a report of %d saved episodes (%d sent)", self.root,
                        msg.meta["index"], self.queued_episodes)  # fmt: skip

    def _raise_if_failed(self) -> None:
        while self._ready and (msg := self._chan.recv(0.0)) is not None:
            self._absorb(msg)
        if self._error is None and self._proc.poll() not in (None, 0):
            self._error = f"the recorder process exited with code {self._proc.returncode}"
        if self._error is not None:
            raise DatasetError(f"saving episodes to {self.root} failed: {self._error}")

    def _stop_child(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._chan.close()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)


_DTYPES = {"state": np.float32, "action": np.float32, "reward": np.float32, "capture_time": np.float64,
           **dict.fromkeys(FLAGS, np.bool_)}  # fmt: skip


# ── the child ──────────────────────────────────────────────────────────────────
def serve(settings: dict) -> int:
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when recording ends
    die_with_parent()  # SIGTERM when the parent dies: what it sent is then saved and the dataset finalized
    if os.getppid() != settings["parent"]:  # it died before that
        stop.append(True)
    os.nice(max(0, int(settings.get("nice", 10)) - os.nice(0)))  # saving is never urgent
    features = {k: {**v, "shape": tuple(v["shape"])} for k, v in settings["features"].items()}
    state_dim, action_dim, cams = _dims(features)
    chan = Pair(settings["endpoint"], episode_schema(state_dim, action_dim, cams), hwm=MAX_PENDING,
                 name="recorder.child")  # fmt: skip
    try:
        writer = EpisodeWriter(settings["root"], settings["fps"], features, settings["task"],
                               robot_type=settings.get("robot_type"))  # fmt: skip
    except DatasetError as e:
        chan.send("failed", meta={"error": str(e)})
        chan.close(linger_s=5.0)
        return 1
    chan.send("ready", meta={"index": writer.saved_episodes})
    reported, failed = writer.saved_episodes, False
    try:
        while True:
            msg = chan.recv(0.0 if stop else 0.2)
            if writer.saved_episodes != reported:  # the writer's thread saves a backlog back to back
                reported = writer.saved_episodes
                chan.send("saved", meta={"index": reported})
            if msg is None:
                if stop:  # the parent is gone: what it sent is saved, then the dataset is finalized
                    break
                continue
            if msg.type == "close":
                break
            if not failed:
                failed = not _queue(writer, msg, chan)
    finally:
        try:
            writer.close()
            chan.send("closed", meta={"index": writer.saved_episodes})
        except DatasetError as e:
            chan.send("failed", meta={"error": str(e)})
        chan.close(linger_s=5.0)
    return 0


def check_episode(arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Raise MessageRejected unless every field holds the same number (>= 1) of frames, flags are 0 or 1 and the
    task is a sensible string (the schema has checked names, dtypes and per-frame shapes)."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if not lengths["state"]:
        raise MessageRejected("empty", "an episode has at least one frame")
    if len(set(lengths.values())) != 1:
        raise MessageRejected("lengths", f"fields disagree on the episode's length: {lengths}")
    if any(arrays[flag].view(np.uint8).max() > 1 for flag in FLAGS):
        raise MessageRejected("flags", "flags must be 0 or 1")
    if not 0 < len(meta["task"]) <= MAX_TASK_CHARS:
        raise MessageRejected("task", f"the task must be 1-{MAX_TASK_CHARS} characters")


def _queue(writer: EpisodeWriter, msg, chan: Channel) -> bool:
    """Hand an episode to the writer: False if saving failed (reported; nothing more is saved). An episode out of
    range is dropped, reported and logged, and the next one is saved."""
    a = msg.arrays
    try:
        check_episode(a, msg.meta)
    except MessageRejected as e:
        chan.counters[f"invalid.{e.reason}"] += 1
        log.error("recorder: dropped an episode: %s", e)
        chan.send("dropped", meta={"reason": e.reason})
        return True
    cams = [k[len("image.") :] for k in a if k.startswith("image.")]
    try:
        for t in range(len(a["state"])):
            writer.add_frame(
                a["state"][t], a["action"][t], float(a["reward"][t]), intervention=bool(a["intervention"][t]),
                success=bool(a["success"][t]), safety_stop=bool(a["safety_stop"][t]),
                capture_time=float(a["capture_time"][t]), images={k: a[f"image.{k}"][t] for k in cams} or None,
            )  # fmt: skip
        writer.end_episode(msg.meta["task"], truncated=msg.meta["truncated"])
    except DatasetError as e:
        log.error("recorder: %s", e)
        chan.send("failed", meta={"error": str(e)})
        return False
    return True


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(serve(json.loads(sys.argv[1])))
