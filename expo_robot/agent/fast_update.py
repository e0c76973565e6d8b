"""The fast path of `ExpoAgent.update` (`agent.fast: true`): the same update as the eager one, without its overhead.

Same random draws in the same order, same arithmetic; what changes is how it is laid out:
- the UTD minibatches' rows are drawn as the eager path draws them, then gathered at once into tensors allocated once
  (pinned on CUDA, copied without blocking);
- the backup's proposals and their edits for ALL the minibatches are made before the first critic step, on CUDA
  in one batched sampler call (on a CPU one call per minibatch: larger calls outgrow its caches): the base and the
  edit policy do not change during the critic steps of one update (they learn after them), so this is exact; only
  the scoring, with the target critic that moves after every critic step, stays per step;
- metrics stay tensors (read when a caller logs them: `float(v)`, every k updates), gradient norms and target/EMA
  updates are foreach operations, the optimisers fused (`AgentCore.optimizer`); no host sync inside the update;
- optionally (`agent.backup_bf16: true`) the backup's sampler, edits and scores under bf16 autocast (TD targets,
  losses and every gradient step in fp32): faster where the device has bf16 units, learning not yet compared;
- optionally (`agent.compile: true`) the pure tensor functions (proposals + edits, TD target, critic, base and edit
  losses) run through torch.compile with static shapes; compile time is reported, and any failure falls back to
  eager with one log line.
Not covered (the eager path runs, said once in the log): camera observations (their features must be recomputed per
critic step, as the encoder learns), a DDPM base (its sampler draws noise at every step), the proposal cache, and
the no-OTF-backup ablation.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from expo_robot.agent.base_policy import FlowBase, _Euler
from expo_robot.data.replay import ReplayError

log = logging.getLogger(__name__)

FIELDS = ("obs", "actions", "reward", "next_obs", "discount")


def unsupported(agent) -> str | None:
    """Why the fast path cannot run this agent's update (None: it can)."""
    if agent.encoders:
        return "camera observations"
    if not isinstance(agent.base, FlowBase):
        return "a DDPM base"
    if agent.cache is not None:
        return "the proposal cache (select.proposal_cache_age > 0)"
    if not agent.otf_backup:
        return "otf_backup=false"
    return None


def symmetric_indices(offline, online, n: int, utd: int, rng: np.random.Generator) -> list:
    """[(buffer, rows)] of `utd` RLPD minibatches (half offline, half online), drawn in the order `sample_symmetric`
    draws them one minibatch at a time, so that both paths see the same rows for the same generator state."""
    if n % 2:
        raise ReplayError(f"symmetric sampling needs an even batch size, got {n}")
    parts = [b for b in (offline, online) if b is not None and len(b) > 0]
    if not parts:
        raise ReplayError(
            "both offline and online buffers are empty; add seed data or online transitions first"
        )
    per = n // len(parts)
    return [(buf, rng.integers(0, len(buf), size=per)) for _ in range(utd) for buf in parts]


