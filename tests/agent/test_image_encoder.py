"""Camera observations in the agent: random-shift augmentation, an encoder that learns from imitation (pretraining)
and from the TD loss (online), its weights in the acting state, and chunk transitions that carry the frames."""

import numpy as np
import pytest
import torch
from agent_fixtures import agent_cfg

from expo_robot.agent import AgentSpec, make_agent
from expo_robot.agent.encoder import (
    BackboneError,
    ImageEncoder,
    agent_image_shapes,
    random_shift,
    resize_frames,
)
from expo_robot.data.chunking import chunk_transitions
from expo_robot.data.replay import ReplayBuffer, sample_symmetric

CAM = (16, 16, 3)
SPEC = AgentSpec(3, 2, [-1.0, -1.0], [1.0, 1.0], 2, images={"front": CAM})
SMALL = {"encoder": {"channels": 8, "layers": 2, "embed": 16, "shift": 2}}


def test_random_shift_is_a_crop_of_the_edge_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(2):
        crops = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) for c in crops)
    shifts = {
        tuple(random_shift(x, 2, torch.Generator().manual_seed(s))[0, 0, 0, :2].tolist()) for s in range(20)
    }
    assert len(shifts) > 3  # random offsets, not one fixed crop


def test_encoder_output_size_and_value_range():
    enc = ImageEncoder({"front": (24, 32, 3), "wrist": CAM}, SMALL["encoder"])
    imgs = {
        "front": torch.randint(0, 255, (5, 24, 32, 3), dtype=torch.uint8),
        "wrist": torch.zeros(5, *CAM).byte(),
    }
    out = enc(imgs, augment=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 32) and enc.out_dim == 32 and out.abs().max() <= 1.0


def image_dataset(n: int, seed: int = 0) -> ReplayBuffer:
    """The action is +0.8 when the image is bright and -0.8 when dark; the state is noise: only the camera tells."""
    rng = np.random.default_rng(seed)
    bright = rng.integers(0, 2, n).astype(bool)
    imgs = np.where(bright[:, None, None, None], 220, 30).astype(np.uint8) * np.ones((n, *CAM), np.uint8)
    actions = np.where(bright, 0.8, -0.8)[:, None, None] * np.ones((n, 2, 2), np.float32)
    buf = ReplayBuffer(n, 3, 2, 2, images={"front": CAM})
    buf.add_batch({
        "obs": rng.normal(size=(n, 3)).astype(np.float32), "actions": actions.astype(np.float32),
        "reward": bright.astype(np.float32), "next_obs": rng.normal(size=(n, 3)).astype(np.float32),
        "discount": np.zeros(n, np.float32), "steps": np.full(n, 2),
        "obs_image.front": imgs, "next_obs_image.front": imgs,
    })  # fmt: skip
    return buf


def params(enc) -> list[torch.Tensor]:
    return [p.detach().clone() for p in enc.parameters()]


def changed(before, enc) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, enc.parameters()))


def test_pretraining_teaches_the_encoder_what_only_the_camera_shows():
    torch.set_num_threads(1)
    agent = make_agent(agent_cfg("bc", **SMALL, pretrain={"batch_size": 64}), SPEC, device="cpu", seed=0)
    assert set(agent.encoders) == {"shared"}  # BC: one network sees the cameras
    buf = image_dataset(256)
    before = params(agent.encoders["shared"])
    agent.pretrain(buf, 400)
    assert changed(before, agent.encoders["shared"])
    state = np.zeros(3, np.float32)
    bright = agent.act(state, "eval", images={"front": np.full(CAM, 220, np.uint8)})
    dark = agent.act(state, "eval", images={"front": np.full(CAM, 30, np.uint8)})
    assert bright.mean() > 0.4 and dark.mean() < -0.4, (bright, dark)


@pytest.mark.parametrize("shared", [False, True])
def test_each_loss_trains_only_its_encoder_and_all_of_them_travel_to_actors(shared):
    """Separate: imitation trains the base's encoder, the TD loss the critic's (online the base's stays put).
    Shared: one encoder, trained by both."""
    torch.set_num_threads(1)
    cfg = agent_cfg("expo", encoder={**SMALL["encoder"], "shared": shared}, pretrain={"batch_size": 32})
    agent = make_agent(cfg, SPEC, device="cpu", seed=0)
    offline, online = image_dataset(64, 0), image_dataset(64, 1)
    roles = {"shared"} if shared else {"base", "critic"}
    assert set(agent.encoders) == roles
    base_enc, critic_enc = (
        agent.encoders.get("base", agent.encoders.get("shared")),
        agent.encoders.get("critic"),
    )

    before = {r: params(e) for r, e in agent.encoders.items()}
    agent.pretrain(offline, 5)
    assert changed(before[next(iter(roles - {"critic"}))], base_enc)
    if critic_enc is not None:
        assert not changed(before["critic"], critic_enc)  # imitation never trains the critic's encoder

    before = {r: params(e) for r, e in agent.encoders.items()}
    metrics = agent.update(offline, online)
    assert np.isfinite(metrics["critic/loss"]) and np.isfinite(metrics["edit/loss"])
    assert changed(before["shared" if shared else "critic"], critic_enc or base_enc)
    if not shared:
        assert not changed(before["base"], base_enc)  # the base and edit steps see features, never train them

    acting = agent.acting_state()
    assert {k.split(".")[0] for k in acting if k.startswith("encoder")} == (
        {"encoder"} if shared else {"encoder_base", "encoder_critic"}
    )
    actor = make_agent(cfg, SPEC, device="cpu", seed=1)
    actor.load_acting_state(acting)
    for k, v in actor.acting_state().items():
        np.testing.assert_array_equal(v, acting[k])
    chunk = actor.act(np.zeros(3, np.float32), "explore", images={"front": np.zeros(CAM, np.uint8)})
    assert chunk.shape == (2, 2)
    with pytest.raises(ValueError, match="cameras"):
        actor.act(np.zeros(3, np.float32))


