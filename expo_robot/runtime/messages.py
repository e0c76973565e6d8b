"""The actor <-> learner protocol (the driver <-> actor protocol is expo_robot/transport/protocol.py).

Actor -> learner (learner's PULL, runtime.transitions_port):
  transitions  arrays: the ReplayBuffer fields of one episode (obs, actions, reward, next_obs, discount, steps,
               intervention, and per camera obs_image.<name> / next_obs_image.<name>); meta: actor, seq (per actor,
               1, 2, 3, ...), env_steps (steps in the episode). The learner takes seq == last + 1 only; the actor
               resends what was not acked. A batch whose values are out of range (`check_transitions`) is dropped,
               counted by reason and reported back in the status (`rejected`), and its seq counts as received, so
               the actor's resends never wedge on it.
Learner -> actors (learner's PUB, runtime.weights_port):
  weights      arrays: Agent.acting_state() packed into one flat array per dtype (pack_state); meta: layout,
               version (updates), learner. The actor checks names, dtypes, shapes and values against its own
               networks (`check_acting_state`) before loading.
  status       meta: learner (id of this incarnation), updates, env_steps (received), trained_steps
               (env steps whose updates are done), buffer sizes, received / acked seq per actor, rejected (per actor,
               the last refused batch: seq and reason); checked by `check_status`
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
STATUS = Schema(
    "status",
    {},
    {"learner": str, "updates": int, "env_steps": int, "trained_steps": int, "received": dict, "acked": dict},
)

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
    """Inverse of pack_state; raises ValueError when the layout is malformed or does not fit the arrays."""
    out = {}
    for entry in meta["layout"]:
        name, dtype, shape, offset = _layout_entry(entry)
        flat = arrays.get(dtype)
        size = math.prod(shape)
        if flat is None or offset + size > flat.size:
            raise ValueError(
                f"weights message: tensor '{name}' ({dtype}{shape}) does not fit the arrays sent"
            )
        out[name] = flat[offset : offset + size].reshape(shape)
    return out


def _layout_entry(entry) -> tuple[str, str, list[int], int]:
    if not (isinstance(entry, list) and len(entry) == 4):
        raise ValueError("weights message: a layout entry is not [name, dtype, shape, offset]")
    name, dtype, shape, offset = entry
    ok = (
        isinstance(name, str)
        and isinstance(dtype, str)
        and isinstance(shape, list)
        and len(shape) <= 8
        and all(type(d) is int and 0 <= d < 2**31 for d in shape)
        and type(offset) is int
        and offset >= 0
    )
    if not ok:
        raise ValueError(f"weights message: layout entry for '{str(name)[:60]}' is malformed")
    return name, dtype, shape, offset


# ---- value checks: a well-formed message with hostile values is dropped like a malformed one ----
MAX_COUNTER = 2**53  # counters and sequence numbers beyond this are not plausible (and lose float precision)
MAX_ACTOR_ID = 64  # characters
# No trained network here holds a larger value; a larger one is a corrupt or hostile message.
MAX_ABS_WEIGHT = 1e6


class MessageRejected(ValueError):
    """A message with values out of range. `reason` is a short code for counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class TransitionLimits:
    """What the learner accepts in a transitions batch: the robot's spec and the session's bounds
    (`session.transitions`). Camera frames need no more than the wire's checks (exact shapes; any byte is a pixel)."""

    state_dim: int
    action_dim: int
    chunk: int
    gamma: float
    action_low: np.ndarray
    action_high: np.ndarray
    max_abs_reward: float = 100.0  # per env step
    max_abs_state: float = 1e4


def check_actor_id(actor: str) -> None:
    if not 0 < len(actor) <= MAX_ACTOR_ID or not actor.isprintable():
        raise MessageRejected("actor_id", f"actor id must be 1-{MAX_ACTOR_ID} printable characters")


