"""Synthetic but realistic metrics and eval results (seeded) for the observe tests, as fixtures.

(The suite runs with --import-mode=importlib, so helpers are shared as fixtures, not imported by name.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expo_robot.observe import metrics as m
from expo_robot.observe.metrics import MetricsLogger


def write_finetune_metrics(run_dir: Path, episodes: int = 120, seed: int = 0) -> None:
    """A session whose success climbs from ~40% (BC) to ~85%, with learner losses, Q values and timing."""
    rng = np.random.default_rng(seed)
    step = 0
    updates = 0
    with MetricsLogger(run_dir, tensorboard=False, flush_s=0.5) as log:
        for i in range(0, 1000, 100):  # pretraining logs at env step 0: not a curve over env steps
            log.log(0, "learner", **{"pretrain/loss": 1.0 / (i + 1), "pretrain/step": i})
        log.log(0, "eval", **{m.EVAL_SUCCESSES: 8, m.EVAL_EPISODES: 20})
        for ep in range(episodes):
            p = 0.4 + 0.45 * ep / episodes
            success = rng.random() < p
            length = int(rng.integers(20, 40) if success else 100)
            for _ in range(length):
                step += 1
                if step % 5 == 0:
                    log.log(
                        step,
                        "driver",
                        **{m.LOOP_PERIOD_MS: float(100 + rng.normal(0, 0.8) + (rng.random() < 0.003) * 30)},
                    )
                    log.log(step, "actor", **{m.POLICY_LATENCY_MS: float(rng.gamma(9, 0.25))})
            helped = int(rng.integers(0, 10)) if rng.random() < 0.5 * (1 - ep / episodes) else 0
            log.log(
                step,
                "actor",
                **{
                    m.EPISODE_SUCCESS: float(success),
                    m.EPISODE_RETURN: float(success),
                    m.EPISODE_LENGTH: length,
                    m.EPISODE_INTERVENTIONS: helped,
                },
            )
            updates += length
            log.log(
                step,
                "learner",
                **{
                    "critic/loss": float(0.5 * np.exp(-ep / 40) + 0.02 + rng.random() * 0.02),
                    "edit/loss": float(-0.3 - 0.5 * ep / episodes + rng.normal(0, 0.03)),
                    "q/mean": float(0.2 + 0.5 * ep / episodes + rng.normal(0, 0.02)),
                    "q/target_mean": float(0.25 + 0.5 * ep / episodes + rng.normal(0, 0.02)),
                    "edit/q": float(0.5 + 0.4 * ep / episodes + rng.normal(0, 0.02)),
                    "edit/entropy": float(2.0 - ep / episodes),
                    m.LEARNER_UPDATES: updates,
                    m.BUFFER_SIZE: 2000 + step,
                },
            )
            if ep in (30, 31, 77):
                log.log(step, "driver", **{m.SAFETY_EVENT: "workspace" if ep != 77 else "velocity"})
            if ep % 40 == 39:
                log.log(
                    step, "eval", **{m.EVAL_SUCCESSES: int(20 * p + rng.integers(-2, 3)), m.EVAL_EPISODES: 20}
                )


def eval_result(
    label: str, p_success: float, episodes: int = 30, seed: int = 0, latency_ms: float = 2.0
) -> dict:
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        u = rng.random()
        if u < p_success:
            eps.append(
                {
                    "success": True,
                    "length": int(rng.integers(20, 40)),
                    "stop_reason": "success",
                    "interventions": 0,
                    "return": 1.0,
                }
            )
        elif u < p_success + 0.1:
            eps.append(
                {
                    "success": False,
                    "length": int(rng.integers(5, 60)),
                    "stop_reason": "safety:workspace",
                    "interventions": 0,
                    "return": 0.0,
                }
            )
        else:
            eps.append(
                {
                    "success": False,
                    "length": 100,
                    "stop_reason": "timeout",
                    "interventions": int(rng.integers(0, 3)),
                    "return": 0.0,
                }
            )
    return {
        "label": label,
        "policy": "base" if label == "bc" else "expo",
        "checkpoint": f"runs/x/{label}/ckpt",
        "config": {"robot": "sim_panda", "task": "pick_cube", "agent": "expo"},
        "target_period_s": 0.1,
        "episodes": eps,
        "loop_period_ms": list(100 + rng.normal(0, 0.5, 2000)),
        "policy_latency_ms": list(rng.gamma(8, latency_ms / 8, 2000)),
    }


@pytest.fixture
def make_eval_result():
    """eval_result(label, p_success, episodes=30, seed=0, latency_ms=2.0) -> an eval result dict."""
    return eval_result


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory) -> Path:
    """A run folder with synthetic fine-tune metrics (80 episodes), written once per test module."""
    run_dir = tmp_path_factory.mktemp("finetune")
    write_finetune_metrics(run_dir, episodes=80)
    return run_dir
