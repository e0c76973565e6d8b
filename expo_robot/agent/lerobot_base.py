"""A policy trained with lerobot (Diffusion Policy, or a flow-matching policy such as SmolVLA or pi0) as EXPO's base.

EXPO never backpropagates through its base, so any sampler of action chunks can propose candidates. This adapter
loads the folder that lerobot's training or `save_pretrained` wrote with lerobot's own config class, policy factory
and saved pre/post-processors (its normalisation), maps this project's observation onto the policy's input features,
and turns N noise draws per observation into N candidate chunks in one batched `predict_action_chunk` call, returned
as the first H steps in this project's normalised action space: what `agent/select.py` takes as `proposals`.

The base is frozen here: no imitation updates in this first version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from expo_robot.agent.normalize import Normalizer

STATE = "state"
_STATE_SLICE = re.compile(r"^state\[(\d+):(\d+)\]$")


class LerobotBaseError(ValueError):
    """A lerobot policy folder that cannot serve as this robot's base (what is wrong and what to do)."""


def load_lerobot_parts(path: str | Path, device: str | torch.device = "cpu"):
    """(config, policy, preprocessor, postprocessor) from a local lerobot policy folder; nothing is downloaded."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    path = Path(path)
    needed = ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise LerobotBaseError(
            f"agent.base.path={path} is not a lerobot policy folder (missing {', '.join(missing)}); give the "
            "folder lerobot's training wrote (outputs/train/<run>/checkpoints/<step>/pretrained_model) or that "
            "policy.save_pretrained and its processors' save_pretrained wrote"
        )
    config = PreTrainedConfig.from_pretrained(path, local_files_only=True)
    config.device = torch.device(device).type
    try:
        policy_cls = get_policy_class(config.type)
    except ImportError as e:
        raise LerobotBaseError(
            f"lerobot policy '{config.type}' needs a package that is not installed: {e}"
        ) from e
    policy = policy_cls.from_pretrained(path, config=config, local_files_only=True)
    policy.to(device).eval().requires_grad_(False)
    device_override = {"device_processor": {"device": str(device)}}
    pre, post = make_pre_post_processors(
        config, pretrained_path=str(path), preprocessor_overrides=device_override
    )
    return config, policy, pre, post


def noise_shape(config) -> tuple[int, int]:
    """The shape of one noise draw of `predict_action_chunk(batch, noise=...)`, per sample."""
    action_dim = config.output_features["action"].shape[0]
    if hasattr(config, "horizon") and config.type == "diffusion":
        return (config.horizon, action_dim)
    if hasattr(config, "chunk_size") and hasattr(config, "max_action_dim"):  # pi0, pi0.5, SmolVLA
        return (config.chunk_size, config.max_action_dim)
    raise LerobotBaseError(
        f"lerobot policy '{config.type}' is not a diffusion or flow-matching sampler that takes a noise "
        "argument; agent.base.kind=lerobot supports diffusion, pi0, pi05 and smolvla policies"
    )


def robot_features(spec) -> dict[str, tuple[int, ...]]:
    """What this robot provides, by the names an observation map uses: `state` [S] and each camera [C, H, W]."""
    provided = {STATE: (spec.state_dim,)}
    for name, (h, w, c) in spec.images.items():
        provided[name] = (c, h, w)
    return provided


def default_source(key: str, ftype: str, spec) -> str | None:
    """The robot feature a policy input feature reads when the config does not say: names matched."""
    if key == "observation.state":
        return STATE
    if ftype == "VISUAL":
        camera = key.removeprefix("observation.images.").removeprefix("observation.image")
        if camera in spec.images:
            return camera
        if camera == "" and len(spec.images) == 1:  # "observation.image": the only camera
            return next(iter(spec.images))
    return None


def source_shape(source: str, spec) -> tuple[int, ...] | None:
    """The shape the robot gives for `source` ("state", "state[a:b]" or a camera name), None if it has none."""
    sliced = _STATE_SLICE.match(source)
    if sliced:
        a, b = int(sliced[1]), int(sliced[2])
        return (b - a,) if 0 <= a < b <= spec.state_dim else None
    return robot_features(spec).get(source)


def map_observation(
    input_features: Mapping, spec, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """policy input feature -> robot source, by `overrides` (agent.base.observation_map) then by name.

    Every feature the policy expects must be found with the shape it expects, or one error lists them all."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(input_features))
    mapping, problems = {}, []
    for key, feature in input_features.items():
        expected = tuple(feature.shape)
        source = overrides.get(key) or default_source(key, feature.type.name, spec)
        if source is None:
            problems.append(f"{key} {expected}: no robot feature of that name")
            continue
        got = source_shape(source, spec)
        if got != expected:
            problems.append(f"{key} {expected}: mapped to '{source}', which is {got or 'not provided'}")
            continue
        mapping[key] = source
    if unknown:
        problems.append(f"agent.base.observation_map names features the policy does not have: {unknown}")
    if problems:
        expects = ", ".join(f"{k} {tuple(f.shape)}" for k, f in input_features.items())
        provides = ", ".join(f"{k} {v}" for k, v in robot_features(spec).items())
        raise LerobotBaseError(
            f"the lerobot policy's inputs do not match this robot: {'; '.join(problems)}. The policy expects "
            f"{expects}; the robot provides {provides} (slice the state as 'state[a:b]'). Map them with "
            "agent.base.observation_map={policy_feature: robot_feature}"
        )
    return mapping


