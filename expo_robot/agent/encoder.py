"""Camera observations: a small conv net per camera, trained from scratch, with random-shift augmentation.

By default the encoder learns from the task's own losses (DrQ's recipe): the base policy's imitation loss while
pretraining, the critic's TD loss online; the edit policy and the online base steps see its features without a
gradient. Optionally a frozen pretrained network from a local file replaces the conv nets (nothing is downloaded). Its features are appended to the normalised state, so every network
downstream takes one flat observation vector whatever the cameras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def agent_image_shapes(
    cameras: Mapping[str, Sequence[int]], image_size: Sequence[int] | None
) -> dict[str, tuple[int, int, int]]:
    """The frame sizes the agent sees: the cameras' own (image_size null) or all resized to image_size [H, W]
    (a 640x480 camera would make a 150M-parameter encoder and 1.8 MB transitions per step)."""
    if not image_size:
        return {k: tuple(int(d) for d in v) for k, v in cameras.items()}
    h, w = (int(d) for d in image_size)
    return {k: (h, w, int(v[2])) for k, v in cameras.items()}


def resize_frames(frames: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 [..., H, W, C] -> uint8 [..., h, w, C] by area averaging (no aliasing when shrinking)."""
    frames = np.asarray(frames)
    h, w = int(shape[0]), int(shape[1])
    if frames.shape[-3:-1] == (h, w):
        return frames
    lead = frames.shape[:-3]
    x = torch.from_numpy(np.ascontiguousarray(frames.reshape(-1, *frames.shape[-3:]))).permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(h, w), mode="area").round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy().reshape(*lead, h, w, frames.shape[-1])


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ augmentation: pad each image by `pad` pixels (edge values), crop back at a random offset per sample.

    x [B, C, H, W] (uint8 or float); `generator` is a CPU generator (the offsets are drawn on the CPU). One slice
    per image: ~6x faster on a CPU than gathering every pixel through broadcast index tensors.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, y : y + h, x0 : x0 + w] for i, (y, x0) in enumerate(zip(dy, dx))])


def _conv_stack(
    shape: Sequence[int], channels: int, layers: int, strided: int = 1
) -> tuple[nn.Sequential, int]:
    """`strided` first layers have stride 2, the others 1 (most of the cost is on the full-size image)."""
    h, w, c = (int(d) for d in shape)
    convs: list[nn.Module] = []
    for i in range(layers):
        convs += [
            nn.Conv2d(c if i == 0 else channels, channels, 3, stride=2 if i < strided else 1),
            nn.ReLU(),
        ]
    net = nn.Sequential(*convs, nn.Flatten())
    with torch.no_grad():
        out_dim = int(net(torch.zeros(1, c, h, w)).shape[1])
    return net, out_dim


class BackboneError(ValueError):
    """The configured pretrained backbone file cannot be used; the message says what to do."""


class FrozenBackbone(nn.Module):
    """A pretrained image network from a LOCAL TorchScript file (`agent.encoder.backbone`), never trained.

    It takes float RGB [B, 3, H, W] in [0, 1] (any normalisation it needs belongs inside the file) and returns
    features [B, ...]. Its weights are not part of the agent's state (checkpoints, acting weights): every process
    loads them from the file, so the file must be at the same path where the learner and the actors run.
    """

    def __init__(self, path: str):
        super().__init__()
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (OSError, RuntimeError, ValueError) as e:
            raise BackboneError(
                f"agent.encoder.backbone={path!r} is not a readable TorchScript file ({e}); make one with "
                "torch.jit.script(model).save(PATH) or set agent.encoder.backbone=null"
            ) from e
        for weight in module.parameters():
            weight.requires_grad_(False)
        self._module = [module.eval()]  # a list: kept out of parameters and state_dict
        self.path = str(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self._module[0]
        if next(module.parameters(), x).device != x.device:
            module.to(x.device)
        with torch.no_grad():
            return module(x).flatten(1)


def _trunk(shape: Sequence[int], cfg: Mapping, backbone: FrozenBackbone | None) -> tuple[nn.Module, int]:
    """The camera's conv stack (trained) or the shared frozen backbone, and its flat output size."""
    if backbone is None:
        return _conv_stack(
            shape, int(cfg.get("channels", 32)), int(cfg.get("layers", 3)), int(cfg.get("strided_layers", 1))
        )
    h, w, c = (int(d) for d in shape)
    try:
        out_dim = int(backbone(torch.zeros(1, c, h, w)).shape[1])
    except RuntimeError as e:
        raise BackboneError(
            f"agent.encoder.backbone={backbone.path!r} does not take a [1, {c}, {h}, {w}] image ({e}); "
            "change agent.encoder.image_size or the backbone"
        ) from e
    return backbone, out_dim


class ImageEncoder(nn.Module):
    """cameras: name -> (height, width, channels) of uint8 images. Output: [B, len(cameras) * embed].

    Per camera: a small conv net trained from scratch, or (`backbone: PATH`) one frozen pretrained network shared by
    all cameras; then a trained head (linear, LayerNorm, tanh)."""

    def __init__(self, cameras: Mapping[str, Sequence[int]], cfg: Mapping | None = None):
        super().__init__()
        cfg = dict(cfg or {})
        self.embed, self.pad = int(cfg.get("embed", 64)), int(cfg.get("shift", 4))
        backbone = FrozenBackbone(cfg["backbone"]) if cfg.get("backbone") else None
        self.names = sorted(cameras)
        self.convs, self.heads = nn.ModuleDict(), nn.ModuleDict()
        for name in self.names:
            conv, flat = _trunk(cameras[name], cfg, backbone)
            self.convs[name] = conv
            # LayerNorm + tanh bound the features the critic sees (DrQ-v2's trunk)
            self.heads[name] = nn.Sequential(nn.Linear(flat, self.embed), nn.LayerNorm(self.embed), nn.Tanh())
        self.out_dim = self.embed * len(self.names)

    def forward(
        self,
        images: Mapping[str, torch.Tensor],
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """images: name -> uint8 [B, H, W, C] (as cameras deliver them)."""
        feats = []
        for name in self.names:
            x = images[name].permute(0, 3, 1, 2)
            if augment and self.pad > 0:
                x = random_shift(
                    x, self.pad, generator
                )  # on the uint8 frames: a quarter of the bytes to move
            x = x.float().div_(255.0)
            feats.append(self.heads[name](self.convs[name](x)))
        return torch.cat(feats, dim=-1)
