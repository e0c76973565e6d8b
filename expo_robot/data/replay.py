"""Replay buffer of chunk transitions (numpy ring buffer) and RLPD's symmetric half-offline/half-online sampling."""

from __future__ import annotations

import hashlib

import numpy as np


class ReplayError(ValueError):
    """A batch or state dict that does not fit this buffer; the message names the field."""


class ReplayBuffer:
    """Chunk transitions: obs f32[S], actions f32[H, A] (env units), reward f32 (discounted sum over the executed
    steps), next_obs f32[S], discount f32 (gamma^h, 0 if terminal), steps int (h), intervention bool.

    With cameras (`images`: name -> (H, W, C)), also obs_image.<name> and next_obs_image.<name>, uint8 [H, W, C],
    kept in one `FrameStore` per camera: a chunk's next observation is a later chunk's observation, so each frame is
    stored once however many rows show it. `data` holds the other fields; `sample` and `state_dict` give the images.
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
        self.data = {k: np.zeros((self.capacity, *s), dt) for k, (s, dt) in self.shapes.items()}
        # (zeros are allocated lazily: unfilled rows and frame slots cost no memory)
        self.frames = {name: FrameStore(2 * self.capacity, shape) for name, shape in (images or {}).items()}
        self.frame_slots = {}  # obs_image.<name> / next_obs_image.<name> -> each row's slot in its camera's store
        for name, shape in (images or {}).items():
            for key in (f"obs_image.{name}", f"next_obs_image.{name}"):
                self.shapes[key] = (tuple(int(d) for d in shape), np.uint8)
                self.frame_slots[key] = (name, np.full(self.capacity, -1, np.int64))
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
        for k in self.data:
            self.data[k][idx] = batch.get(k, False)
        for k, (name, slots) in self.frame_slots.items():
            store, old = self.frames[name], slots[idx]
            store.release(old[old >= 0])  # the overwritten rows' frames
            slots[idx] = store.put(np.asarray(batch[k]))
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ReplayError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=n)
        out = {k: v[idx] for k, v in self.data.items()}
        out |= self._images(idx)
        out["index"] = idx
        return out

    def _images(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: self.frames[name].frames[slots[rows]] for k, (name, slots) in self.frame_slots.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Only the filled rows, plus the write pointer: numpy arrays, no pickle needed. Per camera, each frame once
        (`frames.<name>`) and each row's frame in it (`obs_image.<name>.frame`, `next_obs_image.<name>.frame`)."""
        d = {k: v[: self.size].copy() for k, v in self.data.items()}
        for name, store in self.frames.items():
            live = np.flatnonzero(store.refs)
            position = np.full(len(store.refs), -1, np.int64)
            position[live] = np.arange(len(live))
            d[f"frames.{name}"] = store.frames[live]
            for key in self._frame_keys(name):
                d[f"{key}.frame"] = position[self.frame_slots[key][1][: self.size]]
        d["ptr"] = np.asarray(self.ptr, np.int64)
        d["capacity"] = np.asarray(self.capacity, np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """What state_dict wrote; also a checkpoint written before frames were stored once (every row's frames).
        Everything is checked before anything changes: a bad checkpoint leaves this buffer as it was."""
        if int(d["capacity"]) != self.capacity:
            raise ReplayError(
                f"checkpoint buffer capacity {int(d['capacity'])} != this buffer's {self.capacity}"
            )
        size = len(d["obs"])
        if size > self.capacity or not 0 <= int(d["ptr"]) < self.capacity:
            raise ReplayError(f"checkpoint buffer holds {size} rows, write pointer {int(d['ptr'])}: not a ring of "
                              f"{self.capacity}")  # fmt: skip
        for k in self.data:
            _check_shape(d, k, (size, *self.shapes[k][0]))
        frames = {name: self._loaded_frames(d, name, size) for name in self.frames}
        for k in self.data:
            self.data[k][:size] = d[k]
        for name, (store, rows) in frames.items():
            self.frames[name] = store
            for key, slots in rows.items():
                self.frame_slots[key][1][:] = -1
                self.frame_slots[key][1][:size] = slots
        self.size, self.ptr = size, int(d["ptr"])

    def _frame_keys(self, name: str) -> list[str]:
        return [k for k, (camera, _) in self.frame_slots.items() if camera == name]

    def _loaded_frames(self, d: dict, name: str, size: int) -> tuple[FrameStore, dict[str, np.ndarray]]:
        """A camera's frames from a checkpoint: a new store and each row's slot in it, per field."""
        keys, shape = self._frame_keys(name), self.frames[name].frames.shape[1:]
        store = FrameStore(2 * self.capacity, shape)
        if f"frames.{name}" not in d:  # the older format
            for key in keys:
                _check_shape(d, key, (size, *shape))
            return store, {key: store.put(d[key]) for key in keys}
        frames = d[f"frames.{name}"]
        _check_shape(d, f"frames.{name}", (len(frames), *shape))
        if len(frames) > len(store.refs):
            raise ReplayError(f"checkpoint field 'frames.{name}' holds {len(frames)} frames, more than "
                              f"{len(store.refs)} rows can show")  # fmt: skip
        for key in keys:
            _check_shape(d, f"{key}.frame", (size,))
            index = d[f"{key}.frame"]
            if index.dtype.kind not in "iu" or (size and not 0 <= index.min() <= index.max() < len(frames)):
                raise ReplayError(
                    f"checkpoint field '{key}.frame' must index frames.{name} (0..{len(frames) - 1})"
                )
        shown = np.zeros(len(frames), bool)
        for key in keys:
            shown[d[f"{key}.frame"]] = True
        if not shown.all():
            raise ReplayError(
                f"checkpoint field 'frames.{name}' holds {int((~shown).sum())} frames no row shows"
            )
        at = store.put(frames)
        store.refs[at] = 0  # counted below, one per row that shows the frame
        rows = {key: at[d[f"{key}.frame"]] for key in keys}
        for slots in rows.values():
            np.add.at(store.refs, slots, 1)
        return store, rows


def _check_shape(d: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> None:
    if key not in d:
        raise ReplayError(f"checkpoint lacks field '{key}'")
    if d[key].shape != shape:
        raise ReplayError(f"checkpoint field '{key}' has shape {d[key].shape}, expected {shape}")


class FrameStore:
    """Camera frames stored once each, shared by every row that shows them: slots are found again by the frame's
    content (a BLAKE2 digest), counted by reference and reused when no row holds them any more. A released slot is
    taken before a never-used one, so the memory touched is that of the most frames alive at one time."""

    def __init__(self, slots: int, shape: tuple[int, ...]):
        self.frames = np.zeros((slots, *shape), np.uint8)
        self.refs = np.zeros(slots, np.int64)
        self._slot_of: dict[bytes, int] = {}
        self._digest = [b""] * slots
        self._free: list[int] = []  # released slots, reused before new ones
        self._next = 0  # slots from here on have never been used

    def __len__(self) -> int:
        """Frames held."""
        return len(self._slot_of)

    def put(self, frames: np.ndarray) -> np.ndarray:
        """Slots of `frames` [N, H, W, C], each frame stored unless an identical one is; one reference each."""
        frames = np.ascontiguousarray(frames, np.uint8)  # (then every frame is one contiguous buffer to digest)
        slots = np.empty(len(frames), np.int64)
        for i, frame in enumerate(frames):
            key = hashlib.blake2b(frame, digest_size=16).digest()
            slot = self._slot_of.get(key)
            if slot is None:
                slot = self._free.pop() if self._free else self._take_new()
                self.frames[slot] = frame
                self._slot_of[key], self._digest[slot] = slot, key
            self.refs[slot] += 1
            slots[i] = slot
        return slots

    def release(self, slots: np.ndarray) -> None:
        """Drop one reference per slot; a slot no row holds is free again."""
        for slot in slots.tolist():
            self.refs[slot] -= 1
            if self.refs[slot] == 0:
                del self._slot_of[self._digest[slot]]
                self._free.append(slot)

    def _take_new(self) -> int:
        if self._next == len(self.refs):  # cannot happen: each row holds two frames at most
            raise ReplayError(f"frame store full ({len(self.refs)} frames)")
        self._next += 1
        return self._next - 1


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
