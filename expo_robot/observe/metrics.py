"""Metrics of a run: every scalar goes to `run_dir/metrics.jsonl` and to TensorBoard event files in `run_dir/tb`.

One JSON object per line: {"step": env_steps, "time": unix_seconds, "source": "actor", "episode/success": 1.0, ...}.
The JSONL file is what plots and reports read; TensorBoard is for watching a session live
(`tensorboard --logdir runs/`). Several processes (actor, learner, driver) may log into the same run folder: each
flush appends whole lines with one O_APPEND write, so lines from different processes never interleave, and each
process gets its own TensorBoard event file.

Key names the plots and reports understand are the constants below; any other key is logged too (TensorBoard tag
`<source>/<key>`). Learner keys ending in `loss` go to the loss panel, keys with a path part `q` or `q_*`
(`q/mean`, `edit/q`, `critic/q_max`) to the Q panel.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = ("actor", "learner", "driver", "eval")
RESERVED = ("step", "time", "source")
METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"

# Per episode (actor or eval source), logged once when the episode ends.
EPISODE_SUCCESS = "episode/success"  # 1.0 or 0.0
EPISODE_RETURN = "episode/return"
EPISODE_LENGTH = "episode/length"  # steps
EPISODE_INTERVENTIONS = "episode/interventions"  # steps in the episode with an operator intervention
# Periodic success-rate evaluations during a session (eval source): successes and episodes count.
EVAL_SUCCESSES = "eval/successes"
EVAL_EPISODES = "eval/episodes"
# Timing, logged per step or for a subsample of steps (driver or actor).
LOOP_PERIOD_MS = "loop/period_ms"
POLICY_LATENCY_MS = "policy/latency_ms"
# Safety events (driver): one record per event, the reason as a string.
SAFETY_EVENT = "safety/event"
# Learner progress.
LEARNER_UPDATES = "learner/updates"
BUFFER_SIZE = "buffer/size"


_LINE, _FLUSH, _CLOSE = object(), object(), object()  # writer-queue message kinds


class MetricsError(ValueError):
    """A metric record or metrics file is malformed; the message says which one and how to fix it."""


def _clean(key: str, value: Any) -> float | int | str | bool | None:
    """JSON-safe value: numpy/torch scalars become Python numbers; non-finite floats become null (valid JSON)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise MetricsError(f"metric '{key}' has type {type(value).__name__}; log numbers, bools or short strings")


class MetricsLogger:
    """Thread-safe scalar logger for one process. Use as a context manager or call close().

    log(step, source, **values): `step` is the env-step counter (the x axis of every plot), `source` one of SOURCES.
    log() only formats the line and queues it (~10 µs), so a control loop can call it; a background thread writes
    the JSONL lines and TensorBoard scalars and flushes both every `flush_s` seconds, so a crash loses at most that.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, flush_s: float = 2.0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self.flush_s = flush_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._tb = None
        if tensorboard:
            # Imported here: torch is slow to import and the driver process may not need TensorBoard.
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / TB_DIR), flush_secs=max(1, int(flush_s)))
        self._thread = threading.Thread(target=self._write_loop, name="metrics-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a process that forgets close() still writes its last lines

    def log(self, step: int, source: str, /, **values: Any) -> None:
        if source not in SOURCES:
            raise MetricsError(f"unknown metrics source '{source}'; use one of {', '.join(SOURCES)}")
        clash = [k for k in values if k in RESERVED]
        if clash:
            raise MetricsError(f"metric names {clash} are reserved ({', '.join(RESERVED)}); rename them")
        if self._closed:
            raise MetricsError(f"MetricsLogger for {self.run_dir} is closed; log before close()")
        record = {"step": int(step), "time": time.time(), "source": source}
        record.update({k: _clean(k, v) for k, v in values.items()})
        self._queue.put((_LINE, (json.dumps(record, allow_nan=False) + "\n", record)))

    def flush(self, timeout_s: float = 10.0) -> None:
        """Block until everything logged so far is written (JSONL and TensorBoard)."""
        if self._closed:
            return
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        if not done.wait(timeout_s):
            log.warning("metrics writer did not flush within %.1f s (disk slow or full?)", timeout_s)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._queue.put((_CLOSE, None))
        self._thread.join(timeout=30.0)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Writer thread: the only code that touches the file and the SummaryWriter.
    def _write_loop(self) -> None:
        lines: list[str] = []
        deadline = time.monotonic() + self.flush_s
        while True:
            try:
                kind, payload = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                kind, payload = _FLUSH, None
            if kind is _LINE:
                lines.append(payload[0])
                self._add_scalars(payload[1])
                if time.monotonic() < deadline:
                    continue
            self._write(lines)
            lines = []
            deadline = time.monotonic() + self.flush_s
            if kind is _CLOSE:
                self._shutdown()
                return
            if payload is not None and kind is _FLUSH:
                payload.set()

    def _add_scalars(self, record: dict) -> None:
        if self._tb is None:
            return
        step, source = record["step"], record["source"]
        for key, value in record.items():
            if key not in RESERVED and isinstance(value, int | float):  # bools are ints: 0/1
                self._tb.add_scalar(f"{source}/{key}", float(value), step, walltime=record["time"])

    def _write(self, lines: list[str]) -> None:
        try:
            if lines:
                data = "".join(lines).encode()
                written = os.write(self._fd, data)
                while written < len(data):  # rare partial write (signal): write the rest
                    written += os.write(self._fd, data[written:])
            if self._tb is not None:
                self._tb.flush()
        except OSError as e:  # a full disk must not kill the session: report and keep going
            log.error("could not write metrics to %s (%s); %d lines lost", self.path, e, len(lines))

    def _shutdown(self) -> None:
        os.close(self._fd)
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path, source: str | None = None) -> list[dict]:
    """All records of run_dir/metrics.jsonl (optionally one source), in file order. A torn last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise MetricsError(
            f"no {METRICS_FILE} in {run_dir}; is this a run folder of a session that logged metrics?"
        )
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # a process died mid-write: the last line may be cut
                log.warning("%s: last line %d is incomplete, skipped", path, number)
                continue
            raise MetricsError(f"{path}:{number}: not JSON ({e})") from e
        if source is None or record.get("source") == source:
            records.append(record)
    return records


def series(records: Iterable[Mapping], key: str, source: str | None = None) -> tuple[list[int], list[float]]:
    """(steps, values) of one numeric key, sorted by step; records without the key (or with null) are skipped."""
    pairs = [
        (int(r["step"]), float(r[key]))
        for r in records
        if (source is None or r.get("source") == source) and isinstance(r.get(key), int | float)
    ]
    pairs.sort(key=lambda p: p[0])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def keys(records: Iterable[Mapping], source: str | None = None) -> list[str]:
    """Sorted metric names present in the records (optionally of one source)."""
    found: set[str] = set()
    for r in records:
        if source is None or r.get("source") == source:
            found.update(k for k in r if k not in RESERVED)
    return sorted(found)
