"""The expressive base policy over action chunks, trained only by imitation: flow matching or DDPM.

Both work in normalised action space ([-1, 1]^(H*A)) and share one interface:
`loss(obs, actions)` for imitation and `sample(obs, n, steps, generator)` -> [B, n, D] for proposals.
"""

from __future__ import annotations

import torch
from torch import nn

from expo_robot.agent.nets import ResidualDenoiser


def make_denoiser(obs_dim: int, act_dim: int, cfg: dict) -> ResidualDenoiser:
    """The shared noise/velocity network of both base policies, sized by the `base` config."""
    return ResidualDenoiser(
        obs_dim,
        act_dim,
        cfg["hidden"],
        cfg["blocks"],
        cfg["time_dim"],
        cfg["dropout"],
        cfg.get("expand", 4),
    )


class FlowBase(nn.Module):
    """Rectified flow from N(0, I) (t=0) to the data (t=1), Euler integration with `steps` steps."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict):
        super().__init__()
        self.act_dim, self.steps = act_dim, cfg["steps"]
        self.net = make_denoiser(obs_dim, act_dim, cfg)

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, generator=None) -> torch.Tensor:
        x0 = torch.randn(actions.shape, device=actions.device, generator=generator)
        t = torch.rand(actions.shape[0], 1, device=actions.device, generator=generator)
        xt = (1 - t) * x0 + t * actions
        return ((self.net(obs, xt, t) - (actions - x0)) ** 2).mean()

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int, steps: int | None = None, generator=None) -> torch.Tensor:
        steps = steps or self.steps
        b = obs.shape[0]
        o = obs.repeat_interleave(n, dim=0)
        x = torch.randn(b * n, self.act_dim, device=obs.device, generator=generator)
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((1, 1), i * dt, device=obs.device)
            x = x + dt * self.net(o, x, t)
        return x.clamp(-1, 1).reshape(b, n, self.act_dim)


def vp_betas(steps: int, b_min: float = 0.1, b_max: float = 10.0) -> torch.Tensor:
    """The variance-preserving schedule of the IDQL/EXPO reference code."""
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    alpha = torch.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
    return (1 - alpha).float()


class DDPMBase(nn.Module):
    """DDPM with a VP schedule, noise prediction, samples clipped to [-1, 1] after every denoising step."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict):
        super().__init__()
        self.act_dim, self.steps = act_dim, cfg["steps"]
        self.net = make_denoiser(obs_dim, act_dim, cfg)
        betas = vp_betas(self.steps)
        alphas = 1 - betas
        self.register_buffer("betas", betas)
        self.register_buffer("alphas", alphas)
        self.register_buffer("alpha_bars", torch.cumprod(alphas, 0))

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, generator=None) -> torch.Tensor:
        k = torch.randint(0, self.steps, (actions.shape[0],), device=actions.device, generator=generator)
        ab = self.alpha_bars[k].unsqueeze(-1)
        eps = torch.randn(actions.shape, device=actions.device, generator=generator)
        xt = ab.sqrt() * actions + (1 - ab).sqrt() * eps
        return ((self.net(obs, xt, (k.float() + 1).unsqueeze(-1) / self.steps) - eps) ** 2).mean()

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int, steps: int | None = None, generator=None) -> torch.Tensor:
        if steps not in (None, self.steps):
            raise ValueError(
                f"DDPM base samples with its own T={self.steps}; set proposal_steps to null or {self.steps}"
            )
        b = obs.shape[0]
        o = obs.repeat_interleave(n, dim=0)
        x = torch.randn(b * n, self.act_dim, device=obs.device, generator=generator)
        for k in reversed(range(self.steps)):
            t = torch.full((1, 1), (k + 1) / self.steps, device=obs.device)
            eps = self.net(o, x, t)
            a, ab = self.alphas[k], self.alpha_bars[k]
            x = (x - (1 - a) / (1 - ab).sqrt() * eps) / a.sqrt()
            if k > 0:
                var = self.betas[k] * (1 - self.alpha_bars[k - 1]) / (1 - ab)
                x = x + var.sqrt() * torch.randn(x.shape, device=x.device, generator=generator)
            x = x.clamp(-1, 1)
        return x.reshape(b, n, self.act_dim)


BASES = {"flow": FlowBase, "ddpm": DDPMBase}


def make_base(kind: str, obs_dim: int, act_dim: int, cfg) -> nn.Module:
    if kind not in BASES:
        raise ValueError(f"unknown base '{kind}'; choose one of {', '.join(BASES)}")
    return BASES[kind](obs_dim, act_dim, cfg)
