"""On-the-fly (OTF) selection, written once: propose N base chunks, edit each, score all 2N with Q, take the argmax.

The same function acts in the environment, evaluates, and picks the next action in the TD backup; the callers differ
only in flags (which base copy, stochastic or mean edits, whether edits are used at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    action: (
        torch.Tensor
    )  # [B, D] the chosen chunk (normalised units; edited chunks may leave [-1, 1] by <= beta)
    q: torch.Tensor  # [B] its score (min over the critic subset)
    index: torch.Tensor  # [B] chosen candidate: 0..N-1 base proposals, N..2N-1 their edits
    candidates: torch.Tensor  # [B, C, D]
    scores: torch.Tensor  # [B, C]


@torch.no_grad()
def select(
    obs: torch.Tensor,
    critic,
    subset: torch.Tensor,
    *,
    base=None,
    n: int = 8,
    steps: int | None = None,
    proposals: torch.Tensor | None = None,
    edit=None,
    deterministic_edit: bool = False,
    edit_noise: torch.Tensor | None = None,
    generator=None,
    base_obs: torch.Tensor | None = None,
) -> Selection:
    """obs [B, S] (normalised). Proposals come from `base.sample(obs, n, steps)` unless given ([B, N, D]).

    edit=None gives best-of-N without edits. `edit_noise` [B, N, D] fixes the edit noise (tests, reproducibility).
    `base_obs`: what the base sees, when it has features of its own (a separate image encoder); default obs.
    """
    if proposals is None:
        proposals = base.sample(obs if base_obs is None else base_obs, n, steps, generator)
    b, n, d = proposals.shape
    candidates = proposals
    if edit is not None:
        obs_rep = obs.repeat_interleave(n, 0)
        noise = None if edit_noise is None else edit_noise.reshape(b * n, d)
        edited, _ = edit(
            obs_rep, proposals.reshape(b * n, d), deterministic_edit, noise, generator, log_prob=False
        )
        candidates = torch.cat([proposals, edited.reshape(b, n, d)], dim=1)
    c = candidates.shape[1]
    q = critic.min_over(obs.repeat_interleave(c, 0), candidates.reshape(b * c, d), subset).reshape(b, c)
    index = q.argmax(dim=1)
    rows = torch.arange(b, device=obs.device)
    return Selection(candidates[rows, index], q[rows, index], index, candidates, q)
