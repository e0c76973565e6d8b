"""Learner checkpoints: one file with everything needed to resume (networks, optimisers, counters, buffers)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing or unreadable; the message names the file."""


def save_checkpoint(path: Path, state: dict) -> Path:
    """Atomic: written to a temporary file, then renamed, so a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():  # a run folder or its checkpoints folder
        for cand in (path / "checkpoints" / "latest.pt", path / "latest.pt"):
            if cand.exists():
                path = cand
                break
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: pass a .pt file or a run folder with checkpoints/latest.pt"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
