"""Observation and action normalisation, stored as module buffers so they travel with the weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    """Observations: z-score from dataset statistics. Actions: the env bounds mapped to [-1, 1].

    Actions use the bounds (not dataset statistics) so that the base samples, clipped to [-1, 1], are always valid
    commands and β means the same fraction of the action range on every robot.
    """

    def __init__(self, state_dim: int, action_low: np.ndarray, action_high: np.ndarray, chunk: int):
        super().__init__()
        low = torch.as_tensor(np.tile(np.asarray(action_low, np.float32), chunk))
        high = torch.as_tensor(np.tile(np.asarray(action_high, np.float32), chunk))
        self.register_buffer("obs_mean", torch.zeros(state_dim))
        self.register_buffer("obs_std", torch.ones(state_dim))
        self.register_buffer("act_low", low)
        self.register_buffer("act_high", high)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, obs: np.ndarray, min_std: float = 1e-3) -> None:
        """Set observation statistics from a dataset (obs [N, S]); constant features keep std 1."""
        obs = np.asarray(obs, np.float64)
        std = obs.std(axis=0)
        std = np.where(std < min_std, 1.0, std)  # constant features: leave them unscaled, do not blow them up
        self.obs_mean.copy_(torch.as_tensor(obs.mean(axis=0), dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32))
        self.fitted.fill_(True)

    def obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def action(self, chunk_flat: torch.Tensor) -> torch.Tensor:
        """Env units [B, H*A] -> [-1, 1]."""
        return 2 * (chunk_flat - self.act_low) / (self.act_high - self.act_low) - 1

    def unaction(self, chunk_flat: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (possibly beyond, after an edit) -> env units, clipped to the bounds."""
        a = (chunk_flat.clamp(-1, 1) + 1) / 2 * (self.act_high - self.act_low) + self.act_low
        return a
