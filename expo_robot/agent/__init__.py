"""The learning core: `make_agent(cfg.agent, spec)` builds any agent named in configs/agent/ through a registry.

Every agent has the same surface (see `Agent`), so the actor, the learner and the benchmark never branch on the
algorithm. Sizes depend on the profile (`profile=cpu|reference|demo`): each agent config has a `profiles:` block
whose entry is merged over its top-level fields.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from expo_robot.agent.core import AgentStateError, resolve_device

__all__ = ["AGENTS", "Agent", "AgentSpec", "AgentStateError", "agent_params", "make_agent", "resolve_device"]


@dataclass(frozen=True)
class AgentSpec:
    """What the networks are sized from: flat state, per-step action with its bounds, chunk length H, and the
    cameras (name -> (height, width, channels) of uint8 images; none for state-only tasks)."""

    state_dim: int
    action_dim: int
    action_low: Any  # [A] env units
    action_high: Any  # [A]
    chunk: int
    images: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    def __post_init__(self):
        low, high = np.asarray(self.action_low, np.float32), np.asarray(self.action_high, np.float32)
        if low.shape != (self.action_dim,) or high.shape != (self.action_dim,) or not np.all(high > low):
            raise ValueError(
                f"action bounds must be two [{self.action_dim}] arrays with high > low; got {low} and {high}"
            )
        if self.chunk < 1 or self.state_dim < 1:
            raise ValueError(f"chunk and state_dim must be >= 1 (got {self.chunk}, {self.state_dim})")


class Agent(Protocol):
    # [S] (+ images name -> [H, W, C]) -> [H, A] env units
    def act(self, state: np.ndarray, mode: str = "explore", images: dict | None = None) -> np.ndarray: ...
    # [B, S] (+ images name -> [B, H, W, C]) -> [B, H, A]
    def act_batch(
        self, states: np.ndarray, mode: str = "explore", images: dict | None = None
    ) -> np.ndarray: ...
    def pretrain(
        self, offline_buffer, steps: int, progress: Callable[[int, dict], None] | None = None
    ) -> dict: ...
    def update(self, offline_buffer, online_buffer) -> dict: ...
    def acting_state(self) -> dict[str, np.ndarray]: ...
    def load_acting_state(self, d: dict[str, np.ndarray]) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, d: dict) -> None: ...


# name -> "module:Class" (imported on demand); several configs may share one class with different flags.
AGENTS = {
    "expo": "expo_robot.agent.expo:ExpoAgent",
    "best_of_n": "expo_robot.agent.expo:ExpoAgent",
    "expo_no_otf_backup": "expo_robot.agent.expo:ExpoAgent",
    "rlpd": "expo_robot.agent.rlpd:RLPDAgent",
    "rlpd_step": "expo_robot.agent.rlpd:RLPDAgent",
    "bc": "expo_robot.agent.bc:BCAgent",
}


def agent_params(agent_cfg: DictConfig | dict, profile: str | None = None) -> dict:
    """Plain dict of the agent's settings with the chosen profile merged over the top-level fields."""
    cfg = agent_cfg if isinstance(agent_cfg, DictConfig) else OmegaConf.create(agent_cfg)
    if "profiles" not in cfg:  # already resolved (the output of this function)
        return OmegaConf.to_container(cfg, resolve=True)
    if profile is None:
        try:
            profile = cfg.get("profile") or "cpu"
        except InterpolationResolutionError:  # agent config loaded alone, without the root's `profile`
            profile = "cpu"
    profiles = cfg.get("profiles") or {}
    if profile not in profiles:
        raise ValueError(
            f"agent '{cfg.get('name')}' has no profile '{profile}'; choose one of {list(profiles)}"
        )
    base = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("profiles", "profile")])
    merged = OmegaConf.to_container(OmegaConf.merge(base, profiles[profile]), resolve=True)
    merged["profile"] = profile
    return merged


def make_agent(agent_cfg, spec: AgentSpec, device: str = "auto", seed: int = 0, profile: str | None = None):
    """Build the agent named by `agent_cfg.name` (configs/agent/<name>.yaml)."""
    params = agent_params(agent_cfg, profile)
    name = params.get("name")
    if name not in AGENTS:
        raise ValueError(f"unknown agent '{name}'; valid: {', '.join(AGENTS)}")
    module, cls = AGENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)(params, spec, device, seed)
