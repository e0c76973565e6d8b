"""The wire format: a msgpack header frame followed by one raw buffer per array. No pickle, ever.

Header (msgpack map): type, v (protocol version), seq, stamp (sender's monotonic or virtual clock), wall
(time.time() at send), meta (small msgpack-native dict), fields ([name, dtype, shape] per array, in frame order).

Every received message goes through `decode`, which checks the header, versions, dtypes, shapes, sizes and (with a
`Schema`) the allowed fields, exact dtypes/shapes, finiteness and required meta keys. Anything wrong raises
`WireError` (a ValueError) with a short `reason` code that sockets count per reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # per message, all arrays together
MAX_NDIM = 8
MAX_FIELDS = 32
# Plain little-endian numeric dtypes only: no object, string, void or structured dtypes on the wire.
ALLOWED_DTYPES = frozenset(
    [
        "bool",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
    ]
)
_HEADER_KEYS = ("type", "v", "seq", "stamp", "wall", "meta", "fields")
# Lookups instead of dtype.name / np.dtype(name): those are slow Python-level calls on the hot path.
_NAME_OF = {np.dtype(n): n for n in ALLOWED_DTYPES}
_DTYPE = {n: np.dtype(n) for n in ALLOWED_DTYPES}


class WireError(ValueError):
    """A received message is malformed or violates its schema. `reason` is a short code for counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class VersionMismatchError(WireError):
    """The peer speaks another protocol version: upgrade both sides to the same expo-robot release."""

    def __init__(self, theirs: Any):
        super().__init__(
            "version",
            f"peer speaks protocol version {theirs!r}, this process speaks {PROTOCOL_VERSION}; "
            "run the same expo-robot release on both sides",
        )
        self.theirs = theirs


@dataclass
class Message:
    type: str
    seq: int
    stamp: float
    meta: dict
    arrays: dict[str, np.ndarray]
    wall: float = 0.0


@dataclass(frozen=True)
class FieldSpec:
    """One array field. shape: None = any shape; a None entry = any length on that axis."""

    dtype: str
    shape: tuple[int | None, ...] | None = None
    finite: bool = True
    required: bool = True


@dataclass(frozen=True)
class Schema:
    """What a message type may carry. meta: required key -> type (or tuple of types); floats must be finite."""

    type: str
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    meta: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    max_bytes: int = DEFAULT_MAX_BYTES
    # header "fields" already validated against this schema -> their layout (see _layout)
    _layouts: dict = field(default_factory=dict, init=False, repr=False, compare=False)


def _as_wire_array(name: str, value: Any) -> tuple[np.ndarray, str]:
    arr = np.asarray(value)
    dtype_name = _NAME_OF.get(arr.dtype)
    if dtype_name is None:
        if arr.dtype.byteorder != ">" or arr.dtype.newbyteorder("<") not in _NAME_OF:
            raise TypeError(
                f"array '{name}' has dtype {arr.dtype}; the wire carries only {sorted(ALLOWED_DTYPES)}"
            )
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype_name = _NAME_OF[arr.dtype]
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    return arr, dtype_name


def encode(
    msg_type: str,
    arrays: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    seq: int = 0,
    stamp: float | None = None,
) -> list:
    """Frames for `socket.send_multipart(frames, copy=False)`: header bytes, then the arrays (not copied)."""
    names = list(arrays or {})
    bufs = [_as_wire_array(k, arrays[k]) for k in names]
    header = {
        "type": msg_type,
        "v": PROTOCOL_VERSION,
        "seq": int(seq),
        "stamp": float(time.monotonic() if stamp is None else stamp),
        "wall": time.time(),
        "meta": dict(meta or {}),
        "fields": [[k, dtype_name, list(b.shape)] for k, (b, dtype_name) in zip(names, bufs)],
    }
    return [msgpack.packb(header, use_bin_type=True), *(b for b, _ in bufs)]


def _buffer(frame: Any) -> memoryview:
    if type(frame) is zmq.Frame:  # (copy=False receives; its buffer is already a byte view)
        return frame.buffer
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B")


def _all_finite(arr: np.ndarray) -> bool:
    # x.x is finite when every x is (one C call); it overflows only for huge values, then check element-wise
    if arr.ndim == 1 and math.isfinite(arr.dot(arr)):
        return True
    return bool(np.isfinite(arr).all())


