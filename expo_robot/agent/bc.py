"""Behaviour cloning: the expressive base policy alone, trained by imitation. EXPO builds on this class."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable

import torch

from expo_robot.agent.base_policy import make_base
from expo_robot.agent.core import AgentCore
from expo_robot.agent.lerobot_base import session_lerobot_base
from expo_robot.agent.nets import grad_norm
from expo_robot.data.replay import sample_symmetric

log = logging.getLogger(__name__)


class BCAgent(AgentCore):
    """Base policy (flow or DDPM) with an EMA copy that acts. Online it does nothing: its curve is the starting point."""

    ACTING = ("base_ema",)
    USES = ("base",)

    def __init__(self, cfg: dict, spec, device="auto", seed: int = 0):
        super().__init__(cfg, spec, device, seed)
        b = cfg["base"]
        if (
            b["kind"] == "lerobot"
        ):  # frozen: proposes, never imitates; loaded by every process from its folder
            self.base = self.base_ema = session_lerobot_base(b, spec, self.norm, self.device)
            self.base_opt = None
            return
        self.base = make_base(b["kind"], self.view_dim("base"), self.act_dim, b).to(self.device)
        self.base_ema = copy.deepcopy(self.base).requires_grad_(False)
        self.base_opt = self.optimizer(
            torch.optim.AdamW,
            [*self.base.parameters(), *self.encoder_params("base")],
            lr=b["lr"],
            weight_decay=b["weight_decay"],
        )
        self.modules.update(base=self.base, base_ema=self.base_ema)
        self.optims["base"] = self.base_opt

    def imitation_step(self, tensors: dict[str, torch.Tensor], ema_rate: float) -> dict[str, float]:
        if self.base_opt is None:  # a frozen lerobot base
            return {}
        self.base.train()
        loss = self.base.loss(self.view(tensors["obs"], "base"), tensors["action"], self.gen)
        self.base_opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = grad_norm(self.base.parameters())
        self.base_opt.step()
        self.base.eval()
        with torch.no_grad():
            for e, p in zip(self.base_ema.parameters(), self.base.parameters()):
                e.lerp_(p, ema_rate)
        return {"base/loss": float(loss.detach()), "base/grad_norm": gnorm}

    def pretrain(
        self, offline_buffer, steps: int, progress: Callable[[int, dict], None] | None = None
    ) -> dict:
        """Imitation on the offline data with a cosine learning-rate decay; `progress(step, metrics)` every 100."""
        self.ensure_normalizer(offline_buffer)
        # a lerobot base is trained with lerobot: the default session.pretrain_steps must not stop its session
        if self.base_opt is None:
            if steps > 0:
                log.info(
                    "agent.base.kind=lerobot: the base was trained with lerobot; skipping %d pretraining steps",
                    steps,
                )
            return {"pretrain/steps": 0}
        b = self.cfg["base"]
        pt = self.cfg["pretrain"]
        metrics: dict[str, float] = {}
        for i in range(steps):
            lr = b["lr"] * 0.5 * (1 + math.cos(math.pi * i / max(steps, 1)))
            for group in self.base_opt.param_groups:
                group["lr"] = lr
            batch = offline_buffer.sample(pt["batch_size"], self.rng)
            t = self.tensors(batch, grad_role="base", only_role="base")  # imitation trains the base's encoder
            metrics = self.imitation_step(t, pt["ema_rate"])
            self.counters["pretrain_steps"] += 1
            if progress is not None and (i + 1) % 100 == 0:
                progress(i + 1, metrics)
        for group in self.base_opt.param_groups:  # fine-tuning continues at the base rate
            group["lr"] = b["lr"]
        return {f"pretrain/{k.split('/')[-1]}": v for k, v in metrics.items()} | {"pretrain/steps": steps}

    def update(self, offline_buffer, online_buffer) -> dict:
        """BC does not learn online; kept so every agent runs in the same loop."""
        return {}

    def _act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.base_ema.sample(self.view(obs, "base"), 1, None, self.gen)[:, 0]

    def _symmetric(self, offline_buffer, online_buffer, n: int):
        self.ensure_normalizer(
            offline_buffer if offline_buffer is not None and len(offline_buffer) else online_buffer
        )
        return sample_symmetric(offline_buffer, online_buffer, n, self.rng)