def test_critic_minibatches_encode_untrained_steps_in_one_pass_with_the_same_features():
    """Frozen steps: one pass, no graph, the features a step-by-step loop computes; trained steps: a graph through the
    critic's encoder only; an update with trained_steps=1 moves the critic's encoder once."""
    torch.set_num_threads(1)
    cfg = agent_cfg("expo", encoder={**SMALL["encoder"], "shift": 0, "trained_steps": 1}, utd=3)
    agent = make_agent(cfg, SPEC, device="cpu", seed=0)
    offline, online = image_dataset(64, 0), image_dataset(64, 1)
    agent.ensure_normalizer(offline)
    batches = [sample_symmetric(offline, online, 16, agent.rng) for _ in range(3)]
    steps = list(agent.critic_minibatches(batches, 1))
    assert len(steps) == 3
    for batch, t in zip(batches, steps):
        alone = agent.tensors(batch)
        for k in ("obs", "next_obs", "action", "reward"):
            torch.testing.assert_close(t[k], alone[k])
    assert [t["obs"].requires_grad for t in steps] == [False, False, True]
    steps[-1]["obs"].sum().backward()
    assert all(p.grad is not None for p in agent.encoders["critic"].parameters())
    assert all(p.grad is None for p in agent.encoders["base"].parameters())  # no graph through the other one
    imitation = agent.tensors(batches[0], grad_role="base", only_role="base")  # what pretraining reads
    assert "next_obs" not in imitation
    critic_cols = agent.views["critic"][3:]  # after the 3 state columns: the critic encoder's, not run
    assert not imitation["obs"][:, critic_cols].any()
    torch.testing.assert_close(agent.view(imitation["obs"], "base"), agent.view(steps[0]["obs"], "base"))

    agent = make_agent(cfg, SPEC, device="cpu", seed=0)
    critic_enc = agent.encoders["critic"]
    before = params(critic_enc)
    seen = []
    critic_enc.register_full_backward_hook(lambda *a: seen.append(1))
    agent.update(offline, online)
    assert changed(before, critic_enc) and len(seen) == 1  # one of the three critic steps trained it


def test_a_frozen_backbone_from_a_local_file_is_never_trained_nor_saved(tmp_path):
    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2)
    )
    path = tmp_path / "backbone.pt"
    torch.jit.script(net).save(str(path))
    cfg = agent_cfg("expo", encoder={**SMALL["encoder"], "backbone": str(path)}, pretrain={"batch_size": 32})
    agent = make_agent(cfg, SPEC, device="cpu", seed=0)
    weights = [w.detach().clone() for w in net.parameters()]
    offline, online = image_dataset(64, 0), image_dataset(64, 1)
    heads = params(agent.encoders["base"].heads)
    agent.pretrain(offline, 3)
    agent.update(offline, online)
    assert changed(heads, agent.encoders["base"].heads)  # the heads learn
    loaded = agent.encoders["base"].convs["front"]._module[0]
    assert all(torch.equal(a, b) for a, b in zip(weights, loaded.parameters()))  # the backbone does not
    assert not any("convs" in k for k in agent.acting_state())  # every process loads it from the file
    with pytest.raises(BackboneError, match="not a readable TorchScript file"):
        make_agent(agent_cfg("expo", encoder={"backbone": str(tmp_path / "missing.pt")}), SPEC, device="cpu")


def test_chunk_transitions_carry_the_frames_of_their_states():
    frames = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones(
        (6, 2, 2, 3), np.uint8
    )  # frame t = t
    out = chunk_transitions(
        np.zeros((6, 3)), np.zeros((5, 2)), np.zeros(5), True, 2, 0.9, 1, None, {"cam": frames}
    )
    assert out["obs_image.cam"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert out["next_obs_image.cam"][:, 0, 0, 0].tolist() == [2, 3, 4, 5, 5]
    buf = ReplayBuffer(8, 3, 2, 2, images={"cam": (2, 2, 3)})
    buf.add_batch(out)
    batch = sample_symmetric(buf, None, 4, np.random.default_rng(0))
    assert batch["obs_image.cam"].dtype == np.uint8 and batch["obs_image.cam"].shape == (4, 2, 2, 3)


def test_frames_are_resized_to_the_agents_size_by_area_averaging():
    frames = np.zeros((2, 4, 6, 3), np.uint8)
    frames[:, :2, :3] = 200  # top-left quadrant bright
    small = resize_frames(frames, (2, 3))
    assert small.shape == (2, 2, 3, 3) and small.dtype == np.uint8
    assert (small[:, 0, 0] == 200).all() and (small[:, 1, 2] == 0).all()
    assert resize_frames(frames, (4, 6)) is frames  # already the size: untouched
    assert agent_image_shapes({"front": (480, 640, 3)}, [96, 96]) == {"front": (96, 96, 3)}
    assert agent_image_shapes({"front": (48, 64, 3)}, None) == {"front": (48, 64, 3)}
