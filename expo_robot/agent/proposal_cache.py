"""Amortised TD backup: base proposals for each stored next_obs are cached and reused for up to `max_age` updates.

The edit policy and the critic are still applied fresh to the cached proposals every critic step; only the (slowly
changing, imitation-trained) base samples are stale. An entry is recomputed when it is older than `max_age` updates
or when its buffer slot now holds a different next_obs (the online ring buffer overwrote it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class ProposalCache:
    def __init__(self, max_age: int, n: int, act_dim: int, device: torch.device):
        self.max_age, self.n, self.act_dim, self.device = max_age, n, act_dim, device
        self.slots: dict[int, dict[str, torch.Tensor]] = {}  # source -> {proposals, next_obs, stamp}
        self.hits = 0
        self.misses = 0

    def _slots(self, source: int, capacity: int, obs_dim: int) -> dict[str, torch.Tensor]:
        if source not in self.slots or self.slots[source]["stamp"].shape[0] < capacity:
            self.slots[source] = {
                "proposals": torch.zeros(capacity, self.n, self.act_dim, device=self.device),
                "next_obs": torch.full((capacity, obs_dim), float("nan"), device=self.device),
                "stamp": torch.full((capacity,), -(10**9), dtype=torch.long, device=self.device),
            }
        return self.slots[source]

    def get(
        self,
        next_obs: torch.Tensor,
        index: np.ndarray,
        source: np.ndarray,
        capacities: dict[int, int],
        now: int,
        fresh: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Proposals [B, N, D] for the rows of a batch identified by (source buffer, slot index)."""
        out = torch.empty(next_obs.shape[0], self.n, self.act_dim, device=self.device)
        stale_rows = []
        for src in np.unique(source):
            rows = torch.as_tensor(np.nonzero(source == src)[0], device=self.device)
            slots = self._slots(int(src), capacities[int(src)], next_obs.shape[1])
            idx = torch.as_tensor(index[source == src], device=self.device)
            valid = (now - slots["stamp"][idx] <= self.max_age) & (
                slots["next_obs"][idx] == next_obs[rows]
            ).all(1)
            out[rows[valid]] = slots["proposals"][idx[valid]]
            stale_rows.append((rows[~valid], idx[~valid], slots))
        for rows, idx, slots in stale_rows:
            if rows.numel():
                p = fresh(next_obs[rows])
                out[rows] = p
                slots["proposals"][idx] = p
                slots["next_obs"][idx] = next_obs[rows]
                slots["stamp"][idx] = now
            self.misses += int(rows.numel())
        self.hits += next_obs.shape[0] - sum(int(r.numel()) for r, _, _ in stale_rows)
        return out

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