def check_transitions(arrays: Mapping[str, np.ndarray], meta: Mapping, limits: TransitionLimits) -> None:
    """Raise MessageRejected unless every field of the batch is in range and consistent with the others (the wire
    has checked dtypes, field names, finite floats and the shapes' ranks)."""
    obs, actions = arrays["obs"], arrays["actions"]
    n = len(obs)
    if n == 0:
        raise MessageRejected("empty", "a transitions batch holds at least one transition")
    lengths = {k: len(v) for k, v in arrays.items()}
    if any(length != n for length in lengths.values()):
        raise MessageRejected("lengths", f"fields disagree on the number of transitions: {lengths}")
    for key in ("obs", "next_obs"):
        if arrays[key].shape[1] != limits.state_dim:
            raise MessageRejected(
                "state_width",
                f"{key} has {arrays[key].shape[1]} values per state, the robot {limits.state_dim}",
            )
        if np.abs(arrays[key]).max() > limits.max_abs_state:
            raise MessageRejected("state_range", f"{key} holds a value beyond +-{limits.max_abs_state:g}")
    if actions.shape[1:] != (limits.chunk, limits.action_dim):
        raise MessageRejected(
            "action_shape",
            f"actions are {actions.shape[1:]}, expected (chunk, action) {(limits.chunk, limits.action_dim)}",
        )
    slack = 1e-3 * (limits.action_high - limits.action_low) + 1e-6  # (float32 rounding of clamped actions)
    if (actions < limits.action_low - slack).any() or (actions > limits.action_high + slack).any():
        raise MessageRejected("action_range", "an action is outside the robot's action bounds")
    _check_steps_and_returns(arrays, limits)
    if arrays["intervention"].view(np.uint8).max() > 1:
        raise MessageRejected("intervention", "intervention flags must be 0 or 1")
    env_steps = meta["env_steps"]
    if not -(-env_steps // limits.chunk) <= n <= env_steps:  # chunks start every 1..H steps
        raise MessageRejected(
            "env_steps",
            f"env_steps {env_steps} does not fit {n} transitions (an episode of T steps gives T/{limits.chunk} to T)",
        )


def _check_steps_and_returns(arrays: Mapping[str, np.ndarray], limits: TransitionLimits) -> None:
    steps, reward, discount = arrays["steps"], arrays["reward"], arrays["discount"]
    if steps.min() < 1 or steps.max() > limits.chunk:
        raise MessageRejected("steps", f"steps (executed steps per chunk) must be 1..{limits.chunk}")
    if (np.abs(reward) > limits.max_abs_reward * steps).any():
        raise MessageRejected(
            "reward_range", f"a reward is beyond +-{limits.max_abs_reward:g} per step (session.transitions)"
        )
    expected = np.float64(limits.gamma) ** steps
    if not ((discount == 0) | np.isclose(discount, expected, rtol=1e-5, atol=1e-7)).all():
        raise MessageRejected(
            "discount",
            f"discount must be 0 (terminal) or gamma^steps (gamma {limits.gamma}): do the configs differ?",
        )


def check_status(meta: Mapping) -> None:
    """Raise MessageRejected unless the learner's status is in range (the wire has checked the types of its keys)."""
    counters = [meta[k] for k in ("updates", "env_steps", "trained_steps")]
    counters += [meta.get(k, 0) for k in ("online", "offline", "pending_updates")]
    if any(type(c) is not int or not 0 <= c <= MAX_COUNTER for c in counters):
        raise MessageRejected("counter", "status counters must be integers in 0..2^53")
    if meta["trained_steps"] > meta["env_steps"]:
        raise MessageRejected("counter", "trained_steps exceeds env_steps")
    received, acked = meta["received"], meta["acked"]
    for table in (received, acked):
        if len(table) > 4096 or any(
            type(k) is not str or type(v) is not int or not 0 <= v <= MAX_COUNTER for k, v in table.items()
        ):
            raise MessageRejected("seq_table", "received / acked must map actor ids to batch numbers")
    if any(v > received.get(k, 0) for k, v in acked.items()):
        raise MessageRejected("seq_table", "a batch is acked before it was received")
    rejected = meta.get("rejected", {})
    if (
        not isinstance(rejected, dict)
        or len(rejected) > 4096
        or any(
            not (isinstance(v, dict) and type(v.get("seq")) is int and isinstance(v.get("reason"), str))
            for v in rejected.values()
        )
    ):
        raise MessageRejected("rejected", "rejected must map actor ids to {seq, reason}")


def check_acting_state(state: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> None:
    """Raise MessageRejected unless the weights are exactly the tensors of the actor's own acting networks (names,
    dtypes, shapes), with values in range and positive normalisation scales. (The action bounds in them may be
    wider than this robot's calibrated ones: the driver's safety layer clamps every command to its own.)"""
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise MessageRejected(
            "weights_names",
            f"weights lack {missing[:3]} / bring unknown {extra[:3]}: do the agent configs differ?",
        )
    for name, mine in own.items():
        theirs = state[name]
        if theirs.dtype != mine.dtype or theirs.shape != mine.shape:
            raise MessageRejected(
                "weights_shape",
                f"'{name}' is {theirs.dtype}{theirs.shape}, this actor's network has {mine.dtype}{mine.shape}",
            )
        if theirs.dtype.kind == "f" and theirs.size and max(theirs.max(), -theirs.min()) > MAX_ABS_WEIGHT:
            raise MessageRejected("weights_range", f"'{name}' holds a value beyond +-{MAX_ABS_WEIGHT:g}")
        if name == "norm.obs_std" and theirs.size and theirs.min() <= 0:
            raise MessageRejected("weights_range", f"'{name}' (a normalisation scale) must be positive")
