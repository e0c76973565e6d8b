"""The actor <-> learner protocol (the driver <-> actor protocol is expo_robot/transport/protocol.py).

Actor -> learner (learner's PULL, runtime.transitions_port):
  transitions  arrays: the ReplayBuffer fields of one episode (obs, actions, reward, next_obs, discount, steps,
               intervention, and per camera obs_image.<name> / next_obs_image.<name>); meta: actor, seq (per actor, 1, 2, 3, ...), env_steps (steps in the episode),
               episode stats. The learner accepts seq == last + 1 only; the actor resends what was not acked.
Learner -> actors (learner's PUB, runtime.weights_port):
  weights      arrays: Agent.acting_state() packed into one flat array per dtype (pack_state); meta: layout,
               version (updates), learner
  status       meta: learner (id of this incarnation), updates, env_steps (received), trained_steps
               (env steps whose updates are done), buffer sizes, received / acked seq per actor
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from expo_robot.transport.wire import FieldSpec, Schema

TRANSITION_FIELDS = {
    "obs": FieldSpec("float32", (None, None)),
    "actions": FieldSpec("float32", (None, None, None)),
    "reward": FieldSpec("float32", (None,)),
    "next_obs": FieldSpec("float32", (None, None)),
    "discount": FieldSpec("float32", (None,)),
    "steps": FieldSpec("int64", (None,)),
    "intervention": FieldSpec("bool", (None,), finite=False),
}


def transitions_schema(cameras: Mapping[str, tuple[int, int, int]]) -> Schema:
    """Transitions with exactly these cameras' frames (name -> (H, W, C) uint8) next to the state fields."""
    fields = dict(TRANSITION_FIELDS)
    for name, shape in cameras.items():
        for key in ("obs", "next_obs"):
            fields[f"{key}_image.{name}"] = FieldSpec("uint8", (None, *shape), finite=False)
    meta = {"actor": str, "seq": int, "env_steps": int}
    return Schema("transitions", fields, meta, max_bytes=(64 + 32 * len(cameras)) * 1024 * 1024)


TRANSITIONS = transitions_schema({})
_PACKED = {
    d: FieldSpec(d, (None,), finite=d.startswith("float"), required=False)
    for d in ("float32", "float64", "int64", "int32", "bool", "uint8")
}
WEIGHTS = Schema(
    "weights", _PACKED, {"version": int, "learner": str, "layout": list}, max_bytes=256 * 1024 * 1024
)
STATUS = Schema("status", {}, {"learner": str, "updates": int, "env_steps": int, "trained_steps": int})

LEARNER_OUTBOX = {"weights": WEIGHTS, "status": STATUS}


def pack_state(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """Many named tensors -> one flat array per dtype plus a layout (the wire carries a bounded number of arrays)."""
    flats: dict[str, list[np.ndarray]] = {}
    layout = []
    for name, value in state.items():
        arr = np.asarray(value)  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
        parts = flats.setdefault(arr.dtype.name, [])
        offset = sum(p.size for p in parts)
        layout.append([name, arr.dtype.name, list(arr.shape), offset])
        parts.append(arr.ravel())
    arrays = {dtype: np.concatenate(parts) if parts else np.zeros(0, dtype) for dtype, parts in flats.items()}
    return arrays, {"layout": layout}


def unpack_state(arrays: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    """Inverse of pack_state; raises ValueError when the layout does not fit the arrays."""
    out = {}
    for name, dtype, shape, offset in meta["layout"]:
        flat = arrays.get(dtype)
        size = int(np.prod(shape))
        if flat is None or offset < 0 or offset + size > flat.size:
            raise ValueError(
                f"weights message: tensor '{name}' ({dtype}{shape}) does not fit the arrays sent"
            )
        out[name] = flat[offset : offset + size].reshape(shape)
    return out