class LerobotBase:
    """A frozen lerobot policy proposing candidate chunks in this project's normalised action space.

    `sample(states, images, n)` -> [B, n, H*A] in [-1, 1], the layout of `FlowBase.sample` and of `select`'s
    `proposals`. It reads the robot's raw observation (env units, uint8 images): lerobot's own preprocessor
    normalises it with the statistics saved beside the policy."""

    def __init__(self, path, spec, observation_map: Mapping[str, str] | None = None, device="cpu"):
        self.spec, self.device = spec, torch.device(device)
        self.config, self.policy, self.pre, self.post = load_lerobot_parts(path, self.device)
        self.sources = map_observation(self.config.input_features, spec, observation_map)
        self.noise_shape = noise_shape(self.config)
        self._check_action(spec)
        self.norm = Normalizer(spec.state_dim, spec.action_low, spec.action_high, spec.chunk).to(self.device)

    def _check_action(self, spec) -> None:
        """The policy's action must be this robot's, and its chunk at least the session's H (the first H run)."""
        action_dim = self.config.output_features["action"].shape[0]
        if action_dim != spec.action_dim:
            raise LerobotBaseError(
                f"the lerobot policy outputs {action_dim}-d actions; this robot takes {spec.action_dim}-d actions"
            )
        if getattr(self.config, "n_obs_steps", 1) != 1:
            raise LerobotBaseError(
                f"the lerobot policy conditions on n_obs_steps={self.config.n_obs_steps} past observations; "
                "agent.base.kind=lerobot supports n_obs_steps=1 for now (retrain with --policy.n_obs_steps=1)"
            )
        self.policy_chunk = int(self.config.n_action_steps)
        if spec.chunk > self.policy_chunk:
            raise LerobotBaseError(
                f"the session acts in chunks of H={spec.chunk} steps but the lerobot policy returns "
                f"n_action_steps={self.policy_chunk}; set the task's chunk to <= {self.policy_chunk}, or retrain "
                "with a larger n_action_steps"
            )

    def observation_batch(
        self, states: np.ndarray, images: Mapping | None, n: int
    ) -> dict[str, torch.Tensor]:
        """The robot's observation [B, ...] as the policy's raw input features, each row repeated n times."""
        states = torch.as_tensor(states, dtype=torch.float32, device=self.device)
        states = states.reshape(-1, self.spec.state_dim)
        batch = {}
        for key, source in self.sources.items():
            if source == STATE or _STATE_SLICE.match(source):
                sliced = _STATE_SLICE.match(source)
                value = states if sliced is None else states[:, int(sliced[1]) : int(sliced[2])]
            else:  # uint8 [B, H, W, C] -> float [B, C, H, W] in [0, 1], as lerobot's datasets give images
                frame = torch.as_tensor(np.asarray((images or {})[source]), device=self.device)
                value = frame.reshape(-1, *self.spec.images[source]).permute(0, 3, 1, 2).float() / 255
            batch[key] = value.repeat_interleave(n, dim=0)
        return batch

    @torch.no_grad()
    def sample(
        self,
        states: np.ndarray,
        images: Mapping | None = None,
        n: int = 8,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, S] env-unit states (+ camera name -> [B, H, W, C] uint8) -> [B, n, H*A] candidate chunks in [-1, 1].

        `noise` [B * n, *noise_shape]: the starting points (drawn from `generator` when absent). Samplers that
        also draw noise inside (DDPM steps) draw it from torch's global stream, seeded here from `generator` in a
        forked RNG state, so that equal generators give equal candidates and the caller's stream is untouched."""
        batch = self.observation_batch(states, images, n)
        rows = next(iter(batch.values())).shape[0]
        if noise is None:
            noise = torch.randn(rows, *self.noise_shape, device=self.device, generator=generator)
        elif tuple(noise.shape) != (rows, *self.noise_shape):
            raise LerobotBaseError(f"noise must be {(rows, *self.noise_shape)}, got {tuple(noise.shape)}")
        if self.config.type == "diffusion":  # its offline path reads [B, n_obs_steps, ...]
            batch = {
                k: v.unsqueeze(1) if k not in self.config.image_features else v for k, v in batch.items()
            }
        seed = None
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            chunks = self.post(self.policy.predict_action_chunk(self.pre(batch), noise=noise.to(self.device)))
        first = chunks.to(self.device)[:, : self.spec.chunk].reshape(rows, -1)
        b = rows // n
        return self.norm.action(first).clamp(-1, 1).reshape(b, n, -1)


