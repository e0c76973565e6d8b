"""`expo-robot bench policy [quick|full|latency]`: policy-step latency and real-time loop cadence.

Policy step = what the actor does per decision: decode the observation message, `agent.act` (propose, edit, score,
select), encode the chunk message. Measured idle, then with a learner training in another process on the same CPU
(the fine-tune session's situation on a 2-core machine), and on the GPU when there is one; then the same with one
96x96 camera (the image encoder's forward pass added). Then a real-time session
(`expo-robot finetune robot.mode=realtime robot.fps=50`) whose driver reports its loop cadence: overruns are ticks
that came more than a period late, split into those after a robot step (here the simulator's) longer than a period,
late wake-ups of the idle loop, and the loop's own work (realtime_figures says which of them are the stack's).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from expo_robot.agent import AgentSpec, make_agent
from expo_robot.data.replay import ReplayBuffer
from expo_robot.observe.metrics import LOOP_PERIOD_MS, read_metrics
from expo_robot.observe.stats import latency_summary, period_summary
from expo_robot.runtime import scheduling
from expo_robot.runtime.scheduling import freeze_heap
from expo_robot.transport.protocol import image_field, obs_schema
from expo_robot.transport.wire import decode, encode

# quick: a smoke run; latency / realtime: the two parts of `full` alone; each to its own file
PROFILES = {
    "quick": {"steps": 1000, "realtime_s": 60, "result_name": "policy_quick"},
    "full": {"steps": 5000, "realtime_s": 600},
    "latency": {"steps": 5000, "realtime_s": 0, "result_name": "policy_latency"},
    "realtime": {"steps": 0, "realtime_s": 600, "result_name": "policy_realtime"},
    # two 96x96 cameras (front + wrist), idle and with an image learner training (issue 18: p99 <= 10 ms)
    "cameras": {"steps": 0, "camera_steps": 1000, "realtime_s": 0, "result_name": "policy_cameras"},
}
STATE_DIM = 21  # the default robot (gym-hil Panda): 18 robot values + 3 cube position
CAMERA = {"front": (96, 96, 3)}  # one camera, the size of configs/cameras/sim.yaml
TWO_CAMERAS = {
    "front": (96, 96, 3),
    "wrist": (96, 96, 3),
}  # the agent's default frame size (encoder.image_size)


def _agent(cfg: DictConfig, device: str, cameras: dict | None = None):
    spec = AgentSpec(
        STATE_DIM, len(cfg.robot.action_low), cfg.robot.action_low, cfg.robot.action_high, cfg.agent.chunk,
        images=cameras or {},
    )  # fmt: skip
    return make_agent(cfg.agent, spec, device=device, seed=0), spec


def _filled_buffer(spec: AgentSpec, n: int = 2048) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    n = n if not spec.images else n // 4  # frames: 2 x 27 kB per row and camera at 96x96
    buf = ReplayBuffer(n, spec.state_dim, spec.chunk, spec.action_dim, images=dict(spec.images))
    low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
    frames = {f"{key}_image.{name}": rng.integers(0, 255, (n, *shape), dtype=np.uint8)
              for name, shape in spec.images.items() for key in ("obs", "next_obs")}  # fmt: skip
    buf.add_batch({
        "obs": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
        "actions": rng.uniform(low, high, size=(n, spec.chunk, spec.action_dim)).astype(np.float32),
        "reward": rng.uniform(size=n).astype(np.float32),
        "next_obs": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
        "discount": np.full(n, 0.96, np.float32),
        "steps": np.full(n, spec.chunk),
        **frames,
    })  # fmt: skip
    return buf


def time_policy_steps(agent, spec: AgentSpec, steps: int) -> list[float]:
    """Milliseconds per decision: observation message in -> chunk message out."""
    rng = np.random.default_rng(1)
    schema = obs_schema(spec.state_dim, spec.action_dim, dict(spec.images))
    out = []
    for i in range(steps + 20):
        arrays = {"state": rng.normal(size=spec.state_dim).astype(np.float32),
                  "action": np.zeros(spec.action_dim, np.float32)}  # fmt: skip
        arrays |= {image_field(k): rng.integers(0, 255, v, dtype=np.uint8) for k, v in spec.images.items()}
        meta = {"t": 0.0, "episode": 0, "step": i, "fresh": True, "safety": {}}
        frames = encode(
            "obs", arrays, meta | ({"image_time": dict.fromkeys(spec.images, 0.0)} if spec.images else {})
        )
        frames = [bytes(f) for f in frames]  # as received from a socket
        t0 = time.perf_counter()
        msg = decode(frames, schema)
        images = {k: msg.arrays[image_field(k)] for k in spec.images} or None
        chunk = agent.act(msg.arrays["state"], mode="explore", images=images)
        encode(
            "chunk", {"actions": np.asarray(chunk, np.float32)}, {"t0": 0.0, "chunk_id": i, "client": "bench"}
        )
        if i >= 20:  # warm-up
            out.append(1e3 * (time.perf_counter() - t0))
    return out


def _learner_load(agent_cfg: dict, robot_cfg: dict, runtime_cfg: dict, ready, stop, cameras=None) -> None:
    """A learner's work in another process, scheduled as a session's learner: EXPO updates back to back (from the
    same cameras as the actor's, when it has cameras)."""
    scheduling.apply(runtime_cfg, "learner")
    torch.set_num_threads(1)
    cfg = OmegaConf.create({"agent": agent_cfg, "robot": robot_cfg})
    agent, spec = _agent(cfg, "cpu", cameras)
    buf = _filled_buffer(spec)
    agent.update(buf, buf)
    ready.set()
    while not stop.is_set():
        agent.update(buf, buf)


def loaded_latency(cfg: DictConfig, agent, spec: AgentSpec, steps: int) -> list[float]:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    args = (agent_cfg, OmegaConf.to_container(cfg.robot), OmegaConf.to_container(cfg.runtime), ready, stop,
            dict(spec.images))  # fmt: skip
    proc = ctx.Process(target=_learner_load, args=args)
    proc.start()
    try:
        # (at nice +10 on a loaded machine, an image learner's first update can take minutes)
        if not ready.wait(900):
            raise TimeoutError("the learner load process did not start within 900 s")
        return time_policy_steps(agent, spec, steps)
    finally:
        stop.set()
        proc.join(60)


def realtime_command(run: Path, seconds: int, fps: int = 50) -> list[str]:
    """The fine-tune session the real-time figures come from (demo sizes, no evaluations), its driver under the
    real-time policy as on a robot's computer (where that is not allowed, the driver says so and runs without)."""
    return [sys.executable, "-m", "expo_robot.cli", "finetune", "session=demo", "profile=demo", "live=off",
            "robot.mode=realtime", f"robot.fps={fps}", f"session.env_steps={seconds * fps}",
            "session.eval_episodes=0", "runtime.scheduling.driver.fifo_priority=50", f"run_dir={run}"]  # fmt: skip


def realtime_figures(run: Path, fps: int) -> dict:
    """The driver's own cadence figures of a finished real-time session, from its run folder."""
    records = read_metrics(run)
    loops = [r for r in records if r.get("source") == "actor" and "driver/ticks" in r]
    last = loops[-1] if loops else {}
    ticks, overruns = int(last.get("driver/ticks", 0)), int(last.get("driver/overruns", 0))
    robot_overruns = int(last.get("driver/robot_overruns", 0))
    wakeup_overruns = int(last.get("driver/wakeup_overruns", 0))
    fifo = int(last.get("driver/fifo_priority", 0))
    # The stack's: the driver loop's own work, and under the normal policy also its late wake-ups (the actor and
    # learner may hold the CPU). Under SCHED_FIFO, with the actor and learner under the normal policy (as in
    # realtime_command), no process of the stack can: a late wake-up is the kernel's (real-time throttling,
    # interrupts) or the host's (stolen time).
    stack_overruns = overruns - robot_overruns - (wakeup_overruns if fifo else 0)
    periods = [
        r[LOOP_PERIOD_MS] / 1e3 for r in records if r.get("source") == "driver" and LOOP_PERIOD_MS in r
    ]
    return {
        "fps": fps,
        "ticks": ticks,
        "overruns": overruns,
        "overrun_pct": 100.0 * overruns / ticks if ticks else None,
        # after a tick whose robot step alone took longer than a period (the simulator, not the stack)
        "robot_overruns": robot_overruns,
        # the idle loop ran more than a period after its tick was due
        "wakeup_overruns": wakeup_overruns,
        "max_wakeup_late_ms": last.get("driver/max_wakeup_late_ms"),
        "driver_fifo_priority": fifo,
        "stack_overruns": stack_overruns,
        "stack_overrun_pct": 100.0 * stack_overruns / ticks if ticks else None,
        "robot_step_ms": last.get("driver/robot_step_ms"),
        "max_robot_step_ms": last.get("driver/max_robot_step_ms"),
        "period_ms": last.get("driver/period_ms"),
        "jitter_ms": last.get("driver/jitter_ms"),
        "max_jitter_ms": last.get("driver/max_jitter_ms"),
        # per executed step, from the driver's stamps (>10% late counts here)
        "step_periods": period_summary(periods, 1.0 / fps) if periods else None,
    }


def realtime_session(seconds: int, fps: int = 50) -> dict:
    """A real-time fine-tune session on the simulated robot; the driver's own cadence figures at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = realtime_command(run, seconds, fps)
        t0, steal0 = time.monotonic(), host_steal_s()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 3 + 600)
        if proc.returncode != 0:
            raise RuntimeError(f"real-time session failed ({proc.returncode}): {proc.stderr[-2000:]}")
        figures = realtime_figures(run, fps)
        steal = host_steal_s()
        # CPU time a virtual machine's host took from it during the session (all CPUs)
        stolen = steal - steal0 if steal is not None and steal0 is not None else None
        return {**figures, "seconds": seconds, "wall_s": time.monotonic() - t0, "command": " ".join(cmd[2:]),
                "host_steal_s": stolen}  # fmt: skip


def host_steal_s() -> float | None:
    """Seconds of CPU time the host has taken from this virtual machine since boot (Linux /proc/stat), or None."""
    try:
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()  # cpu user nice system idle ... steal
        return int(cpu[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run(cfg: DictConfig, words: list[str]) -> dict:
    profile = words[0] if words else "quick"
    if profile not in PROFILES:
        raise ValueError(f"bench policy: unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    p = PROFILES[profile]
    figures: dict = {"agent": cfg.agent.name, "profile": cfg.profile}
    summary: dict = {}
    if p["steps"]:
        latency_figures(cfg, p["steps"], figures, summary)
    if p.get("camera_steps"):
        camera_latency_figures(cfg, p["camera_steps"], figures, summary)
    if p["realtime_s"]:
        rt = figures["realtime"] = realtime_session(p["realtime_s"])
        print("real-time session:", json.dumps(rt))
        summary |= {"realtime_fps": rt["fps"], "realtime_seconds": rt["seconds"],
                    **{k: rt[k] for k in ("overrun_pct", "stack_overrun_pct", "wakeup_overruns", "robot_step_ms")},
                    "executed_rate_hz": (rt["step_periods"] or {}).get("rate_hz")}  # fmt: skip
    doc = {"summary": summary, "figures": figures}
    return doc if "result_name" not in p else {**doc, "result_name": p["result_name"]}


def latency_figures(cfg: DictConfig, steps: int, figures: dict, summary: dict) -> None:
    """Policy-step latency: CPU idle, CPU with a learner training, with one camera, and on the GPU if there is one."""
    scheduling_applied = scheduling.apply(cfg.runtime, "actor")  # as a session's actor: priority, threads
    torch.set_num_threads(1)
    agent, spec = _agent(cfg, "cpu")
    freeze_heap()  # as the actor does once set up: no full collection over torch's objects while timing
    figures |= {"chunk": spec.chunk,
                "scheduling": {"actor": scheduling_applied,
                               "learner": OmegaConf.to_container(cfg.runtime.scheduling.learner)}}  # fmt: skip
    figures["cpu_idle"] = latency_summary(time_policy_steps(agent, spec, steps))
    print("policy step, CPU idle:", json.dumps(figures["cpu_idle"]))
    figures["cpu_loaded"] = latency_summary(loaded_latency(cfg, agent, spec, steps))
    print("policy step, CPU with a learner training:", json.dumps(figures["cpu_loaded"]))
    cam_agent, cam_spec = _agent(cfg, "cpu", CAMERA)
    figures["camera_96_cpu_idle"] = latency_summary(time_policy_steps(cam_agent, cam_spec, steps))
    print("policy step with one 96x96 camera, CPU idle:", json.dumps(figures["camera_96_cpu_idle"]))
    summary |= {
        "policy_step_p99_ms_cpu": figures["cpu_loaded"]["p99_ms"],
        "policy_step_p99_ms_cpu_idle": figures["cpu_idle"]["p99_ms"],
        "policy_step_p99_ms_cpu_camera_96": figures["camera_96_cpu_idle"]["p99_ms"],
    }
    if torch.cuda.is_available():
        gpu_agent, _ = _agent(cfg, "cuda")
        figures["gpu"] = latency_summary(time_policy_steps(gpu_agent, spec, steps))
        print("policy step, GPU:", json.dumps(figures["gpu"]))
        gpu_cam_agent, _ = _agent(cfg, "cuda", CAMERA)
        figures["camera_96_gpu"] = latency_summary(time_policy_steps(gpu_cam_agent, cam_spec, steps))
        print("policy step with one 96x96 camera, GPU:", json.dumps(figures["camera_96_gpu"]))
        summary["policy_step_p99_ms_gpu"] = figures["gpu"]["p99_ms"]
        summary["policy_step_p99_ms_gpu_camera_96"] = figures["camera_96_gpu"]["p99_ms"]


def camera_latency_figures(cfg: DictConfig, steps: int, figures: dict, summary: dict) -> None:
    """Policy-step latency with two 96x96 cameras (the observation's frames decoded and encoded by the agent), CPU
    idle and with a learner training from the same cameras in another process; the same step without cameras,
    idle, in the same run as the baseline (this machine's speed changes from hour to hour)."""
    scheduling_applied = scheduling.apply(cfg.runtime, "actor")
    torch.set_num_threads(1)
    state_agent, state_spec = _agent(cfg, "cpu")
    agent, spec = _agent(cfg, "cpu", TWO_CAMERAS)
    freeze_heap()
    figures["no_camera_cpu_idle"] = latency_summary(time_policy_steps(state_agent, state_spec, steps))
    print("policy step without cameras, CPU idle:", json.dumps(figures["no_camera_cpu_idle"]))
    figures |= {"chunk": spec.chunk, "cameras": {k: list(v) for k, v in TWO_CAMERAS.items()},
                "encoder": OmegaConf.to_container(cfg.agent.get("encoder"), resolve=True),
                "scheduling": {"actor": scheduling_applied}}  # fmt: skip
    figures["two_cameras_96_cpu_idle"] = latency_summary(time_policy_steps(agent, spec, steps))
    print("policy step with two 96x96 cameras, CPU idle:", json.dumps(figures["two_cameras_96_cpu_idle"]))
    figures["two_cameras_96_cpu_loaded"] = latency_summary(loaded_latency(cfg, agent, spec, steps))
    print(
        "policy step with two 96x96 cameras, a learner training:",
        json.dumps(figures["two_cameras_96_cpu_loaded"]),
    )
    summary |= {
        "policy_step_p99_ms_two_cameras_idle": figures["two_cameras_96_cpu_idle"]["p99_ms"],
        "policy_step_p99_ms_two_cameras_learner_training": figures["two_cameras_96_cpu_loaded"]["p99_ms"],
        "policy_step_p50_ms_two_cameras_learner_training": figures["two_cameras_96_cpu_loaded"]["p50_ms"],
        "policy_step_p99_ms_no_camera_idle": figures["no_camera_cpu_idle"]["p99_ms"],
        "p50_ratio_two_cameras_idle_vs_no_camera": figures["two_cameras_96_cpu_idle"]["p50_ms"]
        / figures["no_camera_cpu_idle"]["p50_ms"],
    }
