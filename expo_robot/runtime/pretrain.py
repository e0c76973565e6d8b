"""`expo-robot pretrain`: imitation pretraining of the base policy on LeRobotDatasets, as its own command.

    expo-robot pretrain                                        # the simulated seed data (made on demand)
    expo-robot pretrain data/demos_a data/demos_b session.pretrain_steps=5000
    expo-robot finetune session.pretrained=<run>/checkpoints/pretrained.safetensors session.pretrain_steps=0

The datasets (positional paths, else session.offline.datasets, else the sim seed data) become chunk transitions
exactly as the learner loads them (runtime/offline.py), the agent's own `pretrain` runs with a progress bar, and the
run folder gets metrics.jsonl, pretrain_loss.png and checkpoints/pretrained.safetensors (also latest.safetensors,
so the run folder itself can be passed): {"agent": state_dict, "config": resolved yaml}, the layout the learner writes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from drivers.cameras import configured_shapes
from expo_robot.agent import make_agent
from expo_robot.config import ConfigError, command_line, make_run_dir
from expo_robot.data.replay import ReplayBuffer
from expo_robot.observe.live import ProgressBar
from expo_robot.observe.metrics import MetricsLogger
from expo_robot.runtime.checkpoint import LATEST, PRETRAINED, save_checkpoint
from expo_robot.runtime.learner import agent_cameras, agent_spec
from expo_robot.runtime.offline import check_offline_data, load_offline_transitions, offline_dataset_paths

log = logging.getLogger(__name__)
REPORT_EVERY = 100  # agents call progress() every 100 steps


def dataset_paths(cfg: DictConfig, words: list[str]) -> list[Path]:
    """Positional dataset folders win; otherwise the session's offline datasets (or the sim seed data). Datasets
    that do not fit the robot are refused (the dataset contract)."""
    if words:
        return check_offline_data(cfg, [Path(w) for w in words])
    return offline_dataset_paths(cfg)


def pretrain(cfg: DictConfig, run_dir: Path, paths: list[Path], steps: int) -> dict:
    """Pretrain the base on `paths` for `steps` steps; write the checkpoint, metrics and loss plot into run_dir."""
    gamma = float(cfg.agent.gamma)
    offline, data_summary = load_offline_transitions(
        paths, int(cfg.agent.chunk), gamma, configured_shapes(cfg.get("cameras")), agent_cameras(cfg)
    )
    spec = agent_spec(cfg, offline["obs"].shape[1])
    agent = make_agent(cfg.agent, spec, device=cfg.device, seed=int(cfg.seed))
    buffer = ReplayBuffer(len(offline["obs"]), spec.state_dim, spec.chunk, spec.action_dim, spec.images)
    buffer.add_batch(offline)
    history: list[dict] = []
    t0 = time.monotonic()
    with (
        MetricsLogger(run_dir, tensorboard=False) as metrics,
        ProgressBar(steps, "pretraining the base policy", cfg.get("live", "auto")) as bar,
    ):

        def progress(step: int, info: dict) -> None:
            values = {k: float(v) for k, v in info.items() if getattr(v, "ndim", 0) == 0}
            history.append({"step": step, **values})
            metrics.log(step, "learner", **{f"pretrain/{k.split('/')[-1]}": v for k, v in values.items()})
            bar.advance(
                REPORT_EVERY, **{k.split("/")[-1]: round(v, 4) for k, v in values.items() if "loss" in k}
            )

        final = agent.pretrain(buffer, steps, progress=progress)
    state = {"agent": agent.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)}
    path = save_checkpoint(run_dir / "checkpoints" / PRETRAINED, state)
    save_checkpoint(run_dir / "checkpoints" / LATEST, state)
    plot = plot_losses(history, run_dir / "pretrain_loss.png")
    return {
        "checkpoint": str(path),
        "plot": str(plot),
        "datasets": [str(p) for p in paths],
        "data": data_summary,
        "steps": steps,
        "seconds": round(time.monotonic() - t0, 1),
        "final": {k: float(v) for k, v in final.items()},
    }


def plot_losses(history: list[dict], out: Path) -> Path:
    """One line per loss the agent reported, against the pretraining step (log scale when all positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted({k for h in history for k in h if "loss" in k})
    for name in names:
        pts = [(h["step"], h[name]) for h in history if name in h]
        ax.plot(*zip(*pts, strict=True), label=name)
    if names and all(h[n] > 0 for h in history for n in names if n in h):
        ax.set_yscale("log")
    if not names:
        ax.text(0.5, 0.5, "no loss reported (fewer than 100 steps?)", ha="center", transform=ax.transAxes)
    ax.set(title="Imitation pretraining", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    if names:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(cfg: DictConfig, words: list[str], overrides: list[str] | None = None) -> int:
    run_dir = make_run_dir(cfg, "pretrain")
    torch.set_num_threads(max(1, int(cfg.get("learner_threads", 1))))
    steps = int(cfg.session.pretrain_steps)
    if steps <= 0:
        raise ConfigError("session.pretrain_steps is 0: nothing to do (set e.g. session.pretrain_steps=3000)")
    summary = pretrain(cfg, run_dir, dataset_paths(cfg, words), steps)
    (run_dir / "pretrain.json").write_text(json.dumps(summary, indent=2))
    log.info("pretrained %d steps in %.0f s on %s", steps, summary["seconds"], ", ".join(summary["datasets"]))
    print(f"checkpoint: {summary['checkpoint']}\nloss plot:  {summary['plot']}")
    print(f"fine-tune from it: {finetune_hint(overrides or [], words, summary['checkpoint'])}")
    return 0


def finetune_hint(overrides: list[str], words: list[str], checkpoint: str) -> str:
    """`expo-robot finetune` with this run's own overrides (robot, task, agent, data ...), its positional datasets as
    session.offline.datasets, and the checkpoint as the BC start."""
    data = [f"session.offline.datasets=[{','.join(str(Path(w).resolve()) for w in words)}]"] if words else []
    drop = ("session.pretrain", "session.offline.datasets") if words else ("session.pretrain",)
    return command_line(
        "finetune",
        overrides,
        *data,
        f"session.pretrained={checkpoint}",
        "session.pretrain_steps=0",
        drop=drop,
    )
