"""`expo-robot record` with a simulated camera: every frame of the dataset carries the camera image of its state, and
lerobot's own LeRobotDataset reads it back (images as PNG, no video encoder)."""

from pathlib import Path

import numpy as np
import pytest

from expo_robot.config import load_config
from expo_robot.data.dataset_io import load_episodes
from expo_robot.runtime.record import record
from expo_robot.transport.sockets import free_tcp_ports

H, W = 32, 24  # not square: height and width must not be swapped anywhere


@pytest.mark.timeout(120)
def test_record_with_sim_camera_stores_an_image_per_frame(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    obs, cmd = free_tcp_ports(2)
    cfg = load_config([
        "teleop=scripted", "live=off", f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}",
        f"run_dir={tmp_path / 'run'}", "teleop.episodes=2", "task.max_episode_steps=6",
        "cameras=sim", f"cameras.list.0.height={H}", f"cameras.list.0.width={W}",
            "teleop.mode=lockstep",  # a rendered camera (~0.5 s a frame here) is refused in real time
    ])  # fmt: skip
    summary = record(cfg, tmp_path / "run")
    assert summary["episodes"] == 2

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/dataset", root=summary["dataset"], video_backend="pyav")
    feature = ds.meta.features["observation.images.front"]
    assert feature["dtype"] == "image" and tuple(feature["shape"]) == (H, W, 3) and not ds.meta.video_keys
    assert ds.num_frames == summary["frames"] > 0
    for i in range(ds.num_frames):  # lerobot returns float CHW in [0, 1]
        image = ds[i]["observation.images.front"]
        assert tuple(image.shape) == (3, H, W) and 0 < float(image.mean()) < 1

    episodes = load_episodes(summary["dataset"])
    assert [len(ep) for ep in episodes] == [ds.meta.episodes[i]["length"] for i in range(2)]
    for ep in episodes:
        frames = ep.images["front"]
        assert frames.dtype == np.uint8 and frames.shape == (len(ep), H, W, 3)
    # the same pixels through both readers
    first = np.asarray(ds[0]["observation.images.front"].numpy().transpose(1, 2, 0) * 255).round()
    np.testing.assert_array_equal(first.astype(np.uint8), episodes[0].images["front"][0])
    assert load_episodes(summary["dataset"], images=False)[0].images == {}
