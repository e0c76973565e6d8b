"""`expo-robot reward DATASET...`: train a success classifier on camera frames from operator-labelled episodes.

    expo-robot reward data/labelled_demos                      # writes <run>/checkpoints/reward_classifier.safetensors
    expo-robot finetune cameras=realsense reward_classifier.path=<that file>

The classifier then ends an episode as a success when P(success) stays above `reward_classifier.threshold` for
`reward_classifier.consecutive` frames (next to the task's own success and the operator's keys).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from expo_robot.agent.reward_classifier import RewardClassifier, train_classifier
from expo_robot.config import ConfigError, make_run_dir
from expo_robot.data.dataset_io import load_episodes
from expo_robot.runtime.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def load_classifier(path: str | Path, trust: bool = False) -> RewardClassifier:
    """`trust`: also an old torch.save file (trust_checkpoint=true)."""
    state = load_checkpoint(path, trust=trust)
    if "reward_classifier" not in state:
        raise ConfigError(f"{path} is not a reward classifier (train one with `expo-robot reward DATASET`)")
    c = state["reward_classifier"]
    model = RewardClassifier(c["cameras"], c["encoder"])
    model.load_state_dict(c["model"])
    return model.eval()


def main(cfg: DictConfig, words: list[str]) -> int:
    if not words:
        raise ConfigError("name the labelled datasets: expo-robot reward data/demos [more datasets ...]")
    settings = OmegaConf.to_container(cfg.reward_classifier, resolve=True)
    run_dir = make_run_dir(cfg, "reward")
    torch.set_num_threads(max(1, int(cfg.get("learner_threads", 1))))
    episodes = load_episodes(words, images=True)

    def progress(step: int, loss: float) -> None:
        log.info("reward classifier: step %d/%d, loss %.4f", step, settings["steps"], loss)

    model, summary = train_classifier(episodes, settings, seed=int(cfg.seed), progress=progress)
    state = {"reward_classifier": {"model": model.state_dict(), "cameras": model.cameras,
                                   "encoder": settings["encoder"], "summary": summary, "datasets": words}}  # fmt: skip
    path = save_checkpoint(run_dir / "checkpoints" / "reward_classifier.safetensors", state)
    (run_dir / "reward.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"classifier: {path}\nuse it:     expo-robot finetune reward_classifier.path={path} cameras=...")
    return 0
