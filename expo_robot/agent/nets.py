"""Network building blocks: MLPs, a vectorised ensemble of MLPs, and the residual denoiser of the base policy."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, depth: int, out_dim: int, layer_norm: bool = False, dropout: float = 0.0):
    """`depth` hidden layers of width `hidden` (ReLU), optional LayerNorm before each activation."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers.append(nn.Linear(d, hidden))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(nn.ReLU())
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: x [E, B, in] -> [E, B, out]."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # same init as nn.Linear, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with a separate gain and bias per member: x [E, B, H]."""

    def __init__(self, members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        w, b = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        return torch.nn.functional.layer_norm(x, x.shape[-1:]) * w + b


class EnsembleMLP(nn.Module):
    """E MLPs with LayerNorm before each activation (the RLPD/EXPO critic recipe), evaluated together."""

    def __init__(self, members: int, in_dim: int, hidden: int, depth: int, out_dim: int = 1):
        super().__init__()
        self.members = members
        dims = [in_dim] + [hidden] * depth
        self.hidden = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(EnsembleLayerNorm(members, hidden) for _ in range(depth))
        self.out = EnsembleLinear(members, dims[-1], out_dim)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, in] shared by the members -> [E, B, out]; `members` evaluates only those (in that order)."""
        e = self.members if members is None else members.numel()
        x = x.unsqueeze(0).expand(e, -1, -1)
        for layer, norm in zip(self.hidden, self.norms):
            x = torch.relu(norm(layer(x, members), members))
        return self.out(x, members)


class FourierTime(nn.Module):
    """Learnable Fourier features of a scalar time in [0, 1] (as in the IDQL/EXPO denoiser)."""

    def __init__(self, dim: int):
        super().__init__()
        self.freq = nn.Parameter(torch.randn(dim // 2, 1) * 0.2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t.reshape(-1, 1) @ self.freq.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class _ResidualBlock(nn.Module):
    def __init__(self, hidden: int, dropout: float, expand: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout)
            if dropout > 0
            else nn.Identity(),  # (Identity: no op at all in a traced graph)
            nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden * expand),
            nn.SiLU(),
            nn.Linear(hidden * expand, hidden),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResidualDenoiser(nn.Module):
    """f(obs, noisy action, t) -> vector field or noise; residual MLP with LayerNorm and swish (IDQL style)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int,
        blocks: int,
        time_dim: int,
        dropout: float = 0.0,
        expand: int = 4,
    ):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.time = FourierTime(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim * 2), nn.SiLU(), nn.Linear(time_dim * 2, time_dim)
        )
        self.inp = nn.Linear(obs_dim + act_dim + time_dim, hidden)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden, dropout, expand) for _ in range(blocks)])
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, act_dim))

    def forward(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(self.time(t)).expand(x.shape[0], -1)
        return self.trunk(self.inp(torch.cat([obs, x, temb], dim=-1)))

    # The first layer is linear in cat([obs, x, temb]): a sampler that calls the net many times with one obs at a few
    # known times computes the obs and time terms once (`fixed_inputs`) and adds only the action's term per call.
    def fixed_inputs(self, obs: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B, O], times [T] -> the first layer's obs + time terms (with its bias) [T, B, hidden], and the
        action's weight [A, hidden]: `trunk(torch.addmm(fixed[i], x, weight))` is `forward(obs, x, times[i])`."""
        w, o, a = self.inp.weight, self.obs_dim, self.act_dim
        obs_term = nn.functional.linear(obs, w[:, :o], self.inp.bias)
        time_terms = self.time_mlp(self.time(times)) @ w[:, o + a :].T
        return obs_term.unsqueeze(0) + time_terms.unsqueeze(1), w[:, o : o + a].T

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the first layer."""
        return self.out(self.blocks(h))


def grad_norm(params) -> float:
    """Global L2 norm of the gradients (for metrics)."""
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
