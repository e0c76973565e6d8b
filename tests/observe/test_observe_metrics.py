"""MetricsLogger: JSONL round trip, TensorBoard event files with the scalars, threads, periodic flush, errors."""

import json
import threading
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from expo_robot.observe.metrics import (
    METRICS_FILE,
    TB_DIR,
    MetricsError,
    MetricsLogger,
    keys,
    read_metrics,
    series,
)

torch.set_num_threads(1)


def test_jsonl_round_trip_and_tensorboard_scalars(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for step in range(0, 50, 10):
            log.log(step, "learner", **{"critic/loss": 1.0 / (step + 1), "updates": step * 2})
        log.log(
            50, "actor", **{"episode/success": True, "episode/return": np.float32(0.5), "stop": "timeout"}
        )
    records = read_metrics(tmp_path)
    assert len(records) == 6
    first = records[0]
    assert first["step"] == 0 and first["source"] == "learner" and first["critic/loss"] == 1.0
    assert abs(first["time"] - time.time()) < 60
    assert records[-1] == {**records[-1], "episode/success": True, "episode/return": 0.5, "stop": "timeout"}
    assert series(records, "critic/loss") == ([0, 10, 20, 30, 40], [1.0, 1 / 11, 1 / 21, 1 / 31, 1 / 41])
    assert keys(records, "actor") == ["episode/return", "episode/success", "stop"]
    assert read_metrics(tmp_path, "actor") == records[-1:]

    events = EventAccumulator(str(tmp_path / TB_DIR))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"learner/critic/loss", "learner/updates", "actor/episode/success", "actor/episode/return"} <= set(
        tags
    )
    loss = events.Scalars("learner/critic/loss")
    assert [e.step for e in loss] == [0, 10, 20, 30, 40]
    assert loss[2].value == pytest.approx(1 / 21)
    assert events.Scalars("actor/episode/success")[0].value == 1.0
    assert "actor/stop" not in tags  # strings go to the JSONL only


def test_non_finite_values_become_null(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, "learner", loss=float("nan"), q=float("inf"), ok=1.5)
    line = (tmp_path / METRICS_FILE).read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line)["loss"] is None and json.loads(line)["ok"] == 1.5
    assert series(read_metrics(tmp_path), "loss") == ([], [])


def test_threads_and_two_loggers_never_interleave_lines(tmp_path):
    a = MetricsLogger(tmp_path, tensorboard=False, flush_s=0.01)
    b = MetricsLogger(tmp_path, tensorboard=False, flush_s=0.01)  # e.g. actor and learner processes
    padding = "x" * 300  # long lines make a torn write visible

    def work(logger, source, worker):
        for i in range(400):
            logger.log(i, source, worker=worker, i=i, padding=padding)

    threads = [threading.Thread(target=work, args=(lg, src, w)) for w, (lg, src) in
               enumerate([(a, "actor"), (a, "actor"), (b, "learner"), (b, "learner")])]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    b.close()
    records = read_metrics(tmp_path)  # raises if any line were torn
    assert len(records) == 1600
    for worker in range(4):
        mine = [r["i"] for r in records if r["worker"] == worker]
        assert mine == list(range(400))  # every record, in order per thread


def test_flushes_without_being_asked(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False, flush_s=0.05)
    log.log(7, "driver", **{"loop/period_ms": 20.1})
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not (tmp_path / METRICS_FILE).read_text():
        time.sleep(0.02)
    assert read_metrics(tmp_path)[0]["loop/period_ms"] == 20.1
    log.close()


def test_flush_makes_records_visible_at_once(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False, flush_s=3600)
    log.log(1, "eval", **{"eval/successes": 3, "eval/episodes": 5})
    log.flush()
    assert read_metrics(tmp_path)[0]["eval/successes"] == 3
    log.close()


def test_bad_records_are_refused_with_a_reason(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    with pytest.raises(MetricsError, match="unknown metrics source"):
        log.log(0, "robot", x=1)
    with pytest.raises(MetricsError, match="reserved"):
        log.log(0, "actor", step=3)
    with pytest.raises(MetricsError, match="type list"):
        log.log(0, "actor", x=[1, 2])
    log.close()
    log.close()  # idempotent
    with pytest.raises(MetricsError, match="closed"):
        log.log(0, "actor", x=1)


def test_read_skips_a_torn_last_line_but_not_a_broken_middle(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "time": 0, "source": "actor", "a": 1}\n{"step": 2, "ti')
    assert [r["a"] for r in read_metrics(tmp_path)] == [1]
    path.write_text('{"step": 1, "ti\n{"step": 2, "time": 0, "source": "actor", "a": 1}\n')
    with pytest.raises(MetricsError, match=":1: not JSON"):
        read_metrics(tmp_path)
    with pytest.raises(MetricsError, match=r"no metrics\.jsonl"):
        read_metrics(tmp_path / "missing")


def test_log_is_cheap_enough_for_a_control_loop(tmp_path):
    """log() only queues: TensorBoard and file writes happen on the writer thread (~300 us per call if inline)."""
    batches = []
    with MetricsLogger(tmp_path) as log:
        for batch in range(5):  # best of 5 batches: robust to other processes sharing the CPU
            start = time.perf_counter()
            for i in range(200):
                log.log(batch * 200 + i, "actor", **{"policy/latency_ms": 1.5, "loop/period_ms": 20.0})
            batches.append((time.perf_counter() - start) / 200 * 1e6)
    assert min(batches) < 100, f"log() took {min(batches):.0f} us per call"
    assert len(read_metrics(tmp_path)) == 1000


def test_two_processes_tensorboard_files_side_by_side(tmp_path):
    """Actor and learner each write their own event file in run_dir/tb; TensorBoard reads both."""
    with MetricsLogger(tmp_path) as actor, MetricsLogger(tmp_path) as learner:
        actor.log(10, "actor", **{"episode/return": 1.0})
        learner.log(10, "learner", **{"critic/loss": 0.5})
    files = sorted((tmp_path / TB_DIR).glob("events.out.tfevents.*"))
    assert len(files) == 2
    events = EventAccumulator(str(tmp_path / TB_DIR))
    events.Reload()
    assert {"actor/episode/return", "learner/critic/loss"} <= set(events.Tags()["scalars"])
