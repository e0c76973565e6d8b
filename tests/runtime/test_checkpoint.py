"""Checkpoints are safetensors + JSON and load without pickle: a torch.save checkpoint carrying code is refused (the
code never runs) unless trust_checkpoint=true; what the learner saves comes back exactly (networks, optimisers,
random streams, counters, replay buffers)."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from learner_helpers import RunningLearner, episode_batch, make_learner

from expo_robot.data.replay import ReplayBuffer
from expo_robot.runtime.checkpoint import LATEST, CheckpointError, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.timeout(240)


class Payload:
    """What an attacker puts in a pickle: unpickling it runs os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_checkpoint(path: Path, marker: Path, zip_format: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"agent": Payload(marker), "config": ""}, path, _use_new_zipfile_serialization=zip_format)
    return path


def assert_same(a, b, where="state"):
    """Deep equality of checkpoint states: tensors and arrays by value, dtype and shape."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save zip", "torch.save raw pickle"])
def test_a_malicious_torch_save_checkpoint_is_refused_and_its_code_never_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    path = malicious_checkpoint(run / "checkpoints" / "latest.pt", marker, zip_format)
    for where in (path, run):  # the file, and a run folder from before safetensors
        with pytest.raises(CheckpointError, match=r"old torch\.save checkpoint.*trust_checkpoint=true") as e:
            load_checkpoint(where)
        assert "\n" not in str(e.value)
    assert not marker.exists(), "the pickle's code ran"


def test_eval_refuses_a_malicious_checkpoint_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    path = malicious_checkpoint(tmp_path / "evil.pt", marker)
    env = {**os.environ, "MUJOCO_GL": "egl"}
    p = subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "eval", f"eval.policy={path}", f"run_root={tmp_path / 'runs'}",
         "live=off"],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert p.returncode == 1, p.stderr
    errors = [line for line in p.stderr.splitlines() if "evil.pt" in line]
    assert len(errors) == 1 and "trust_checkpoint=true" in errors[0], p.stderr
    assert "Traceback" not in p.stderr and not marker.exists()


def test_an_old_checkpoint_loads_with_trust_checkpoint_and_a_warning(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save({"agent": {"w": torch.ones(3)}, "counters": {"updates": 5}}, path)
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(path, trust=True)
    assert state["counters"] == {"updates": 5} and torch.equal(state["agent"]["w"], torch.ones(3))
    assert any("pickle" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_files_that_are_not_checkpoints_are_clear_errors(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", {"w": torch.arange(1000.0), "n": 1})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(300))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    for path, why in [(cut, "cannot read checkpoint"), (junk, "not a checkpoint"),
                      (foreign, "not an expo-robot checkpoint"), (tmp_path / "none", "no checkpoint at")]:  # fmt: skip
        with pytest.raises(CheckpointError, match=why):
            load_checkpoint(path)


def test_any_state_round_trips_exactly(tmp_path):
    shared = torch.randn(4, 3)
    state = {
        "tied": {"a": shared, "b": shared, "view": shared[1:]},  # tensors sharing memory
        "optimiser": {
            "state": {0: {"step": torch.tensor(3.0)}, 7: {}},
            "param_groups": [{"betas": (0.9, 0.99)}],
        },
        "numpy": {"rng": np.random.default_rng(1).bit_generator.state, "flags": np.array([True, False])},
        "scalars": [None, True, 2**100, -1.5, "text", np.float32(0.5).item()],
        "zero_d": np.asarray(7, np.int64),
        "empty": torch.zeros(0, 5),
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "__tensor__": "a key that looks like a tag",
    }
    back = load_checkpoint(save_checkpoint(tmp_path / "s.safetensors", state))
    assert_same(state, back)


def test_a_replay_buffer_with_camera_frames_round_trips(tmp_path):
    images = {"front": (6, 8, 3)}
    buf = ReplayBuffer(50, 5, 2, 3, images)
    rng = np.random.default_rng(0)
    for _ in range(3):
        n = 20
        buf.add_batch(
            {"obs": rng.normal(size=(n, 5)).astype(np.float32), "actions": rng.normal(size=(n, 2, 3)).astype(np.float32),
             "reward": rng.normal(size=n).astype(np.float32), "next_obs": rng.normal(size=(n, 5)).astype(np.float32),
             "discount": np.full(n, 0.9, np.float32), "steps": np.full(n, 2), "intervention": rng.random(n) < 0.2,
             "obs_image.front": rng.integers(0, 255, (n, 6, 8, 3), np.uint8),
             "next_obs_image.front": rng.integers(0, 255, (n, 6, 8, 3), np.uint8)}
        )  # fmt: skip
    back = ReplayBuffer(50, 5, 2, 3, images)
    back.load_state_dict(
        load_checkpoint(save_checkpoint(tmp_path / "b.safetensors", {"b": buf.state_dict()}))["b"]
    )
    assert_same(buf.state_dict(), back.state_dict())
    assert_same(buf.sample(32, np.random.default_rng(3)), back.sample(32, np.random.default_rng(3)))


def test_a_resumed_learner_is_the_learner_that_was_saved(tmp_path, monkeypatch):
    """Networks, optimisers, random streams, counters and both replay buffers come back equal, and the next update
    of the resumed learner is the update the saved one makes."""
    first = make_learner(tmp_path / "a", monkeypatch, "session.updates_per_chunk=4")
    with RunningLearner(first) as run:
        batch = episode_batch(first.cfg, 12)
        run.send(batch, "a0", 1, 12)
        run.send({**batch, "intervention": np.arange(12) % 3 == 0}, "a1", 1, 12)  # takeovers: offline too
        run.wait_handled(2)
        while first.updates < 24 and run.thread.is_alive():
            run.thread.join(0.05)
    assert run.code == 0 and first.updates == 24  # its final checkpoint was written on the way out
    saved = load_checkpoint(first.run_dir)
    second = make_learner(tmp_path / "b", monkeypatch, f"session.resume={first.run_dir}")
    for name in ("agent", "online", "offline"):
        assert_same(getattr(first, name).state_dict(), getattr(second, name).state_dict(), name)
    assert (second.updates, second.env_steps, second.episodes, second.received) == (
        24,
        24,
        2,
        {"a0": 1, "a1": 1},
    )
    assert saved["counters"]["received"] == second.received and len(second.offline) == len(first.offline)
    a = first.agent.update(first.offline, first.online)
    b = second.agent.update(second.offline, second.online)
    assert_same({k: float(v) for k, v in a.items()}, {k: float(v) for k, v in b.items()})
    second.close()
    assert (first.run_dir / "checkpoints" / LATEST).is_file()
