"""Tiny agents and buffers shared by the agent tests (single-threaded torch: the machine is shared).

Imported by name (`from agent_fixtures import ...`): tests/ folders have no __init__.py.
"""

import functools

import numpy as np
import torch
from omegaconf import OmegaConf

from expo_robot.agent import AgentSpec, make_agent
from expo_robot.config import load_config
from expo_robot.data.replay import ReplayBuffer

torch.set_num_threads(1)
SPEC = AgentSpec(state_dim=5, action_dim=2, action_low=[-1.0, 0.0], action_high=[1.0, 2.0], chunk=3)


@functools.cache
def _composed(name: str):
    return load_config([f"agent={name}", "profile=demo"]).agent


def agent_cfg(name: str, **overrides):
    """configs/agent/<name>.yaml as Hydra composes it, demo profile, with overrides merged into that profile."""
    cfg = OmegaConf.create(
        OmegaConf.to_container(_composed(name))
    )  # not in struct mode: overrides may add keys
    return OmegaConf.merge(cfg, {"profile": "demo", "profiles": {"demo": overrides}})


def build(name: str, seed: int = 0, **overrides):
    return make_agent(agent_cfg(name, **overrides), SPEC, device="cpu", seed=seed)


def random_buffer(n: int, seed: int = 0, spec: AgentSpec = SPEC) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(n, spec.state_dim, spec.chunk, spec.action_dim)
    low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
    buf.add_batch(
        {
            "obs": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
            "actions": rng.uniform(low, high, size=(n, spec.chunk, spec.action_dim)).astype(np.float32),
            "reward": rng.integers(0, 2, n).astype(np.float32),
            "next_obs": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
            "discount": np.full(n, 0.99**spec.chunk, np.float32),
            "steps": np.full(n, spec.chunk),
            "intervention": np.zeros(n, bool),
        }
    )
    return buf
