"""RLPD (Ball et al. 2023; reference: ikostrikov/rlpd's SACLearner): SAC with a tanh-Gaussian actor over the whole
chunk (H=1: per step), an ensemble critic with a random-subset min, an entropy term in the TD target and symmetric
half-offline/half-online sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch

from expo_robot.agent.core import AgentCore, Temperature
from expo_robot.agent.critic import (
    EnsembleCritic,
    critic_regression_step,
    make_target,
    random_subset,
)
from expo_robot.agent.gaussian import GaussianActor
from expo_robot.agent.nets import grad_norm
from expo_robot.data.replay import sample_symmetric


class RLPDAgent(AgentCore):
    ACTING = ("actor",)
    USES = ("critic",)  # one image encoder, trained by the TD loss

    def __init__(self, cfg: dict, spec, device="auto", seed: int = 0):
        super().__init__(cfg, spec, device, seed)
        ac, c, a = cfg["actor"], cfg["critic"], cfg["alpha"]
        self.actor = GaussianActor(self.obs_dim, self.act_dim, ac["hidden"], ac["depth"]).to(self.device)
        self.critic = EnsembleCritic(self.obs_dim, self.act_dim, c["members"], c["hidden"], c["depth"])
        self.critic = self.critic.to(self.device)
        self.critic_target = make_target(self.critic)
        self.temperature = Temperature(a["init"]).to(self.device)
        te = a.get("target_entropy")
        self.target_entropy = -self.act_dim / 2 if te is None else float(te)
        self.modules.update(actor=self.actor, critic=self.critic, critic_target=self.critic_target)
        self.modules["temperature"] = self.temperature
        self.optims.update(
            actor=torch.optim.Adam(self.actor.parameters(), lr=ac["lr"]),
            critic=torch.optim.Adam([*self.critic.parameters(), *self.encoder_params("critic")], lr=c["lr"]),
            alpha=torch.optim.Adam(self.temperature.parameters(), lr=a["lr"]),
        )

    def pretrain(
        self, offline_buffer, steps: int, progress: Callable[[int, dict], None] | None = None
    ) -> dict:
        """RLPD starts from scratch (the offline data enters through symmetric sampling); only fits the normaliser."""
        self.ensure_normalizer(offline_buffer)
        return {}

    def _act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.actor(obs, deterministic, self.gen)[0]

    @torch.no_grad()
    def td_target(self, t: dict) -> torch.Tensor:
        """r + gamma^h * mask * (min-subset Q'(s', a') - alpha * log pi(a'|s')), a' ~ pi(s'): the soft value of the
        next chunk. `discount` already holds gamma^h * mask, so the chunk's entropy is discounted like its Q
        (the reference's `target_q -= discount * masks * temp * next_log_probs`); `backup_entropy: false` drops it."""
        next_action, next_log_prob = self.actor(t["next_obs"], generator=self.gen)
        c = self.cfg["critic"]
        subset = random_subset(c["members"], c["subset"], self.cpu_gen, self.device)
        next_v = self.critic_target.min_over(t["next_obs"], next_action, subset)
        if self.cfg.get("backup_entropy", True):
            next_v = next_v - self.temperature() * next_log_prob
        return t["reward"] + t["discount"] * next_v

    def critic_step(self, t: dict) -> dict[str, float]:
        target = self.td_target(t)
        return critic_regression_step(
            self.critic, self.critic_target, self.optims["critic"], t, target, self.cfg["critic"]["tau"]
        )

    def actor_step(self, t: dict) -> dict[str, float]:
        alpha = self.temperature().detach()
        action, log_prob = self.actor(t["obs"], generator=self.gen)
        self.critic.requires_grad_(False)
        q = self.critic(t["obs"], action).mean(0)
        self.critic.requires_grad_(True)
        loss = (alpha * log_prob - q).mean()
        opt = self.optims["actor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = grad_norm(self.actor.parameters())
        opt.step()
        # the reference's form: alpha * (entropy - target); alpha falls while the entropy is above the target
        entropy = -log_prob.detach().mean()
        alpha_loss = self.temperature() * (entropy - self.target_entropy)
        self.optims["alpha"].zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.optims["alpha"].step()
        return {
            "actor/loss": float(loss.detach()),
            "actor/grad_norm": gnorm,
            "actor/entropy": float(entropy),
            "alpha": float(self.temperature().detach()),
            "alpha/loss": float(alpha_loss.detach()),
        }

    def update(self, offline_buffer, online_buffer) -> dict:
        self.ensure_normalizer(
            offline_buffer if offline_buffer is not None and len(offline_buffer) else online_buffer
        )
        metrics: dict[str, float] = {}
        n = self.cfg["batch_size"]
        batches = [
            sample_symmetric(offline_buffer, online_buffer, n, self.rng) for _ in range(self.cfg["utd"])
        ]
        trained = (self.cfg.get("encoder") or {}).get("trained_steps")  # the TD loss trains the encoder
        for t in self.critic_minibatches(batches, trained):
            metrics = self.critic_step(t)
        t["obs"] = t["obs"].detach()  # the actor sees the camera features, never trains them
        metrics |= self.actor_step(t)
        self.counters["updates"] += 1
        metrics["updates"] = self.counters["updates"]
        return metrics
