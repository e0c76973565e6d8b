"""What every agent shares: device, normaliser, random streams, batches as tensors, checkpoints, acting state."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from expo_robot.agent.encoder import ImageEncoder
from expo_robot.agent.normalize import Normalizer


class AgentStateError(ValueError):
    """A checkpoint or acting state that does not match this agent (other config, other spec)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device} asked for, but torch sees no CUDA device; use device=cpu or device=auto"
        )
    return torch.device(device)


class Temperature(nn.Module):
    """SAC's auto-tuned entropy temperature, stored as log(alpha)."""

    def __init__(self, init: float):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()


class AgentCore:
    """Base class. Subclasses fill `self.modules`, `self.optims` and `ACTING` (module names an actor needs)."""

    ACTING: tuple[str, ...] = ()
    USES: tuple[str, ...] = (
        "base",
        "critic",
    )  # the networks that see camera features ("critic": critic and edit)

    def __init__(self, cfg: dict, spec, device="auto", seed: int = 0):
        self.cfg, self.spec = cfg, spec
        self.device = resolve_device(device)
        self.act_dim = spec.chunk * spec.action_dim
        torch.manual_seed(seed)  # network initialisation
        self.gen = torch.Generator(self.device).manual_seed(seed)  # sampling noise on the compute device
        self.cpu_gen = torch.Generator().manual_seed(seed + 1)  # ensemble subsets
        self.rng = np.random.default_rng(seed)  # minibatch indices
        self.norm = Normalizer(spec.state_dim, spec.action_low, spec.action_high, spec.chunk).to(self.device)
        self.modules: dict[str, nn.Module] = {"norm": self.norm}
        self.encoders: dict[str, ImageEncoder] = {}  # role ("shared", or "base" / "critic") -> encoder
        self.views: dict[
            str, torch.Tensor
        ] = {}  # role -> the feature columns its networks see (all if absent)
        self.obs_dim = spec.state_dim
        if spec.images:  # camera features are appended to the state: networks take obs_dim inputs
            self._build_encoders(dict(cfg.get("encoder") or {}))
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.counters = {"updates": 0, "pretrain_steps": 0}

    def optimizer(self, cls: type[torch.optim.Optimizer], params, **kw) -> torch.optim.Optimizer:
        """`cls(params, **kw)`; with `agent.fast`, its fused form (one kernel for all parameters: the same Adam
        arithmetic), or the foreach form where this device has no fused one."""
        params = list(params)
        if not self.cfg.get("fast", False):
            return cls(params, **kw)
        try:
            return cls(params, fused=True, **kw)
        except (RuntimeError, ValueError):
            return cls(params, foreach=True, **kw)

    def _build_encoders(self, enc_cfg: dict) -> None:
        """One encoder shared by the base and the critic, or one each (`encoder.shared: false`): the base's learns
        from imitation only, the critic's from the TD loss only, so fine-tuning the critic never moves the features
        the (pretrained) base policy acts on. Features: [state | first encoder | second encoder]."""
        roles = ("shared",) if enc_cfg.get("shared", False) or len(self.USES) == 1 else self.USES
        state = torch.arange(self.spec.state_dim)
        for role in roles:
            enc = ImageEncoder(self.spec.images, enc_cfg).to(self.device)
            self.encoders[role] = enc
            self.modules["encoder" if role == "shared" else f"encoder_{role}"] = enc
            if role != "shared":
                cols = torch.arange(self.obs_dim, self.obs_dim + enc.out_dim)
                self.views[role] = torch.cat([state, cols]).to(self.device)
            self.obs_dim += enc.out_dim

    def view(self, obs: torch.Tensor, role: str) -> torch.Tensor:
        """The part of the observation features the `role` networks see ("base" or "critic")."""
        idx = self.views.get(role)
        return obs if idx is None else obs.index_select(-1, idx)

    def view_dim(self, role: str) -> int:
        idx = self.views.get(role)
        return self.obs_dim if idx is None else len(idx)

    # ----- data -----
    def ensure_normalizer(self, buffer) -> None:
        """Fit observation statistics once, from the offline data (or whatever buffer comes first)."""
        if not bool(self.norm.fitted) and buffer is not None and len(buffer) > 0:
            self.norm.fit(buffer.data["obs"][: len(buffer)])

    def tensors(
        self, batch: dict[str, np.ndarray], grad_role: str | None = None, only_role: str | None = None
    ) -> dict[str, torch.Tensor]:
        """A replay batch as tensors: obs and next_obs features (normalised state, then camera features of
        randomly shifted images), action (flat normalised chunk), reward, discount. `grad_role` ("base" or
        "critic"): the obs features of the encoder that role's loss trains keep their graph, so the loss trains it
        (next_obs never does). `only_role`: just what that role's networks read from obs (imitation: the base's
        view; the other encoder's columns are zeros), and no next_obs."""
        t = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items() if k != "source"}
        b = t["obs"].shape[0]
        out = {
            "obs": self.features(t, "obs", augment=True, grad_role=grad_role, only_role=only_role),
            "action": self.norm.action(t["actions"].reshape(b, -1)),
            "reward": t["reward"],
            "discount": t["discount"],
        }
        if only_role is None:
            out["next_obs"] = self.features(t, "next_obs", augment=True)
        return out

    def trained_encoder(self, role: str) -> ImageEncoder | None:
        """The encoder a loss of the `role` networks trains: the shared one, or the role's own."""
        return self.encoders.get("shared", self.encoders.get(role))

    def features(
        self,
        t: dict[str, torch.Tensor],
        key: str,
        augment: bool,
        grad_role: str | None = None,
        only_role: str | None = None,
    ) -> torch.Tensor:
        """Normalised state t[key], followed by the encoders' features of images t[f"{key}_image.<camera>"].
        `grad_role`: the features of the encoder that role's loss trains keep their graph (the others never do).
        `only_role`: the encoders that role does not see are not run (zeros in their columns)."""
        obs = self.norm.obs(t[key].reshape(-1, self.spec.state_dim))
        if not self.encoders:
            return obs
        images = {name: t[f"{key}_image.{name}"] for name in self.spec.images}
        trained = self.trained_encoder(grad_role) if grad_role else None
        seen = self.trained_encoder(only_role) if only_role else None
        feats = []
        for enc in self.encoders.values():
            if seen is not None and enc is not seen:
                feats.append(obs.new_zeros(len(obs), enc.out_dim))
                continue
            with torch.set_grad_enabled(enc is trained):
                feats.append(enc(images, augment, self.cpu_gen))
        return torch.cat([obs, *feats], dim=-1)

    def critic_minibatches(self, batches: list[dict], trained_steps: int | None) -> Iterator[dict]:
        """Tensors of each of one update's critic minibatches, every camera frame encoded once.

        The last `trained_steps` minibatches (None: all) train the critic's image encoder: each is encoded when its
        step comes, after the previous steps changed that encoder. The others are encoded together, in one pass
        without a graph, before the first step: no encoder changes before the first trained step, so their
        features are the ones a step-by-step loop would compute."""
        n = len(batches)
        trained = n if trained_steps is None or not self.encoders else min(n, int(trained_steps))
        frozen = n - trained
        if frozen:
            t = self.tensors(_concat(batches[:frozen]))
            yield from _split(t, [len(b["obs"]) for b in batches[:frozen]])
        for batch in batches[frozen:]:
            yield self.tensors(batch, grad_role="critic")

    def obs_tensor(self, state: np.ndarray, images: dict[str, np.ndarray] | None = None) -> torch.Tensor:
        # copies: observations are read-only views on received messages, which torch must not alias
        t = {"obs": torch.from_numpy(np.array(state, np.float32)).to(self.device)}
        if self.encoders:
            if not images or set(images) != set(self.spec.images):
                raise ValueError(
                    f"this agent sees cameras {sorted(self.spec.images)}; got images {sorted(images or {})}"
                )
            for name, img in images.items():
                img = torch.from_numpy(np.array(img, np.uint8)).to(self.device)
                t[f"obs_image.{name}"] = img.reshape(-1, *self.spec.images[name])
        return self.features(t, "obs", augment=False)

    def encoder_params(self, role: str) -> list[nn.Parameter]:
        """Parameters of the encoder the `role` networks' loss trains (none without cameras): the shared one
        (imitation in pretraining, the TD loss online) or the role's own."""
        enc = self.trained_encoder(role)
        return [p for p in enc.parameters() if p.requires_grad] if enc is not None else []

    def to_env(self, action: torch.Tensor) -> np.ndarray:
        """Normalised flat chunks [B, D] -> env units [B, H, A], clipped to the action bounds."""
        a = self.norm.unaction(action).cpu().numpy()
        return a.reshape(-1, self.spec.chunk, self.spec.action_dim)

    # ----- acting -----
    def act(self, state: np.ndarray, mode: str = "explore", images: dict | None = None) -> np.ndarray:
        """One state [S] (and one image per camera, [H, W, C]) -> one chunk [H, A] in env units."""
        batch_images = {k: np.asarray(v)[None] for k, v in images.items()} if images else None
        return self.act_batch(np.asarray(state)[None], mode, batch_images)[0]

    def act_batch(self, states: np.ndarray, mode: str = "explore", images: dict | None = None) -> np.ndarray:
        if mode not in ("explore", "eval"):
            raise ValueError(f"mode must be 'explore' or 'eval', got '{mode}'")
        with torch.no_grad():
            return self.to_env(self._act(self.obs_tensor(states, images), mode == "eval"))

    def _act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        raise NotImplementedError

    # ----- state -----
    def acting_state(self) -> dict[str, np.ndarray]:
        """Flat {module.param: array} with only what an actor needs; plain arrays, safe to send raw."""
        return {
            f"{name}.{k}": v.detach().cpu().numpy().copy()
            for name in self.acting_modules()
            for k, v in self.modules[name].state_dict().items()
        }

    def acting_modules(self) -> tuple[str, ...]:
        """What an actor needs: the normaliser, the image encoder when there are cameras, and ACTING."""
        encoders = tuple(k for k in self.modules if k.startswith("encoder"))
        # a frozen lerobot base is no module: each process loads it from its folder, weight sync never sends it
        return ("norm", *encoders, *(name for name in self.ACTING if name in self.modules))

    def load_acting_state(self, d: dict[str, np.ndarray]) -> None:
        for name in self.acting_modules():
            module = self.modules[name]
            own = module.state_dict()
            new = {}
            for k, v in own.items():
                key = f"{name}.{k}"
                if key not in d or tuple(np.shape(d[key])) != tuple(v.shape):
                    raise AgentStateError(
                        f"acting state lacks '{key}' {tuple(v.shape)} (got {np.shape(d.get(key))}); "
                        "learner and actor must use the same agent config"
                    )
                new[k] = torch.as_tensor(
                    np.array(d[key]), dtype=v.dtype
                )  # copy: socket buffers are read-only
            module.load_state_dict(new)

    def state_dict(self) -> dict:
        return {
            "agent": type(self).__name__,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optims": {k: o.state_dict() for k, o in self.optims.items()},
            "counters": dict(self.counters),
            "rng": {
                "torch": self.gen.get_state(),
                "cpu": self.cpu_gen.get_state(),
                "numpy": self.rng.bit_generator.state,
            },
        }

    def load_state_dict(self, d: dict) -> None:
        if d.get("agent") != type(self).__name__ or set(d["modules"]) != set(self.modules):
            raise AgentStateError(
                f"checkpoint is for {d.get('agent')} with modules {sorted(d['modules'])}; this agent is "
                f"{type(self).__name__} with {sorted(self.modules)}: load it with the config it was saved with"
            )
        for k, m in self.modules.items():
            m.load_state_dict(d["modules"][k])
        for k, o in self.optims.items():
            o.load_state_dict(d["optims"][k])
        self.counters = dict(d["counters"])
        self.gen.set_state(d["rng"]["torch"])
        self.cpu_gen.set_state(d["rng"]["cpu"])
        self.rng.bit_generator.state = d["rng"]["numpy"]


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _split(t: dict[str, torch.Tensor], sizes: list[int]) -> Iterator[dict[str, torch.Tensor]]:
    parts = {k: v.split(sizes) for k, v in t.items()}
    for i in range(len(sizes)):
        yield {k: v[i] for k, v in parts.items()}
