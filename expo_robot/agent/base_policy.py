"""The expressive base policy over action chunks, trained only by imitation: flow matching or DDPM.

Both work in normalised action space ([-1, 1]^(H*A)) and share one interface:
`loss(obs, actions)` for imitation and `sample(obs, n, steps, generator)` -> [B, n, D] for proposals.
"""

from __future__ import annotations

import copy
import warnings

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


class _Euler(nn.Module):
    """The Euler loop of a flow, as a module so that torch.jit.trace can record it (parameters stay shared).

    x <- x + dt * net(obs, x, i * dt), with what does not change along the loop computed once: the first layer's
    observation and time terms (`ResidualDenoiser.fixed_inputs`), so each step runs only the action's term and the
    trunk (a third fewer operations on a CPU, where their count, not their size, sets the time).
    """

    def __init__(self, net: ResidualDenoiser, steps: int):
        super().__init__()
        self.net, self.steps = net, steps

    def forward(self, obs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dt = 1.0 / self.steps
        times = torch.tensor([i * dt for i in range(self.steps)], device=obs.device)
        fixed, action_weight = self.net.fixed_inputs(obs, times)
        for i in range(self.steps):
            x = torch.add(x, self.net.trunk(torch.addmm(fixed[i], x, action_weight)), alpha=dt)
        return x


class FlowBase(nn.Module):
    """Rectified flow from N(0, I) (t=0) to the data (t=1), Euler integration with `steps` steps.

    Sampling runs the Euler loop as a traced TorchScript graph per input shape (`base.jit`, default on): the
    same operations without Python between the ~150 small ones, ~3x faster on a CPU, where this loop is most of a
    policy step. The graph shares the module's parameters, so optimiser steps, EMA updates and loaded weights
    apply to it as they are.
    """

    MAX_GRAPHS = 8  # shapes differ between acting, evaluation batches and backups; beyond this, run eagerly

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict):
        super().__init__()
        self.act_dim, self.steps = act_dim, cfg["steps"]
        self.net = make_denoiser(obs_dim, act_dim, cfg)
        self.jit = bool(cfg.get("jit", True))
        self.__dict__["_graphs"] = {}  # (shape, steps, training) -> traced _Euler; not a submodule, not saved

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_graphs"] = {}  # a copy (e.g. the EMA base) traces its own graphs over its own parameters
        return state

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, generator=None) -> torch.Tensor:
        x0 = torch.randn(actions.shape, device=actions.device, generator=generator)
        t = torch.rand(actions.shape[0], 1, device=actions.device, generator=generator)
        return self.loss_at(obs, actions, x0, t)

    def loss_at(
        self, obs: torch.Tensor, actions: torch.Tensor, x0: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The loss with its noise x0 [B, D] and times t [B, 1] given: a pure tensor function (torch.compile)."""
        xt = (1 - t) * x0 + t * actions
        return ((self.net(obs, xt, t) - (actions - x0)) ** 2).mean()

    @torch.no_grad()
    def sample(
        self, obs: torch.Tensor, n: int, steps: int | None = None, generator=None, noise=None
    ) -> torch.Tensor:
        """`noise` [B * n, D]: the starting points, when drawn beforehand (the fast update draws them all at once)."""
        steps = steps or self.steps
        b = obs.shape[0]
        o = obs.repeat_interleave(n, dim=0)
        x = (
            torch.randn(b * n, self.act_dim, device=obs.device, generator=generator)
            if noise is None
            else noise
        )
        return self._integrate(o, x, steps).clamp(-1, 1).reshape(b, n, self.act_dim)

    def _integrate(self, obs: torch.Tensor, x: torch.Tensor, steps: int) -> torch.Tensor:
        key = (tuple(obs.shape), steps, self.training)
        graph = self._graphs.get(key)
        if graph is None:
            if not self.jit or len(self._graphs) >= self.MAX_GRAPHS:
                return _Euler(self.net, steps)(obs, x)
            with (
                warnings.catch_warnings()
            ):  # deprecated for torch.compile, which needs a C++ compiler on a CPU
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter(
                    "ignore", torch.jit.TracerWarning
                )  # the step times are constants: right
                graph = torch.jit.trace(_Euler(self.net, steps), (obs, x), check_trace=False)
            self._graphs[key] = graph
        return graph(obs, x)


class OneStepProposer(nn.Module):
    """Proposals for the TD backup in one network pass, distilled from a flow base (the base itself still acts):
    x1 = clamp(z + net(obs, z, 0)), regressed onto where the base's full Euler integration from the same z lands.
    It starts as a copy of the base's network, i.e. one Euler step over the whole interval."""

    def __init__(self, net: ResidualDenoiser):
        super().__init__()
        self.net = copy.deepcopy(net)
        self.act_dim = net.act_dim

    def raw(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Before clipping: what the distillation loss sees (a clipped output has no gradient)."""
        return z + self.net(obs, z, torch.zeros(1, 1, device=z.device))

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int, generator=None, noise=None) -> torch.Tensor:
        """[B, S] -> [B, n, D], like `FlowBase.sample`."""
        b = obs.shape[0]
        if noise is None:
            noise = torch.randn(b * n, self.act_dim, device=obs.device, generator=generator)
        return self.raw(obs.repeat_interleave(n, dim=0), noise).clamp(-1, 1).reshape(b, n, self.act_dim)


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