def _unpack_header(raw: memoryview) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError("header_size", f"header is {len(raw)} bytes (limit {MAX_HEADER_BYTES})")
    try:
        header = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_HEADER_BYTES,
            max_bin_len=MAX_HEADER_BYTES,
            max_array_len=4096,
            max_map_len=1024,
        )
    except Exception as e:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise WireError("header_garbage", f"header is not valid msgpack ({type(e).__name__})") from e
    if not isinstance(header, dict) or any(k not in header for k in _HEADER_KEYS):
        raise WireError("header_keys", f"header must be a map with keys {_HEADER_KEYS}")
    return header


def _check_header(h: dict) -> None:
    if not isinstance(h["type"], str) or not 0 < len(h["type"]) <= 64:
        raise WireError("header_type", "message type must be a short non-empty string")
    if h["v"] != PROTOCOL_VERSION:
        raise VersionMismatchError(h["v"])
    if not isinstance(h["seq"], int) or isinstance(h["seq"], bool):
        raise WireError("header_seq", "seq must be an integer")
    for key in ("stamp", "wall"):
        value = h[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise WireError("header_stamp", f"{key} must be a finite number")
    if not isinstance(h["meta"], dict):
        raise WireError("header_meta", "meta must be a map")
    if not isinstance(h["fields"], list) or len(h["fields"]) > MAX_FIELDS:
        raise WireError("header_fields", f"fields must be a list of at most {MAX_FIELDS} entries")


# One validated array: name, dtype, shape (None when 1-D: frombuffer's own), byte count, whether values must be finite.
_Entry = tuple[str, np.dtype, tuple[int, ...] | None, int, bool]
_MAX_LAYOUTS = (
    256  # per schema: a sender uses a handful; random headers must not grow the cache without bound
)
_ANY_TYPE_LAYOUTS: dict = {}  # layouts validated without a schema


def _layout(fields: list, spec: Schema | None) -> tuple[_Entry, ...]:
    """The arrays a header declares, checked once per distinct header against the schema, then reused.

    Everything here depends only on the header's field list: names, dtypes, shapes, sizes, required and extra
    fields. Per-message checks (buffer sizes, finite values, meta) stay in `decode`.
    """
    key = _layout_key(fields)
    cache = _ANY_TYPE_LAYOUTS if spec is None else spec._layouts
    layout = cache.get(key) if key is not None else None
    if layout is None:
        layout = _check_layout(fields, spec)
        if key is not None:
            if len(cache) >= _MAX_LAYOUTS:
                cache.clear()
            cache[key] = layout
    return layout


def _layout_key(fields: Any) -> tuple | None:
    """A hashable copy of a well-typed field list, or None (then it is checked in full and not cached)."""
    if type(fields) is not list or not all(type(e) is list and len(e) == 3 for e in fields):
        return None
    key = tuple((name, dtype, tuple(shape) if type(shape) is list else None) for name, dtype, shape in fields)
    for (
        name,
        dtype,
        shape,
    ) in key:  # exact types: True == 1, 2.0 == 2 and b"..." must not alias a cached layout
        if (
            type(name) is not str
            or type(dtype) is not str
            or shape is None
            or any(type(d) is not int for d in shape)
        ):
            return None
    return key


def _check_layout(fields: list, spec: Schema | None) -> tuple[_Entry, ...]:
    budget = spec.max_bytes if spec is not None else DEFAULT_MAX_BYTES
    entries: dict[str, _Entry] = {}
    for entry in fields:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
            raise WireError("field_entry", "each field must be [name, dtype, shape]")
        name, dtype, shape = entry
        if dtype not in ALLOWED_DTYPES:
            raise WireError("dtype", f"field '{name[:40]}' has dtype {str(dtype)[:20]!r}, not allowed")
        if not _valid_shape(shape):
            raise WireError(
                "shape", f"field '{name[:40]}' shape must be a list of <= {MAX_NDIM} non-negative ints"
            )
        nbytes = math.prod(shape) * _DTYPE[dtype].itemsize
        if nbytes > budget:
            raise WireError("size", f"field '{name[:40]}' declares {nbytes} bytes, over the size limit")
        if name in entries:
            raise WireError("field_entry", f"array '{name[:40]}' appears twice")
        budget -= nbytes
        want = spec.fields.get(name) if spec is not None else None  # finite values are a schema rule
        entries[name] = (
            name,
            _DTYPE[dtype],
            None if len(shape) == 1 else tuple(shape),
            nbytes,
            dtype.startswith("float") and bool(want and want.finite),
        )
    if spec is not None:
        _check_fields_against(spec, entries)
    return tuple(entries.values())


def _check_fields_against(spec: Schema, entries: dict[str, _Entry]) -> None:
    for name, want in spec.fields.items():
        if name not in entries:
            if want.required:
                raise WireError("missing_field", f"'{spec.type}' needs array '{name}'")
            continue
        _, dtype, shape, nbytes, _ = entries[name]
        shape = shape if shape is not None else (nbytes // dtype.itemsize,)
        if dtype.name != want.dtype:
            raise WireError("dtype", f"'{spec.type}.{name}' must be {want.dtype}, got {dtype.name}")
        if want.shape is not None and not _shape_matches(shape, want.shape):
            raise WireError("shape", f"'{spec.type}.{name}' must have shape {want.shape}, got {shape}")
    extra = set(entries) - set(spec.fields)
    if extra:
        raise WireError("extra_field", f"'{spec.type}' does not take arrays {sorted(extra)[:4]}")


def _check_meta(msg_type: str, meta: dict, spec: Schema) -> None:
    for key, kind in spec.meta.items():
        value = meta.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise WireError("meta", f"'{msg_type}' meta '{key}' must be {kind}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise WireError("not_finite", f"'{msg_type}' meta '{key}' is NaN or Inf")


def _valid_shape(shape: Any) -> bool:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        return False
    return all(type(d) is int and d >= 0 for d in shape)  # (type(True) is bool, not int)


def _shape_matches(shape: tuple[int, ...], spec: tuple[int | None, ...]) -> bool:
    if len(shape) != len(spec):
        return False
    return all(want is None or want == have for want, have in zip(spec, shape))


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def decode(frames: Sequence[Any], schema: Schema | Mapping[str, Schema] | None = None) -> Message:
    """Validate and decode frames (bytes or zmq.Frame). Arrays are read-only views on the received buffers.

    schema: one Schema (only that type is accepted), a {type: Schema} map (only those types), or None (any type,
    structure checks only). Raises WireError (VersionMismatchError for another protocol version).
    """
    if not 1 <= len(frames) <= MAX_FIELDS + 1:
        raise WireError(
            "frame_count", f"{len(frames)} frames (expected 1 header + up to {MAX_FIELDS} arrays)"
        )
    header = _unpack_header(_buffer(frames[0]))
    _check_header(header)
    if len(header["fields"]) != len(frames) - 1:
        raise WireError("frame_count", f"header lists {len(header['fields'])} arrays, got {len(frames) - 1}")
    msg_type = header["type"]
    spec = _pick_schema(msg_type, schema)
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype, shape, nbytes, finite), frame in zip(_layout(header["fields"], spec), frames[1:]):
        buf = _buffer(frame)
        if len(buf) != nbytes:
            raise WireError("buffer_size", f"field '{name[:40]}' has {len(buf)} bytes, header says {nbytes}")
        arr = np.frombuffer(buf, dtype=dtype)
        if shape is not None:
            arr = arr.reshape(shape)
        arr.flags.writeable = False  # a view on the received buffer: copy before changing it
        if finite and not _all_finite(arr):
            raise WireError("not_finite", f"'{msg_type}.{name}' holds NaN or Inf")
        arrays[name] = arr
    if spec is not None:
        _check_meta(msg_type, header["meta"], spec)
    return Message(msg_type, header["seq"], float(header["stamp"]), header["meta"], arrays, header["wall"])


def _pick_schema(msg_type: str, schema: Schema | Mapping[str, Schema] | None) -> Schema | None:
    if schema is None:
        return None
    if isinstance(schema, Schema):
        if msg_type != schema.type:
            raise WireError("unexpected_type", f"expected '{schema.type}', got '{msg_type[:40]}'")
        return schema
    if msg_type not in schema:
        raise WireError("unexpected_type", f"'{msg_type[:40]}' is not one of {sorted(schema)}")
    return schema[msg_type]
