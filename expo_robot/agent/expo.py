"""EXPO: an imitation-trained expressive base, a bounded Gaussian edit policy, and on-the-fly (OTF) selection.

One class with two flags covers the paper's method and its ablations:
- use_edit=False: best-of-N selection among base proposals (IDQL-like, "no edit policy");
- otf_backup=False: the TD target uses one edited base sample instead of the OTF argmax ("no OTF in the backup").
"""

from __future__ import annotations

import logging

import torch

from expo_robot.agent.base_policy import FlowBase, OneStepProposer
from expo_robot.agent.bc import BCAgent
from expo_robot.agent.core import Temperature
from expo_robot.agent.critic import (
    EnsembleCritic,
    critic_regression_step,
    make_target,
    random_subset,
)
from expo_robot.agent.fast_update import FastUpdate, unsupported
from expo_robot.agent.gaussian import EditPolicy
from expo_robot.agent.nets import grad_norm
from expo_robot.agent.proposal_cache import ProposalCache
from expo_robot.agent.select import Selection, select

log = logging.getLogger(__name__)


class ExpoAgent(BCAgent):
    ACTING = ("base_ema", "edit", "critic_target")
    USES = ("base", "critic")

    def __init__(self, cfg: dict, spec, device="auto", seed: int = 0):
        super().__init__(cfg, spec, device, seed)
        e, c, a, s = cfg["edit"], cfg["critic"], cfg["alpha"], cfg["select"]
        self.use_edit, self.otf_backup = bool(cfg["use_edit"]), bool(cfg["otf_backup"])
        if cfg["base"]["kind"] == "ddpm" and s.get("proposal_steps") not in (None, cfg["base"]["steps"]):
            raise ValueError(
                f"a DDPM base samples with all its T={cfg['base']['steps']} steps; set "
                "agent.profiles.<profile>.select.proposal_steps=null (fewer proposal steps need base.kind=flow)"
            )
        if cfg["base"]["kind"] == "lerobot" and s.get("proposal_steps") is not None:
            raise ValueError(
                "a lerobot base samples with its own denoising steps; set "
                "agent.profiles.<profile>.select.proposal_steps=null"
            )
        obs_dim = self.view_dim("critic")  # the edit policy sees what the critic sees
        self.edit = EditPolicy(obs_dim, self.act_dim, e["hidden"], e["depth"], e["beta"], e["dropout"])
        self.critic = EnsembleCritic(obs_dim, self.act_dim, c["members"], c["hidden"], c["depth"])
        self.edit, self.critic = self.edit.to(self.device), self.critic.to(self.device)
        self.critic_target = make_target(self.critic)
        self.temperature = Temperature(a["init"]).to(self.device)
        te = a.get("target_entropy")
        self.target_entropy = -self.act_dim / 2 if te is None else float(te)
        self.modules.update(edit=self.edit, critic=self.critic, critic_target=self.critic_target)
        self.modules["temperature"] = self.temperature
        self.optims.update(
            edit=self.optimizer(torch.optim.Adam, self.edit.parameters(), lr=e["lr"]),
            critic=self.optimizer(
                torch.optim.Adam, [*self.critic.parameters(), *self.encoder_params("critic")], lr=c["lr"]
            ),
            alpha=self.optimizer(torch.optim.Adam, self.temperature.parameters(), lr=a["lr"]),
        )
        self.cache = None
        self._capacities = {0: 0, 1: 0}  # buffer sizes, for the proposal cache's slots (set by update)
        if s.get("proposal_cache_age", 0) > 0:
            self.cache = ProposalCache(s["proposal_cache_age"], s["n_backup"], self.act_dim, self.device)
        self.proposer = None  # select.backup_sampler=distilled: the backup's one-step proposals
        if s.get("backup_sampler", "exact") == "distilled":
            if not isinstance(self.base, FlowBase):
                raise ValueError(
                    "select.backup_sampler=distilled needs base.kind=flow (it is distilled from a flow)"
                )
            self.proposer = OneStepProposer(self.base.net).to(self.device)
            self.modules["proposer"] = self.proposer
            self.optims["proposer"] = self.optimizer(
                torch.optim.Adam, self.proposer.parameters(), lr=cfg["base"]["lr"]
            )
        elif s.get("backup_sampler", "exact") != "exact":
            raise ValueError(f"select.backup_sampler must be exact or distilled, got '{s['backup_sampler']}'")
        self.fast_update = None  # agent.fast: the same update without its overhead (fast_update.py)
        if cfg.get("fast", False):
            reason = unsupported(self)
            if reason is None:
                self.fast_update = FastUpdate(
                    self,
                    bool(cfg.get("compile", False)),
                    cfg.get("compile_mode", "default"),
                    bool(cfg.get("backup_bf16", False)),
                )
            else:
                log.info("agent.fast: %s needs the eager update; running that one", reason)

    # ----- selection: the one place that proposes, edits, scores and picks -----
    def subset(self) -> torch.Tensor:
        c = self.cfg["critic"]
        return random_subset(c["members"], c["subset"], self.cpu_gen, self.device)

    def otf(
        self, obs: torch.Tensor, *, acting: bool, deterministic: bool = False, proposals=None
    ) -> Selection:
        """Acting: EMA base, N_act proposals, full sampling steps. Backup: live base, N_backup, proposal_steps."""
        s = self.cfg["select"]
        self.edit.eval()
        return select(
            self.view(obs, "critic"),
            self.critic_target,
            self.subset(),
            base=self.base_ema if acting else self.base,
            n=s["n_act"] if acting else s["n_backup"],
            steps=None if acting else s.get("proposal_steps"),
            proposals=proposals,
            edit=self.edit if self.use_edit else None,
            deterministic_edit=deterministic,
            generator=self.gen,
            base_obs=self.view(obs, "base"),
        )

    def _act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.otf(obs, acting=True, deterministic=deterministic).action

    # ----- TD backup -----
    def backup_proposals(self, t: dict, batch: dict | None) -> torch.Tensor:
        s = self.cfg["select"]

        def fresh(next_obs: torch.Tensor) -> torch.Tensor:
            if self.proposer is not None:
                return self.proposer.sample(self.view(next_obs, "base"), s["n_backup"], self.gen)
            return self.base.sample(
                self.view(next_obs, "base"), s["n_backup"], s.get("proposal_steps"), self.gen
            )

        if self.cache is None or batch is None or "index" not in batch:
            return fresh(t["next_obs"])
        return self.cache.get(
            t["next_obs"], batch["index"], batch["source"], self._capacities, self.counters["updates"], fresh
        )

    @torch.no_grad()
    def td_target(self, t: dict, batch: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """r + gamma^h * Q_target(s', a'), with a' the OTF choice (or, ablation, one edited base sample).

        Returns (target [B], next action [B, D]). No entropy term in the target (as in the paper).
        """
        if self.otf_backup:
            sel = self.otf(t["next_obs"], acting=False, proposals=self.backup_proposals(t, batch))
            next_action, next_q = sel.action, sel.q
        else:
            s, obs = self.cfg["select"], self.view(t["next_obs"], "critic")
            proposal = self.base.sample(
                self.view(t["next_obs"], "base"), 1, s.get("proposal_steps"), self.gen
            )[:, 0]
            next_action = proposal
            if self.use_edit:
                next_action, _ = self.edit(obs, proposal, generator=self.gen, log_prob=False)
            next_q = self.critic_target.min_over(obs, next_action, self.subset())
        return t["reward"] + t["discount"] * next_q, next_action

    def critic_step(self, t: dict, batch: dict | None = None) -> dict[str, float]:
        target, _ = self.td_target(t, batch)
        t = {**t, "obs": self.view(t["obs"], "critic")}
        return critic_regression_step(
            self.critic, self.critic_target, self.optims["critic"], t, target, self.cfg["critic"]["tau"]
        )

    # ----- edit policy and temperature -----
    def edit_step(self, t: dict) -> dict[str, float]:
        """alpha * log pi - mean over ALL members of Q(s, a + beta tanh u), on replay actions."""
        self.edit.train()
        alpha = self.temperature().detach()
        obs = self.view(t["obs"], "critic")
        edited, log_prob = self.edit(obs, t["action"], generator=self.gen)
        self.critic.requires_grad_(False)
        q = self.critic(obs, edited).mean(0)
        self.critic.requires_grad_(True)
        loss = (alpha * log_prob - q).mean()
        opt = self.optims["edit"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = grad_norm(self.edit.parameters())
        opt.step()
        self.edit.eval()
        alpha_loss = -(self.temperature.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.optims["alpha"].zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.optims["alpha"].step()
        return {
            "edit/loss": float(loss.detach()),
            "edit/grad_norm": gnorm,
            "edit/entropy": float(-log_prob.detach().mean()),
            "edit/q": float(q.detach().mean()),
            "edit/size": float((edited - t["action"]).detach().abs().mean()),
            "alpha": float(self.temperature().detach()),
            "alpha/loss": float(alpha_loss.detach()),
        }

    def distill_step(self, next_obs: torch.Tensor) -> torch.Tensor:
        """One regression step of the backup's one-step proposer onto the base's samples from the same noise, at
        the states whose proposals the backup needs (one sample per row: 1/(N * UTD) of an exact backup's base
        passes)."""
        obs = self.view(next_obs.detach(), "base")
        z = torch.randn(obs.shape[0], self.act_dim, device=obs.device, generator=self.gen)
        target = self.base.sample(obs, 1, None, self.gen, noise=z)[:, 0]
        loss = ((self.proposer.raw(obs, z) - target) ** 2).mean()
        opt = self.optims["proposer"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    # ----- one env step's worth of learning -----
    def update(self, offline_buffer, online_buffer) -> dict:
        """UTD critic steps on symmetric minibatches, then one base, one edit and one alpha step on the last.

        With `agent.fast`, the same update laid out for speed; its metrics are 0-d tensors (`float(v)` reads one),
        so that they cost a host sync only when a caller reads them."""
        if self.proposer is not None and self.counters["updates"] == 0:
            # the proposer starts from the (pretrained) base: one Euler step over the whole interval
            self.proposer.net.load_state_dict(self.base.net.state_dict())
        if self.fast_update is not None:
            return self.fast_update(offline_buffer, online_buffer)
        self._capacities = {
            0: offline_buffer.capacity if offline_buffer is not None else 0,
            1: online_buffer.capacity if online_buffer is not None else 0,
        }
        n = self.cfg["batch_size"]
        metrics: dict[str, float] = {}
        batches = [self._symmetric(offline_buffer, online_buffer, n) for _ in range(self.cfg["utd"])]
        trained = (self.cfg.get("encoder") or {}).get(
            "trained_steps"
        )  # the TD loss trains the critic's encoder
        for batch, t in zip(batches, self.critic_minibatches(batches, trained)):
            metrics = self.critic_step(t, batch)
        t["obs"] = t["obs"].detach()  # the base and edit steps see the camera features, never train them
        metrics |= self.imitation_step(t, self.cfg["base"]["ema_rate"])
        if self.use_edit:
            metrics |= self.edit_step(t)
        if self.proposer is not None:
            metrics["backup/distill_loss"] = float(self.distill_step(t["next_obs"]))
        if self.cache is not None:
            metrics["backup/cache_hit_rate"] = self.cache.hit_rate()
        self.counters["updates"] += 1
        metrics["updates"] = self.counters["updates"]
        return metrics
