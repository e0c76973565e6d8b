"""The reward classifier: labels from episodes, it learns to tell success frames, the `reward` command writes a
classifier that loads, and an actor ends an episode as a success when it fires on consecutive frames."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from expo_robot.agent.reward_classifier import frame_labels, train_classifier
from expo_robot.config import load_config
from expo_robot.data.dataset_io import Episode, EpisodeWriter, camera_features, dataset_features
from expo_robot.runtime.actor import Actor, EpisodeResult
from expo_robot.runtime.reward import load_classifier
from expo_robot.runtime.reward import main as reward_main

CAM = (12, 12, 3)
FAST = {"steps": 150, "batch_size": 32, "lr": 1e-3, "positive_frames": 3, "val_fraction": 0.25,
        "encoder": {"channels": 8, "layers": 2, "embed": 8, "shift": 1}}  # fmt: skip


def episode(success: bool, t_len: int, rng) -> Episode:
    """Dark noisy frames; a successful episode's last 3 frames show a bright patch (the lifted cube)."""
    frames = rng.integers(0, 60, (t_len, *CAM), dtype=np.uint8)
    if success:
        frames[-3:, 3:9, 3:9] = 230
    z = np.zeros(t_len, bool)
    return Episode(np.zeros((t_len, 2), np.float32), np.zeros((t_len, 1), np.float32), np.zeros(t_len, np.float32),
                   True, success, z, images={"front": frames})  # fmt: skip


def episodes(n: int, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [episode(i % 2 == 0, 12, rng) for i in range(n)]


def test_labels_success_frames_and_leave_out_the_ambiguous_ones():
    frames, labels, ids = frame_labels(
        [episode(True, 10, np.random.default_rng(0)), episode(False, 4, np.random.default_rng(1))], 3
    )
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]  # frames 4-6 of the success are left out
    assert ids.tolist() == [0] * 7 + [1] * 4 and frames["front"].shape == (11, *CAM)
    with pytest.raises(ValueError, match="only one class"):
        train_classifier([episode(False, 5, np.random.default_rng(0))], FAST)


def test_classifier_learns_to_tell_success_frames_on_held_out_episodes():
    torch.set_num_threads(1)
    _, summary = train_classifier(episodes(16), FAST)
    assert summary["validation_episodes"] == 4
    assert (
        summary["validation"]["success_accuracy"] >= 0.9 and summary["validation"]["failure_accuracy"] >= 0.9
    )


def test_reward_command_writes_a_classifier_that_an_actor_fires_on(tmp_path):
    torch.set_num_threads(1)
    root = tmp_path / "labelled"
    features = dataset_features(2, 1, extra=camera_features({"front": CAM}))
    with EpisodeWriter(root, fps=10, features=features, task="t") as w:
        for ep in episodes(12):
            for t in range(len(ep)):
                w.add_frame(ep.states[t], ep.actions[t], 0.0, success=ep.success and t == len(ep) - 1,
                            images={"front": ep.images["front"][t]})  # fmt: skip
            w.end_episode()
    cfg = load_config([f"run_dir={tmp_path / 'run'}", *(f"reward_classifier.{k}={v}" for k, v in FAST.items() if k != "encoder"),
                       "reward_classifier.encoder={channels:8,layers:2,embed:8,shift:1}"])  # fmt: skip
    assert reward_main(cfg, [str(root)]) == 0
    path = tmp_path / "run" / "checkpoints" / "reward_classifier.safetensors"
    model = load_classifier(path)
    bright = np.zeros(CAM, np.uint8)
    bright[3:9, 3:9] = 230
    assert model.prob({"front": bright}) > 0.5 > model.prob({"front": np.zeros(CAM, np.uint8)})

    actor = Actor.__new__(Actor)  # only the labelling logic: no driver, no learner
    actor.id, actor.success_reward, actor.classifier, actor.classifier_hits = "a", 1.0, model, 0
    actor.classifier_cfg = OmegaConf.create({"path": str(path), "threshold": 0.5, "consecutive": 2})
    obs = lambda img: type("Obs", (), {"images": {"front": img}})  # noqa: E731
    result, rewards = EpisodeResult(False, 0.0, 0, 0), [0.0, 0.0, 0.0]
    assert not actor._classifier_label(result, rewards, obs(bright))  # one frame is not enough
    assert not actor._classifier_label(
        result, rewards, obs(np.zeros(CAM, np.uint8))
    )  # and the count restarts
    assert not actor._classifier_label(result, rewards, obs(bright))
    assert actor._classifier_label(result, rewards, obs(bright))
    assert result.success and result.label == "success" and rewards == [0.0, 0.0, 1.0]
