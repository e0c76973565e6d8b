"""Replay buffer of chunk transitions (numpy ring buffer) and RLPD's symmetric half-offline/half-online sampling."""

from __future__ import annotations

import numpy as np


class ReplayError(ValueError):
    """A batch or state dict that does not fit this buffer; the message names the field."""


class ReplayBuffer:
    """Chunk transitions: obs f32[S], actions f32[H, A] (env units), reward f32 (discounted sum over the executed
    steps), next_obs f32[S], discount f32 (gamma^h, 0 if terminal), steps int (h), intervention bool.

    With cameras (`images`: name -> (H, W, C)), also obs_image.<name> and next_obs_image.<name>, uint8 [H, W, C].
    When full, the oldest transitions are overwritten. `sample` also returns `index` (slot of each row).
    """

    def __init__(
        self, capacity: int, state_dim: int, chunk: int, action_dim: int, images: dict | None = None
    ):
        self.capacity = int(capacity)
        self.shapes = {
            "obs": ((state_dim,), np.float32),
            "actions": ((chunk, action_dim), np.float32),
            "reward": ((), np.float32),
            "next_obs": ((state_dim,), np.float32),
            "discount": ((), np.float32),
            "steps": ((), np.int64),
            "intervention": ((), np.bool_),
        }
        for name, shape in (images or {}).items():  # (zeros are allocated lazily: unfilled rows cost no memory)
            for key in ("obs", "next_obs"):
                self.shapes[f"{key}_image.{name}"] = (tuple(int(d) for d in shape), np.uint8)
        self.data = {k: np.zeros((self.capacity, *s), dt) for k, (s, dt) in self.shapes.items()}
        self.ptr = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, reward, next_obs, discount, steps, intervention=False) -> None:
        self.add_batch(
            {
                "obs": np.asarray(obs)[None],
                "actions": np.asarray(actions)[None],
                "reward": np.asarray([reward]),
                "next_obs": np.asarray(next_obs)[None],
                "discount": np.asarray([discount]),
                "steps": np.asarray([steps]),
                "intervention": np.asarray([intervention]),
            }
        )

    def add_batch(self, batch: dict[str, np.ndarray]) -> None:
        """Add N transitions given as arrays with a leading N axis (e.g. the output of chunk_transitions)."""
        missing = [k for k in self.shapes if k not in batch and k != "intervention"]
        if missing:
            raise ReplayError(f"batch lacks fields {missing}; expected {list(self.shapes)}")
        n = len(batch["obs"])
        for k, (shape, _) in self.shapes.items():
            v = np.asarray(batch[k]) if k in batch else np.zeros(n, bool)
            if v.shape != (n, *shape):
                raise ReplayError(f"field '{k}' has shape {v.shape}, expected {(n, *shape)}")
        if n > self.capacity:  # only the newest `capacity` rows can survive
            batch = {k: np.asarray(v)[-self.capacity :] for k, v in batch.items()}
            n = self.capacity
        idx = (self.ptr + np.arange(n)) % self.capacity
        for k in self.shapes:
            self.data[k][idx] = batch.get(k, False)
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ReplayError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=n)
        out = {k: v[idx] for k, v in self.data.items()}
        out["index"] = idx
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Only the filled rows, plus the write pointer: numpy arrays, no pickle needed."""
        d = {k: v[: self.size].copy() for k, v in self.data.items()}
        d["ptr"] = np.asarray(self.ptr, np.int64)
        d["capacity"] = np.asarray(self.capacity, np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        if int(d["capacity"]) != self.capacity:
            raise ReplayError(
                f"checkpoint buffer capacity {int(d['capacity'])} != this buffer's {self.capacity}"
            )
        size = len(d["obs"])
        for k, (shape, _) in self.shapes.items():
            if d[k].shape != (size, *shape):
                raise ReplayError(f"checkpoint field '{k}' has shape {d[k].shape}, expected {(size, *shape)}")
            self.data[k][:size] = d[k]
        self.size, self.ptr = size, int(d["ptr"])


def sample_symmetric(
    offline: ReplayBuffer | None, online: ReplayBuffer | None, n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """RLPD symmetric sampling: exactly n/2 rows from each buffer, offline first. If one buffer is empty (before the
    first online episode, or with no offline data) all n rows come from the other. `source` marks 0 offline, 1 online.
    """
    if n % 2:
        raise ReplayError(f"symmetric sampling needs an even batch size, got {n}")
    parts = [(b, s) for b, s in ((offline, 0), (online, 1)) if b is not None and len(b) > 0]
    if not parts:
        raise ReplayError(
            "both offline and online buffers are empty; add seed data or online transitions first"
        )
    per = n // len(parts)
    batches = []
    for buf, source in parts:
        b = buf.sample(per, rng)
        b["source"] = np.full(per, source, np.int8)
        batches.append(b)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
