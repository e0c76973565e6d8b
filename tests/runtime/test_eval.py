"""`expo-robot eval`: checkpoints load with their stored agent, episodes end with the right reason, and the command
runs a driver, evaluates (and compares) tiny checkpoints on the simulated Panda in lock-step and writes the report."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from drivers.robot import make_robot
from drivers.server import Driver, run_driver
from expo_robot.agent import AgentSpec, make_agent
from expo_robot.config import load_config
from expo_robot.runtime.actor import EVAL_SEED_OFFSET, STALL_S, EpisodeResult
from expo_robot.runtime.checkpoint import CheckpointError, save_checkpoint
from expo_robot.runtime.evaluate import (
    EvalError,
    _labels,
    checkpoint_file,
    episode_record,
    evaluate,
    load_policy,
    stop_reason,
)
from expo_robot.transport.sockets import free_tcp_ports

FAKE_SPEC = AgentSpec(6, 4, [-1, -1, -1, 0], [1, 1, 1, 2], 4)  # no simulator needed for loading checks


def panda_spec(cfg, chunk: int) -> AgentSpec:
    with make_robot(cfg.robot, cfg.task) as robot:
        return AgentSpec(robot.state_dim, robot.action_dim, robot.action_low, robot.action_high, chunk)


def tiny_checkpoint(path: Path, agent: str = "expo", seed: int = 0, spec: AgentSpec | None = None) -> Path:
    """An untrained agent's state in a learner-style checkpoint ({"agent", "config", "counters"})."""
    torch.set_num_threads(1)
    cfg = load_config([f"agent={agent}", "profile=demo", f"seed={seed}"])
    spec = spec or panda_spec(cfg, int(cfg.agent.chunk))
    a = make_agent(cfg.agent, spec, device="cpu", seed=seed)
    a.norm.fit(np.random.default_rng(seed).normal(size=(64, spec.state_dim)))
    state = {"agent": a.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True),
             "counters": {"updates": 7 * seed, "env_steps": 11 * seed}}  # fmt: skip
    return save_checkpoint(path, state)


def result(**kw) -> EpisodeResult:
    return EpisodeResult(kw.pop("success", False), 0.0, kw.pop("length", 5), 0, **kw)


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"success": True, "safety": {"state": "episode_end", "reason": "terminated"}}, "success"),
        ({"safety": {"state": "episode_end", "reason": "truncated"}}, "timeout"),
        ({"safety": {"state": "episode_end", "reason": "terminated"}}, "terminated"),
        ({"safety": {"state": "episode_end", "reason": "episode limit: 3 steps"}}, "safety:episode_limit"),
        ({"stop_reason": "estop: e-stop: SIGUSR1", "safety": {"state": "estop"}}, "estop"),
        ({"stop_reason": "safe_state: watchdog", "safety": {"state": "safe_state"}}, "safety:watchdog"),
        ({"stop_reason": "no step from the driver for 5 s", "safety": {"state": "ok"}}, "stalled"),
    ],
)
def test_stop_reason(kw, reason):
    assert stop_reason(result(**kw)) == reason


def test_a_safety_stop_is_a_failure_even_when_the_task_reported_success():
    r = result(success=True, stop_reason="estop: e-stop: operator", safety={"state": "estop", "counters": {}})
    rec = episode_record(r, 7, before={})
    assert rec["stop_reason"] == "estop" and rec["success"] is False


def test_episode_record_counts_this_episodes_safety_events():
    r = result(
        safety={"state": "episode_end", "reason": "truncated", "counters": {"workspace": 9, "hold": 2}}
    )
    rec = episode_record(r, 3, before={"workspace": 4, "hold": 2, "episode_end": 1})
    assert rec["safety_events"] == {"workspace": 5}


