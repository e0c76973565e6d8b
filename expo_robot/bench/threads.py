"""`expo-robot bench threads [STEPS [ROUNDS]]`: the actor's policy step while a learner trains beside it, with the
learner's compute threads left to the libraries' defaults (torch and OpenMP/BLAS: one thread per CPU) and set as a
session sets them (runtime.scheduling.learner.threads; null = the CPUs the driver and the actor leave).

The two settings are measured alternately in the same run, ROUNDS times each (default 300 steps, 3 rounds): on a
machine shared with other work only the ratio between them is comparable. Both learners run at the session's
learner priority; the actor (this process) at the actor's, with its own threads.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from expo_robot.bench.policy import _agent, _filled_buffer, time_policy_steps
from expo_robot.observe.stats import latency_summary
from expo_robot.runtime import scheduling
from expo_robot.runtime.scheduling import THREAD_ENV, freeze_heap, thread_env

SETTINGS = ("default", "explicit")


def _learner(
    agent_cfg: dict, robot_cfg: dict, runtime_cfg: dict, explicit: bool, ready, stop, updates
) -> None:
    """EXPO updates back to back, at the learner's priority; `explicit`: its threads as a session sets them, else
    torch's default (one per CPU)."""
    scheduling.apply(runtime_cfg, "learner")
    if not explicit:
        torch.set_num_threads(os.cpu_count() or 1)
    cfg = OmegaConf.create({"agent": agent_cfg, "robot": robot_cfg})
    agent, spec = _agent(cfg, "cpu")
    buf = _filled_buffer(spec)
    agent.update(buf, buf)
    ready.set()
    while not stop.is_set():
        agent.update(buf, buf)
        updates.value += 1


def _round(cfg: DictConfig, agent, spec, steps: int, explicit: bool) -> tuple[list[float], float, int]:
    """Policy-step latencies with a learner training beside; the learner's updates/s and threads."""
    ctx = mp.get_context("spawn")
    ready, stop, updates = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    args = (OmegaConf.to_container(cfg.agent, resolve=True), OmegaConf.to_container(cfg.robot),
            OmegaConf.to_container(cfg.runtime, resolve=True), explicit, ready, stop, updates)  # fmt: skip
    saved = {k: os.environ.pop(k, None) for k in THREAD_ENV}  # the child reads its pools' sizes at start
    if explicit:
        os.environ.update(thread_env(cfg.runtime, "learner"))
    proc = ctx.Process(target=_learner, args=args)
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    try:
        if not ready.wait(300):
            raise TimeoutError("the learner process did not start within 300 s")
        n0, t0 = updates.value, time.monotonic()
        latencies = time_policy_steps(agent, spec, steps)
        rate = (updates.value - n0) / (time.monotonic() - t0)
    finally:
        stop.set()
        proc.join(60)
    threads = scheduling.threads_for(cfg.runtime, "learner") if explicit else os.cpu_count() or 1
    return latencies, rate, threads


def run(cfg: DictConfig, words: list[str]) -> dict:
    steps = int(words[0]) if words else 300
    rounds = int(words[1]) if len(words) > 1 else 3
    actor_applied = scheduling.apply(cfg.runtime, "actor")
    agent, spec = _agent(cfg, "cpu")
    freeze_heap()
    lat: dict[str, list[float]] = {s: [] for s in SETTINGS}
    rates: dict[str, list[float]] = {s: [] for s in SETTINGS}
    threads: dict[str, int] = {}
    for r in range(rounds):
        for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:  # alternate which goes first
            got, rate, threads[setting] = _round(cfg, agent, spec, steps, setting == "explicit")
            lat[setting] += got
            rates[setting].append(rate)
            print(f"round {r + 1}/{rounds} learner threads {setting} ({threads[setting]}): "
                  f"{json.dumps(latency_summary(got))}, learner {rate:.1f} updates/s")  # fmt: skip
    figures = {
        s: {"learner_threads": threads[s], "policy_step": latency_summary(lat[s]),
            "learner_updates_per_s": float(np.mean(rates[s])), "rounds_updates_per_s": rates[s]}
        for s in SETTINGS
    }  # fmt: skip
    d, e = figures["default"]["policy_step"], figures["explicit"]["policy_step"]
    summary = {
        "policy_step_p50_ms": {s: figures[s]["policy_step"]["p50_ms"] for s in SETTINGS},
        "policy_step_p99_ms": {s: figures[s]["policy_step"]["p99_ms"] for s in SETTINGS},
        "p50_ratio_default_over_explicit": d["p50_ms"] / e["p50_ms"],
        "p99_ratio_default_over_explicit": d["p99_ms"] / e["p99_ms"],
        "learner_updates_per_s": {s: figures[s]["learner_updates_per_s"] for s in SETTINGS},
    }
    print("summary:", json.dumps(summary))
    return {"summary": summary, "figures": figures, "actor_scheduling": actor_applied, "agent": cfg.agent.name,
            "profile": cfg.profile, "steps_per_round": steps, "rounds": rounds,
            "load_avg_at_end": os.getloadavg()}  # fmt: skip