class SessionLerobotBase:
    """A frozen `LerobotBase` behind the agent's base interface, `sample(obs, n, steps, generator)` -> [B, n, D]
    from the agent's normalised state features: the state is mapped back to env units (the agent's normaliser is an
    exact affine map) for lerobot's own preprocessor. State only for now: camera features are encodings, not the
    images a lerobot policy reads."""

    def __init__(self, base: LerobotBase, norm: Normalizer):
        self.base, self.norm = base, norm

    def sample(self, obs: torch.Tensor, n: int, steps: int | None = None, generator=None) -> torch.Tensor:
        if steps is not None:
            raise LerobotBaseError(
                "a lerobot base samples with its own number of denoising steps; set "
                "agent.profiles.<profile>.select.proposal_steps=null"
            )
        states = obs[:, : self.base.spec.state_dim] * self.norm.obs_std + self.norm.obs_mean
        return self.base.sample(states, None, n, generator)


def parse_observation_map(value) -> dict[str, str]:
    """agent.base.observation_map as a mapping (YAML) or as "feature=source" strings (the command line, where a
    Hydra dict key cannot contain a dot): `'agent.base.observation_map=["observation.state=state[0:18]"]'`."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    pairs = [str(item).split("=", 1) for item in value]
    bad = [item for item, pair in zip(value, pairs) if len(pair) != 2]
    if bad:
        raise LerobotBaseError(f"agent.base.observation_map entries must read feature=source; got {bad}")
    return dict(pairs)


def session_lerobot_base(cfg: Mapping, spec, norm: Normalizer, device) -> SessionLerobotBase:
    """agent.base.kind=lerobot: the folder agent.base.path, its inputs mapped by agent.base.observation_map."""
    if not cfg.get("path"):
        raise LerobotBaseError(
            "agent.base.kind=lerobot needs agent.base.path=<the folder lerobot's training or save_pretrained wrote>"
        )
    if spec.images:
        raise LerobotBaseError(
            f"agent.base.kind=lerobot runs on state observations for now; this robot has cameras "
            f"{sorted(spec.images)} (a lerobot base reading images works through LerobotBase, not yet in a session)"
        )
    base = LerobotBase(cfg["path"], spec, parse_observation_map(cfg.get("observation_map")), device)
    return SessionLerobotBase(base, norm)