def test_checkpoint_file_resolves_a_run_folder(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run" / "checkpoints" / "latest.safetensors", spec=FAKE_SPEC)
    assert checkpoint_file(tmp_path / "run") == ckpt
    assert checkpoint_file(ckpt) == ckpt


def test_the_stored_agent_config_is_used_unless_overridden(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.safetensors", spec=FAKE_SPEC)
    cfg = load_config(["agent=rlpd"])  # the operator's default agent differs from the checkpoint's
    p = load_policy(cfg, ckpt, "agent", agent_overridden=False)
    assert p.agent_cfg.name == "expo" and p.agent_cfg.profile == "demo"
    with pytest.raises(EvalError, match="holds a ExpoAgent agent, but agent 'rlpd'"):
        load_policy(cfg, ckpt, "agent", agent_overridden=True)


def test_base_only_takes_the_base_weights_of_an_expo_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.safetensors", spec=FAKE_SPEC)
    p = load_policy(load_config([]), ckpt, "base", agent_overridden=False)
    assert p.agent_cfg.name == "bc" and set(p.state["modules"]) == {"norm", "base", "base_ema"}
    make_agent(p.agent_cfg, FAKE_SPEC, device="cpu").load_state_dict(p.state)  # loads: same base config


def test_base_only_needs_a_base_policy(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "r.safetensors", agent="rlpd", spec=FAKE_SPEC)
    with pytest.raises(EvalError, match="has no base policy"):
        load_policy(load_config([]), ckpt, "base", agent_overridden=False)


def test_labels_are_distinct(tmp_path):
    a = tiny_checkpoint(tmp_path / "r1" / "checkpoints" / "latest.safetensors", spec=FAKE_SPEC)
    b = tiny_checkpoint(tmp_path / "r2" / "checkpoints" / "latest.safetensors", spec=FAKE_SPEC)
    cfg = load_config([])
    ps = [load_policy(cfg, a, "agent", False), load_policy(cfg, b, "agent", False)]
    _labels(ps)
    assert ps[0].label == "r1/latest [expo]" and ps[1].label == "r2/latest [expo]"
    ps = [load_policy(cfg, a, "agent", False), load_policy(cfg, a, "base", False)]
    _labels(ps)
    assert ps[0].label == "latest [expo]" and ps[1].label == "latest [base]"


# ---- the command, end to end ----
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A fine-tune-like run folder: checkpoints/pretrained.safetensors (the BC start) and latest.safetensors, for the sim Panda."""
    root = tmp_path_factory.mktemp("finetune")
    spec = panda_spec(load_config(["profile=demo"]), 4)
    tiny_checkpoint(root / "checkpoints" / "pretrained.safetensors", seed=0, spec=spec)
    tiny_checkpoint(root / "checkpoints" / "latest.safetensors", seed=1, spec=spec)
    return root


def run_eval(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    obs, cmd = free_tcp_ports(2)
    argv = [f"run_dir={run_dir}", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}", "live=off", *args]
    return subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "eval", *argv],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )


def report(run_dir: Path) -> dict:
    assert (run_dir / "eval_report.md").exists() and (run_dir / "eval.png").stat().st_size > 10_000
    return json.loads((run_dir / "eval_report.json").read_text())


@pytest.mark.timeout(300)
def test_eval_compares_finetuned_with_the_bc_start_on_the_same_scenes(run_folder, tmp_path):
    out = run_eval(
        tmp_path / "eval",
        f"eval.policy={run_folder}",
        f"eval.compare={run_folder / 'checkpoints' / 'pretrained.safetensors'}",
        "eval.compare_act=base",  # the BC start is its base policy alone
        "eval.episodes=2",
        "task.max_episode_steps=8",
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    doc = report(tmp_path / "eval")
    a, b = doc["result"], doc["compare"]
    assert (a["label"], b["label"]) == ("latest [expo]", "pretrained [base]")
    assert (a["policy"], b["policy"]) == ("expo", "base")
    assert a["checkpoint"].endswith("latest.safetensors") and b["checkpoint"].endswith(
        "pretrained.safetensors"
    )
    for s in (a, b):
        assert s["success"]["n"] == 2 and s["stops"] == {"timeout": 2}
        assert s["episode_length"]["max"] == 8
        assert s["policy_latency"]["n"] == 4  # 8 steps, a chunk of 4 per decision, 2 episodes
        assert s["loop"]["periods"] == 14  # 7 step-to-step periods per episode
    seeds = {label: [e["seed"] for e in eps] for label, eps in doc["episodes"].items()}
    assert seeds["latest [expo]"] == seeds["pretrained [base]"] == [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1]
    assert set(doc["comparison"]) >= {"difference", "difference_ci", "p_value", "significant"}
    md = (tmp_path / "eval" / "eval_report.md").read_text()
    assert "## Comparison" in md and "Why episodes ended" in md
    assert "driver: SIGTERM received" in (tmp_path / "eval" / "driver" / "driver.out").read_text()


@contextlib.contextmanager
def driver_thread(cfg):
    """The simulated robot's driver in this process (eval.start_driver=false), stopped into its safe state after."""
    stop = threading.Event()
    driver = Driver(cfg)
    thread = threading.Thread(target=run_driver, args=(cfg, stop), kwargs={"driver": driver}, daemon=True)
    thread.start()
    try:
        yield driver
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the driver thread did not stop"


def in_process_cfg(run_folder: Path, *overrides: str):
    obs, cmd = free_tcp_ports(2)
    return load_config(
        [
            f"eval.policy={run_folder}",
            "eval.start_driver=false",
            "eval.driver_start_timeout_s=60",
            "live=off",
            f"runtime.obs_port={obs}",
            f"runtime.cmd_port={cmd}",
            *overrides,
        ]
    )


@pytest.mark.timeout(180)
def test_safety_stops_are_failures_with_their_reason(run_folder, tmp_path):
    """The safety layer's episode cap (3 steps) ends every episode before the task's (8): each is a safety stop."""
    over = ["eval.act=base", "eval.episodes=2", "task.max_episode_steps=8", "safety.max_episode_steps=3"]
    cfg = in_process_cfg(run_folder, *over)
    with driver_thread(cfg):
        evaluate(cfg, over, tmp_path, threading.Event())
    doc = report(tmp_path)
    s = doc["result"]
    assert s["label"] == "latest [base]" and s["policy"] == "base"
    assert s["stops"] == {"safety:episode_limit": 2} and s["safety_stops"] == 2
    assert s["success"]["successes"] == 0 and s["episode_length"]["max"] == 3
    assert all(e["detail"] == "episode limit: 3 steps" for e in doc["episodes"]["latest [base]"])
    assert "| safety stops (incl. e-stop) | 2 |" in (tmp_path / "eval_report.md").read_text()


@pytest.mark.timeout(180)
def test_an_estop_ends_the_episode_as_a_failure_and_the_evaluation(run_folder, tmp_path):
    """An operator e-stop mid-episode: that episode fails with 'estop'; the latched e-stop refuses the next reset,
    so the evaluation ends early (with a note) and reports what it has."""
    over = ["eval.episodes=2", "task.max_episode_steps=500", "safety.max_episode_steps=500"]
    cfg = in_process_cfg(run_folder, *over)
    with driver_thread(cfg) as driver:
        pressed: list[float] = []

        def press_estop_at_step_5():
            deadline = time.monotonic() + 120
            while driver.step < 5 and time.monotonic() < deadline:
                time.sleep(0.002)
            driver.request_estop("test operator")
            pressed.append(time.monotonic())

        threading.Thread(target=press_estop_at_step_5, daemon=True).start()
        _, ended_early = evaluate(cfg, over, tmp_path, threading.Event())
    print(f"e-stop to the end of the evaluation: {time.monotonic() - pressed[0]:.2f} s")
    # a stall timeout would end the episode STALL_S (5 s) after the e-stop; the dataset is finished in that time too
    assert time.monotonic() - pressed[0] < STALL_S, (
        "an e-stop must end the episode at once, not after a stall"
    )
    doc = report(tmp_path)
    (ep,) = doc["episodes"]["latest [expo]"]
    assert ep["stop_reason"] == "estop" and not ep["success"] and "test operator" in ep["detail"]
    assert doc["result"]["safety_stops"] == 1
    assert "latched" in ended_early and "latched" in doc["result"]["config"]["ended early"]


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    cfg = load_config([f"eval.policy={tmp_path / 'nothing.pt'}"])
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothing\.pt"):
        evaluate(cfg, [], tmp_path, threading.Event())


@pytest.mark.timeout(180)
def test_an_agent_override_that_does_not_fit_the_checkpoint_is_a_clear_error(run_folder, tmp_path):
    over = [
        "eval.episodes=1",
        "agent=expo",
    ]  # profile cpu (the default): wider networks than the demo profile's
    cfg = in_process_cfg(run_folder, *over)
    with (
        driver_thread(cfg),
        pytest.raises(
            EvalError,
            match=r"does not fit agent 'expo'.*with agent expo, profile demo.*size mismatch.*drop agent=",
        ),
    ):
        evaluate(cfg, over, tmp_path, threading.Event())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_ends_the_evaluation_with_a_report_of_what_ran(run_folder, tmp_path):
    obs, cmd = free_tcp_ports(2)
    run_dir = tmp_path / "eval"
    argv = [f"eval.policy={run_folder}", "eval.episodes=500", "task.max_episode_steps=8", "live=off",
            f"run_dir={run_dir}", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "expo_robot.cli", "eval", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    try:
        deadline = time.monotonic() + 200
        metrics = run_dir / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and metrics.read_text().count('"eval"') >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out.decode()[-3000:]
    s = report(run_dir)["result"]
    assert 2 <= s["success"]["n"] < 500
    assert s["config"]["ended early"] == "stopped by the operator (Ctrl-C)"
    assert "driver: SIGTERM received" in (run_dir / "driver" / "driver.out").read_text()
