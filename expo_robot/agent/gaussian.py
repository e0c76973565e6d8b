"""Tanh-squashed Gaussians: the EXPO edit policy (a bounded nudge of a base chunk) and the RLPD actor."""

from __future__ import annotations

import math

import torch
from torch import nn

from expo_robot.agent.nets import mlp

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """sum log(1 - tanh(u)^2), in the numerically stable form 2 (log 2 - u - softplus(-2u))."""
    return (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)


class TanhGaussianHead(nn.Module):
    """MLP -> (mean, log_std) of a diagonal Gaussian over u; returns tanh(u) and log p(tanh(u)) (None when not
    asked for: acting needs no density, and computing it is two thirds of a small head's time on a CPU)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, depth: int, dropout: float = 0.0):
        super().__init__()
        self.out_dim = out_dim
        self.net = mlp(in_dim, hidden, depth, 2 * out_dim, dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        deterministic: bool = False,
        noise: torch.Tensor | None = None,
        generator=None,
        log_prob: bool = True,
    ):
        mean, log_std = self.net(x).chunk(2, dim=-1)
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        if deterministic:
            u = mean
        else:
            if noise is None:
                noise = torch.randn(mean.shape, device=mean.device, generator=generator)
            u = mean + std * noise
        if not log_prob:
            return torch.tanh(u), None
        return torch.tanh(u), torch.distributions.Normal(mean, std).log_prob(u).sum(-1) - tanh_log_det(u)


class EditPolicy(nn.Module):
    """pi(u | s, a); edited = a + beta * tanh(u). Not re-clipped to [-1, 1]: the action bounds are applied later."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: int, depth: int, beta: float, dropout: float = 0.0
    ):
        super().__init__()
        self.beta = beta
        self.act_dim = act_dim
        self.head = TanhGaussianHead(obs_dim + act_dim, act_dim, hidden, depth, dropout)

    def forward(
        self, obs, action, deterministic: bool = False, noise=None, generator=None, log_prob: bool = True
    ):
        """Returns (edited action, log pi(edited | s, a) with the -d log beta change-of-variables term, or None)."""
        squashed, logp = self.head(torch.cat([obs, action], -1), deterministic, noise, generator, log_prob)
        edited = action + self.beta * squashed
        return edited, (logp - self.act_dim * math.log(self.beta) if log_prob else None)


class GaussianActor(nn.Module):
    """The RLPD actor: a tanh-Gaussian over the normalised action chunk in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, depth: int):
        super().__init__()
        self.head = TanhGaussianHead(obs_dim, act_dim, hidden, depth)

    def forward(self, obs, deterministic: bool = False, generator=None):
        return self.head(obs, deterministic, generator=generator)