class BatchStager:
    """The UTD minibatches' fields, gathered from the replay arrays into tensors allocated once. On CUDA the host
    side is pinned and copied without blocking; the next gather waits only for that copy."""

    def __init__(self, rows: int, spec, device: torch.device):
        shapes = {
            "obs": (spec.state_dim,),
            "actions": (spec.chunk, spec.action_dim),
            "reward": (),
            "next_obs": (spec.state_dim,),
            "discount": (),
        }
        self.cuda = device.type == "cuda"
        self.host = {k: torch.empty((rows, *s), pin_memory=self.cuda) for k, s in shapes.items()}
        self.device = {k: v.to(device) for k, v in self.host.items()} if self.cuda else self.host
        self.copied = None  # CUDA event: the last host -> device copy

    def gather(self, parts: list) -> dict[str, torch.Tensor]:
        if self.copied is not None:
            self.copied.synchronize()
        for k in FIELDS:
            out, start = self.host[k].numpy(), 0
            for buf, rows in parts:
                np.take(buf.data[k], rows, axis=0, out=out[start : start + len(rows)])
                start += len(rows)
        if self.cuda:
            for k in FIELDS:
                self.device[k].copy_(self.host[k], non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
        return self.device


def grad_norm(params) -> torch.Tensor:
    """Global L2 norm of the gradients, as a tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class FastUpdate:
    """`update(offline, online) -> metrics` (0-d tensors) for an ExpoAgent; see the module's docstring."""

    def __init__(
        self, agent, compile: bool = False, compile_mode: str = "default", backup_bf16: bool = False
    ):
        self.agent = agent
        self.backup_bf16 = (
            backup_bf16  # the backup's networks under bf16 autocast; targets and losses stay fp32
        )
        self.stagers: dict[int, BatchStager] = {}  # row count -> its buffers
        self.fns = {
            "candidates": self._candidates,
            "td_target": self._td_target,
            "critic_loss": self._critic_loss,
            "base_loss": self._base_loss,
            "edit_loss": self._edit_loss,
        }
        self.compile_mode = compile_mode if compile else None
        self.compile_s: float | None = None  # set by the first update when compiling

    # ----- the pure tensor functions (what torch.compile sees) -----
    def _candidates(self, next_obs, base_noise, edit_noise):
        """Proposals [R, N, D] for every next state, and their edits: [R, 2N, D] (or [R, N, D] without edits)."""
        a, s = self.agent, self.agent.cfg["select"]
        n, d, r = s["n_backup"], a.act_dim, next_obs.shape[0]
        steps = s.get("proposal_steps") or a.base.steps
        obs_rep = next_obs.repeat_interleave(n, 0)
        if a.proposer is not None:  # select.backup_sampler=distilled
            proposals = a.proposer.raw(obs_rep, base_noise).clamp(-1, 1).reshape(r, n, d)
        elif self.compile_mode is None:  # the traced Euler graph
            proposals = a.base.sample(next_obs, n, steps, noise=base_noise)
        else:  # the same loop, for torch.compile to trace
            proposals = _Euler(a.base.net, steps)(obs_rep, base_noise).clamp(-1, 1).reshape(r, n, d)
        if edit_noise is None:
            return proposals
        edited, _ = a.edit(obs_rep, proposals.reshape(r * n, d), False, edit_noise, log_prob=False)
        return torch.cat([proposals, edited.reshape(r, n, d)], dim=1)

    def _td_target(self, next_obs, candidates, subset, reward, discount):
        """r + discount * max over the candidates of the min over the subset of target members (the OTF choice)."""
        b, c, d = candidates.shape
        q = self.agent.critic_target.min_over(
            next_obs.repeat_interleave(c, 0), candidates.reshape(b * c, d), subset
        )
        return reward + discount * q.reshape(b, c).max(1).values

    def _critic_loss(self, obs, action, target):
        q = self.agent.critic(obs, action)
        return ((q - target) ** 2).mean(), q.detach().mean()

    def _base_loss(self, obs, action, x0, t):
        return self.agent.base.loss_at(obs, action, x0, t)

    def _edit_loss(self, obs, action, noise, alpha):
        a = self.agent
        edited, log_prob = a.edit(obs, action, False, noise)
        q = a.critic(obs, edited).mean(0)
        loss = (alpha * log_prob - q).mean()
        return loss, log_prob.detach(), q.detach().mean(), (edited - action).detach().abs().mean()

    # ----- one update -----
    def __call__(self, offline, online) -> dict[str, torch.Tensor]:
        a, cfg = self.agent, self.agent.cfg
        n, utd = cfg["batch_size"], cfg["utd"]
        a.ensure_normalizer(offline if offline is not None and len(offline) else online)
        t = self._batch(symmetric_indices(offline, online, n, utd, a.rng), n * utd)
        base_noise, edit_noise, subsets = self._draws(n, utd)
        if self.compile_s is None and self.compile_mode is not None:
            self._compile(t, base_noise, edit_noise, subsets, n)
        a.edit.eval()  # as the eager selection does: no dropout in the backup's edits
        with torch.no_grad(), self._backup_precision():
            candidates = self._all_candidates(t["next_obs"], base_noise, edit_noise, n)
        for k in range(utd):
            rows = slice(k * n, (k + 1) * n)
            metrics = self._critic_step({key: v[rows] for key, v in t.items()}, candidates[rows], subsets[k])
        last = {key: v[rows] for key, v in t.items()}
        metrics |= self._imitation_step(last)
        if a.use_edit:
            metrics |= self._edit_step(last)
        if a.proposer is not None:
            metrics["backup/distill_loss"] = a.distill_step(last["next_obs"])
        a.counters["updates"] += 1
        metrics["updates"] = a.counters["updates"]
        return metrics

    def _all_candidates(self, next_obs, base_noise, edit_noise, n: int) -> torch.Tensor:
        """Every minibatch's candidates. On CUDA in one call; on a CPU one minibatch at a time (the same numbers):
        one call over all UTD minibatches makes activations larger than the CPU's caches (168 MB at the reference
        sizes), measured slower there."""
        step = next_obs.shape[0] if self.agent.device.type == "cuda" else n
        per = base_noise.shape[0] // next_obs.shape[0]  # noise rows per next state
        parts = [
            self.fns["candidates"](
                next_obs[i : i + step],
                base_noise[i * per : (i + step) * per],
                None if edit_noise is None else edit_noise[i * per : (i + step) * per],
            )
            for i in range(0, next_obs.shape[0], step)
        ]
        return torch.cat(parts).float()

    def _backup_precision(self):
        return torch.autocast(self.agent.device.type, dtype=torch.bfloat16, enabled=self.backup_bf16)

    def _batch(self, parts: list, rows: int) -> dict[str, torch.Tensor]:
        a = self.agent
        if rows not in self.stagers:
            self.stagers[rows] = BatchStager(rows, a.spec, a.device)
        raw = self.stagers[rows].gather(parts)
        return {
            "obs": a.norm.obs(raw["obs"]),
            "action": a.norm.action(raw["actions"].reshape(rows, -1)),
            "reward": raw["reward"],
            "next_obs": a.norm.obs(raw["next_obs"]),
            "discount": raw["discount"],
        }

    def _draws(self, n: int, utd: int):
        """The backup's random numbers for all minibatches, drawn in the eager path's order (per minibatch: base
        noise, then edit noise; the critic subsets from their own generator)."""
        a = self.agent
        rows, d = n * a.cfg["select"]["n_backup"], a.act_dim
        base, edit = [], []
        for _ in range(utd):
            base.append(torch.randn(rows, d, device=a.device, generator=a.gen))
            if a.use_edit:
                edit.append(torch.randn(rows, d, device=a.device, generator=a.gen))
        subsets = torch.stack(
            [torch.randperm(a.cfg["critic"]["members"], generator=a.cpu_gen) for _ in range(utd)]
        )
        subsets = subsets[:, : a.cfg["critic"]["subset"]].to(a.device)
        return torch.cat(base), torch.cat(edit) if edit else None, subsets

    def _critic_step(
        self, t: dict, candidates: torch.Tensor, subset: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        a = self.agent
        with torch.no_grad(), self._backup_precision():
            target = self.fns["td_target"](
                t["next_obs"], candidates, subset, t["reward"], t["discount"]
            ).float()
        loss, q_mean = self.fns["critic_loss"](t["obs"], t["action"], target)
        opt = a.optims["critic"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = grad_norm(a.critic.parameters())
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(a.critic_target.parameters()), list(a.critic.parameters()), a.cfg["critic"]["tau"]
            )
        return {
            "critic/loss": loss.detach(),
            "critic/grad_norm": gnorm,
            "q/mean": q_mean,
            "q/target_mean": target.mean(),
        }

    def _imitation_step(self, t: dict) -> dict[str, torch.Tensor]:
        a = self.agent
        a.base.train()
        x0 = torch.randn(t["action"].shape, device=a.device, generator=a.gen)
        times = torch.rand(t["action"].shape[0], 1, device=a.device, generator=a.gen)
        loss = self.fns["base_loss"](t["obs"], t["action"], x0, times)
        a.base_opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = grad_norm(a.base.parameters())
        a.base_opt.step()
        a.base.eval()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(a.base_ema.parameters()), list(a.base.parameters()), a.cfg["base"]["ema_rate"]
            )
        return {"base/loss": loss.detach(), "base/grad_norm": gnorm}

    def _edit_step(self, t: dict) -> dict[str, torch.Tensor]:
        a = self.agent
        a.edit.train()
        alpha = a.temperature().detach()
        noise = torch.randn(t["action"].shape, device=a.device, generator=a.gen)
        a.critic.requires_grad_(False)
        loss, log_prob, q_mean, size = self.fns["edit_loss"](t["obs"], t["action"], noise, alpha)
        a.critic.requires_grad_(True)
        opt = a.optims["edit"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = grad_norm(a.edit.parameters())
        opt.step()
        a.edit.eval()
        alpha_loss = -(a.temperature.log_alpha * (log_prob + a.target_entropy)).mean()
        a.optims["alpha"].zero_grad(set_to_none=True)
        alpha_loss.backward()
        a.optims["alpha"].step()
        return {
            "edit/loss": loss.detach(),
            "edit/grad_norm": gnorm,
            "edit/entropy": -log_prob.mean(),
            "edit/q": q_mean,
            "edit/size": size,
            "alpha": a.temperature().detach(),
            "alpha/loss": alpha_loss.detach(),
        }

    # ----- torch.compile -----
    def _compile(self, t, base_noise, edit_noise, subsets, n: int) -> None:
        """Compile every pure function by running it once on this update's shapes (forward and backward, no
        optimiser step, gradients cleared after); on any failure, all run eagerly."""
        a, eager = self.agent, dict(self.fns)
        t0 = time.perf_counter()
        try:
            self.fns = {k: torch.compile(f, dynamic=False, mode=self.compile_mode) for k, f in eager.items()}
            b = {key: v[:n] for key, v in t.items()}
            a.edit.eval()  # the modes and devices of the real calls: no recompiling at the first update
            with torch.no_grad(), self._backup_precision():
                candidates = self._all_candidates(t["next_obs"], base_noise, edit_noise, n)
                target = self.fns["td_target"](
                    b["next_obs"], candidates[:n], subsets[0], b["reward"], b["discount"]
                )
            self.fns["critic_loss"](b["obs"], b["action"], target)[0].backward()
            a.base.train()
            self.fns["base_loss"](
                b["obs"], b["action"], torch.zeros_like(b["action"]), b["reward"][:, None]
            ).backward()
            a.base.eval()
            if a.use_edit:
                a.edit.train()
                a.critic.requires_grad_(False)
                self.fns["edit_loss"](
                    b["obs"], b["action"], torch.zeros_like(b["action"]), torch.ones((), device=a.device)
                )[0].backward()
        except Exception as e:  # any compiler failure: the eager functions compute the same update
            log.warning("torch.compile failed (%s: %s); the fast update runs eagerly", type(e).__name__,
                        str(e).strip().splitlines()[0][:200] if str(e).strip() else "")  # fmt: skip
            self.fns = eager
        finally:
            a.critic.requires_grad_(True)
            a.base.eval()
            a.edit.eval()
            for m in (a.critic, a.base, a.edit):
                for p in m.parameters():
                    p.grad = None
        self.compile_s = time.perf_counter() - t0
        if self.fns is not eager:
            log.info("torch.compile of the fast update: %.1f s", self.compile_s)
