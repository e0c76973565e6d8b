"""`expo-robot pretrain`: imitation on a LeRobotDataset gives a loss curve, a plot, and a checkpoint the learner
starts from (session.pretrained=..., session.pretrain_steps=0)."""

import json

import numpy as np
import pytest
import torch

from expo_robot.config import load_config
from expo_robot.observe.metrics import read_metrics
from expo_robot.runtime.checkpoint import load_checkpoint
from expo_robot.runtime.learner import Learner
from expo_robot.runtime.pretrain import main as pretrain_main
from expo_robot.transport.sockets import free_tcp_ports


def tensors(d, prefix=""):
    """Every tensor / array of a nested state dict, by path."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(tensors(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor | np.ndarray):
            out[f"{prefix}{k}"] = torch.as_tensor(v)
    return out


@pytest.mark.timeout(300)
def test_pretrain_checkpoint_starts_the_learner(tmp_path, capsys):
    common = [
        "profile=demo",
        "session.offline.episodes=3",
        f"session.offline.root={tmp_path / 'seed'}",
        "live=off",
    ]
    run = tmp_path / "pretrain"
    assert pretrain_main(load_config([*common, "session.pretrain_steps=300", f"run_dir={run}"]), []) == 0
    summary = json.loads((run / "pretrain.json").read_text())
    assert summary["steps"] == 300 and summary["data"]["episodes"] == 3
    assert (run / "pretrain_loss.png").stat().st_size > 10_000
    losses = [r["pretrain/loss"] for r in read_metrics(run, "learner") if "pretrain/loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses  # it learns
    ckpt = load_checkpoint(run)  # the run folder itself works too (checkpoints/latest.safetensors)
    assert set(ckpt) == {"agent", "config"} and "pretrain" in ckpt["config"]

    weights, transitions = free_tcp_ports(2)
    cfg = load_config([
        *common, f"session.pretrained={summary['checkpoint']}", "session.pretrain_steps=0",
        f"runtime.weights_port={weights}", f"runtime.transitions_port={transitions}", f"run_dir={tmp_path / 'learn'}",
    ])  # fmt: skip
    learner = Learner(cfg, tmp_path / "learn")
    try:
        have, want = tensors(learner.agent.state_dict()), tensors(ckpt["agent"])
        assert have.keys() == want.keys() and len(want) > 10
        for name, value in want.items():
            assert torch.equal(have[name].cpu(), value.cpu()), (
                f"{name} differs from the pretrained checkpoint"
            )
        assert not (
            tmp_path / "learn" / "checkpoints" / "pretrained.safetensors"
        ).exists()  # it did not pretrain again
    finally:
        learner.close()
    assert "fine-tune from it" in capsys.readouterr().out
