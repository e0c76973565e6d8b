"""A success classifier on camera frames (HIL-SERL's reward classifier): the reward of image tasks without a
success detector, trained from episodes an operator labelled (`record`'s success / failure keys).

Labels from episodes: the last `positive_frames` frames of a successful episode show success; every frame of a failed
episode, and the frames of a successful one before `2 * positive_frames` from its end, do not (the frames in between
are ambiguous and left out). Class-balanced minibatches, random-shift augmentation, episodes held out for validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from expo_robot.agent.encoder import ImageEncoder


class RewardClassifier(nn.Module):
    """P(success | camera frames). cameras: name -> (H, W, 3)."""

    def __init__(self, cameras: Mapping[str, Sequence[int]], encoder_cfg: Mapping | None = None):
        super().__init__()
        self.cameras = {k: tuple(int(d) for d in v) for k, v in cameras.items()}
        self.encoder = ImageEncoder(self.cameras, encoder_cfg)
        self.head = nn.Linear(self.encoder.out_dim, 1)

    def forward(
        self, images: Mapping[str, torch.Tensor], augment: bool = False, generator=None
    ) -> torch.Tensor:
        """images: name -> uint8 [B, H, W, 3] -> logits [B]."""
        return self.head(self.encoder(images, augment, generator)).squeeze(-1)

    @torch.no_grad()
    def prob(self, images: Mapping[str, np.ndarray]) -> float:
        """P(success) of one set of frames (name -> uint8 [H, W, 3])."""
        self.eval()
        batch = {k: torch.from_numpy(np.array(v, np.uint8))[None] for k, v in images.items()}
        return float(torch.sigmoid(self(batch))[0])


def frame_labels(
    episodes: Sequence, positive_frames: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(frames name -> [N, H, W, 3], labels [N] 0/1, episode id [N]) of the labelled frames of `episodes`."""
    names = sorted(episodes[0].images)
    frames: dict[str, list] = {k: [] for k in names}
    labels, ids = [], []
    for i, ep in enumerate(episodes):
        t_len = len(ep)
        if ep.success:
            keep = list(range(max(0, t_len - 2 * positive_frames))) + list(
                range(t_len - positive_frames, t_len)
            )
            lab = [int(t >= t_len - positive_frames) for t in keep]
        else:
            keep, lab = list(range(t_len)), [0] * t_len
        for k in names:
            frames[k].append(ep.images[k][keep])
        labels += lab
        ids += [i] * len(keep)
    return {k: np.concatenate(v) for k, v in frames.items()}, np.asarray(labels), np.asarray(ids)


def train_classifier(
    episodes: Sequence,
    cfg: Mapping,
    seed: int = 0,
    progress=None,
) -> tuple[RewardClassifier, dict]:
    """Train on the labelled frames of `episodes`; cfg: steps, batch_size, lr, positive_frames, val_fraction,
    encoder. Returns the model and a summary (counts, train and validation accuracy per class)."""
    if not episodes or not episodes[0].images:
        raise ValueError("the reward classifier needs episodes with camera frames (record with cameras=...)")
    frames, labels, ids = frame_labels(episodes, int(cfg.get("positive_frames", 3)))
    if labels.min() == labels.max():
        raise ValueError(
            "the episodes hold only one class of frames: record both successful and failed episodes "
            f"({int(labels.sum())} success frames of {len(labels)})"
        )
    rng = np.random.default_rng(seed)
    val_eps = set(rng.permutation(len(episodes))[: max(1, int(len(episodes) * cfg.get("val_fraction", 0.2)))])
    val = np.isin(ids, list(val_eps))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape[1:] for k, v in frames.items()}
    model = RewardClassifier(shapes, cfg.get("encoder"))
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.get("lr", 3e-4)))
    pos, neg = np.flatnonzero((labels == 1) & ~val), np.flatnonzero((labels == 0) & ~val)
    if len(pos) == 0 or len(neg) == 0:
        pos, neg = (
            np.flatnonzero(labels == 1),
            np.flatnonzero(labels == 0),
        )  # too few episodes to hold any out
    half = int(cfg.get("batch_size", 64)) // 2
    model.train()
    for step in range(int(cfg.get("steps", 500))):
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, half)])  # class-balanced
        batch = {k: torch.from_numpy(v[idx]) for k, v in frames.items()}
        loss = F.binary_cross_entropy_with_logits(
            model(batch, augment=True, generator=gen), torch.from_numpy(labels[idx]).float()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and (step + 1) % 50 == 0:
            progress(step + 1, float(loss.detach()))
    model.eval()
    summary = {
        "frames": len(labels),
        "success_frames": int(labels.sum()),
        "episodes": len(episodes),
        "validation_episodes": len(val_eps),
        "train": _accuracy(model, frames, labels, ~val),
        "validation": _accuracy(model, frames, labels, val),
    }
    return model, summary


@torch.no_grad()
def _accuracy(model: RewardClassifier, frames: dict, labels: np.ndarray, mask: np.ndarray) -> dict:
    out = {}
    for name, cls in (("success", 1), ("failure", 0)):
        idx = np.flatnonzero(mask & (labels == cls))
        if len(idx) == 0:
            continue
        probs = torch.cat([
            torch.sigmoid(model({k: torch.from_numpy(v[chunk]) for k, v in frames.items()}))
            for chunk in np.array_split(idx, max(1, len(idx) // 256))
        ])  # fmt: skip
        out[f"{name}_accuracy"] = float(((probs > 0.5).numpy() == bool(cls)).mean())
        out[f"{name}_frames"] = len(idx)
    return out
