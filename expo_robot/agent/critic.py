"""Ensemble Q(s, chunk) with LayerNorm, a target copy and the REDQ-style random-subset min."""

from __future__ import annotations

import copy

import torch
from torch import nn

from expo_robot.agent.nets import EnsembleMLP, grad_norm


class EnsembleCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, members: int, hidden: int, depth: int):
        super().__init__()
        self.members = members
        self.net = EnsembleMLP(members, obs_dim + act_dim, hidden, depth, 1)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None
    ) -> torch.Tensor:
        """obs [B, S], action [B, D] -> Q [E, B] (or [len(members), B]: only those members are evaluated)."""
        return self.net(torch.cat([obs, action], -1), members).squeeze(-1)

    def min_over(self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """The pessimistic score: min over the given members [B]."""
        return self(obs, action, members).min(0).values


def random_subset(members: int, size: int, generator=None, device="cpu") -> torch.Tensor:
    """Indices of `size` distinct ensemble members, drawn afresh for every target/score."""
    return torch.randperm(members, generator=generator, device="cpu")[:size].to(device)


def make_target(critic: nn.Module) -> nn.Module:
    target = copy.deepcopy(critic)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o, tau)


def critic_regression_step(
    critic: nn.Module,
    critic_target: nn.Module,
    opt: torch.optim.Optimizer,
    t: dict,
    target: torch.Tensor,
    tau: float,
) -> dict[str, float]:
    """One squared-TD step of every member towards `target` [B], then the Polyak update of the target."""
    q = critic(t["obs"], t["action"])  # [E, B]
    loss = ((q - target) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = grad_norm(critic.parameters())
    opt.step()
    soft_update(critic_target, critic, tau)
    return {
        "critic/loss": float(loss.detach()),
        "critic/grad_norm": gnorm,
        "q/mean": float(q.detach().mean()),
        "q/target_mean": float(target.mean()),
    }
