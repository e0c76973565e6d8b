"""The wire format: a msgpack header frame followed by one raw buffer per array. No pickle, ever.

Header (msgpack array, in this order): v (protocol version), type, seq, stamp (sender's monotonic or virtual clock),
wall (time.time() at send), meta (small msgpack-native map), fields (a msgpack bin holding the packed list of
[name, dtype, shape] per array, in frame order). `read_header` / `write_header` show a header as a map.

Why fields is packed on its own: a sender sends the same field list with every message, so the receiver checks a
field list once (dtypes, shapes, sizes, the schema's fields) and finds it again by its exact bytes; only values
(buffer sizes, finite numbers, meta) are checked per message. A stream of 50 Hz observations thus costs one dict
lookup for its layout, and bytes compare exactly (a shape [7.0] or [True] never passes as a checked [7]).

Every received message goes through `decode`, which checks the header, versions, dtypes, shapes, sizes and (with a
`Schema`) the allowed fields, exact dtypes/shapes, finiteness and required meta keys. Anything wrong raises
`WireError` (a ValueError) with a short `reason` code that sockets count per reason. Headers are read by msgspec
(types and bounds checked in C); a header it refuses is read again by the plain msgpack path that names the problem.

What a round trip costs, and why the code looks as it does: `expo-robot bench transport` (benchmarks/results/).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgpack
import msgspec
import numpy as np
import zmq

PROTOCOL_VERSION = 2  # 2: array header with a packed field list (1: map header)
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # per message, all arrays together
MAX_NDIM = 8
MAX_FIELDS = 32
_SMALL_ARRAY = 256  # elements: finite-checked with a Python sum, larger ones with numpy
_SMALL_FRAME_BYTES = 2048  # received frames up to this size are copied: cheaper than a read-only view
_MAX_LAYOUTS = 256  # cached field lists per schema: a sender uses a handful, random headers must not grow it
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
_HEADER_KEYS = ("v", "type", "seq", "stamp", "wall", "meta", "fields")  # positions in the header array
# Lookups instead of dtype.name / np.dtype(name): those are slow Python-level calls on the hot path.
_NAME_OF = {np.dtype(n): n for n in ALLOWED_DTYPES}
_DTYPE = {n: np.dtype(n) for n in ALLOWED_DTYPES}


# One validated array: name, dtype, shape (None when 1-D: frombuffer's own), byte count, whether values must be finite.
_Entry = tuple[str, np.dtype, tuple[int, ...] | None, int, bool]


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


@dataclass(slots=True)
class Message:
    type: str
    seq: int
    stamp: float
    meta: dict
    arrays: dict[str, np.ndarray]
    wall: float = 0.0
    sender: str = ""  # the sender's CurveZMQ public key (z85), when the receiving socket has an allow-list


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


# What ZMTP (and CurveZMQ's encryption) add around a frame's bytes: a socket's frame limit leaves this much room.
FRAME_OVERHEAD_BYTES = 1024


def max_frame_bytes(schema: Schema | Mapping[str, Schema] | None) -> int:
    """The largest frame a message valid under `schema` can have (the header, or one array), plus ZMTP's framing:
    the receiving socket's zmq.MAXMSGSIZE, so that ZeroMQ refuses a larger frame from its length prefix, before
    allocating it (a frame over this would fail `decode` anyway)."""
    if schema is None:
        return DEFAULT_MAX_BYTES + FRAME_OVERHEAD_BYTES
    largest = MAX_HEADER_BYTES
    for spec in [schema] if isinstance(schema, Schema) else schema.values():
        for f in spec.fields.values():
            known = f.shape is not None and None not in f.shape
            nbytes = math.prod(f.shape) * _DTYPE[f.dtype].itemsize if known else spec.max_bytes
            largest = max(largest, min(nbytes, spec.max_bytes))
    return largest + FRAME_OVERHEAD_BYTES


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
    bufs, layout = [], []
    for name, value in (arrays or {}).items():
        arr, dtype_name = _as_wire_array(name, value)
        bufs.append(arr)
        layout.append((name, dtype_name, arr.shape))
    header = [
        PROTOCOL_VERSION,
        msg_type,
        int(seq),
        float(time.monotonic() if stamp is None else stamp),
        time.time(),
        meta if type(meta) is dict else dict(meta or {}),
        _packed_fields(tuple(layout)),
    ]
    return [_ENCODER.encode(header), *bufs]


# layout -> its packed field list (a process sends a handful of layouts)
_PACKED_FIELDS: dict[tuple, bytes] = {}


def _packed_fields(layout: tuple) -> bytes:
    packed = _PACKED_FIELDS.get(layout)
    if packed is None:
        packed = msgpack.packb([[name, dtype, list(shape)] for name, dtype, shape in layout])
        if len(_PACKED_FIELDS) >= _MAX_LAYOUTS:
            _PACKED_FIELDS.clear()
        _PACKED_FIELDS[layout] = packed
    return packed


def read_header(frame: Any) -> dict:
    """A header as a map {v, type, seq, stamp, wall, meta, fields}, fields unpacked (for tools and tests; `decode`
    checks what it reads). Raises WireError when the frame is not a header."""
    header = _unpack_header(_frame_bytes(frame))
    if type(header) is not list or len(header) != len(_HEADER_KEYS):
        raise WireError("header_keys", f"header must be an array of {_HEADER_KEYS}")
    out = dict(zip(_HEADER_KEYS, header))
    if type(out["fields"]) is bytes:
        out["fields"] = _unpack(out["fields"], "header_fields")
    return out


def write_header(header: Mapping[str, Any]) -> bytes:
    """The inverse of read_header: any values, checked by the receiver (tests use it to build bad headers)."""
    fields = header["fields"]
    packed = msgpack.packb(fields) if isinstance(fields, list) else fields
    return msgpack.packb([header[k] if k != "fields" else packed for k in _HEADER_KEYS])


def _frame_bytes(frame: Any) -> Any:
    """A frame as an object whose len() is its byte count and that numpy and msgpack read without a copy."""
    if type(frame) is zmq.Frame or type(frame) is bytes:  # what sockets receive: used as they are
        return frame
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B")


def _array(frame: Any, entry: _Entry, msg_type: str) -> np.ndarray:
    """The array a frame holds, read-only (a view on a large received buffer, a copy of a small one: copy it before
    changing it), its size checked against the header and, where the schema asks, its values finite."""
    name, dtype, shape, nbytes, finite = entry
    small = type(frame) is zmq.Frame and nbytes <= _SMALL_FRAME_BYTES
    buf = frame.bytes if small else _frame_bytes(frame)  # (bytes: read-only, and one call instead of two)
    if len(buf) != nbytes:
        raise WireError("buffer_size", f"field '{name[:40]}' has {len(buf)} bytes, header says {nbytes}")
    arr = np.frombuffer(buf, dtype=dtype)
    if type(buf) is not bytes:  # a received frame's buffer is writable
        arr.flags.writeable = False
    if finite and not _all_finite(arr):
        raise WireError("not_finite", f"'{msg_type}.{name}' holds NaN or Inf")
    return arr if shape is None else arr.reshape(shape)


def _all_finite(flat: np.ndarray) -> bool:
    # A sum of finite values is finite unless float64 values overflow it; then check element by element.
    # Small arrays are summed by CPython's own loop: BLAS's dot, cold after each wake-up, took 25 us at p99 here.
    total = sum(flat.tolist()) if len(flat) <= _SMALL_ARRAY else flat.dot(flat)
    return math.isfinite(total) or bool(np.isfinite(flat).all())


def _unpack(raw: Any, reason: str) -> Any:
    try:
        # msgpack bounds every declared length by the input's size; inputs are at most MAX_HEADER_BYTES
        return msgpack.unpackb(raw, strict_map_key=True)
    except Exception as e:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise WireError(reason, f"not valid msgpack ({type(e).__name__})") from e


def _unpack_header(raw: Any) -> Any:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError("header_size", f"header is {len(raw)} bytes (limit {MAX_HEADER_BYTES})")
    return _unpack(raw, "header_garbage")


_Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]  # (NaN fails both)


class _Header(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A well-formed header, checked in C by msgspec: the fast path for every message. `_split_header` accepts the
    same headers and names what is wrong with the others."""

    v: int
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    seq: int
    stamp: _Finite
    wall: _Finite
    meta: dict[str, Any]
    fields: bytes


def _as_builtin(value: Any) -> Any:
    """Numpy scalars and str subclasses in a header become plain Python values; anything else is a TypeError."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"a {type(value).__name__} cannot go on the wire (meta takes msgpack-native values)")


_HEADER = msgspec.msgpack.Decoder(_Header)
_ENCODER = msgspec.msgpack.Encoder(enc_hook=_as_builtin)


def _read_header(frame: Any) -> tuple:
    """(type, seq, stamp, wall, meta, packed fields) of a header frame, or WireError."""
    try:
        h = _HEADER.decode(frame) if len(frame) <= MAX_HEADER_BYTES else None
    except Exception:  # (msgspec raises DecodeError, ValidationError, UnicodeDecodeError, ...)
        h = None
    if h is None:  # the checked path: it raises the error that names the problem
        return _split_header(_unpack_header(frame))
    if h.v != PROTOCOL_VERSION:
        raise VersionMismatchError(h.v)
    return h.type, h.seq, float(h.stamp), float(h.wall), h.meta, h.fields


def _split_header(header: Any) -> tuple:
    if type(header) is not list or len(header) != len(_HEADER_KEYS):
        if isinstance(header, dict) and "v" in header:  # a protocol-1 peer (map header)
            raise VersionMismatchError(header["v"])
        raise WireError("header_keys", f"header must be an array of {_HEADER_KEYS}")
    v, msg_type, seq, stamp, wall, meta, fields = header
    if v != PROTOCOL_VERSION or type(v) is not int:
        raise VersionMismatchError(v)
    if type(msg_type) is not str or not 0 < len(msg_type) <= 64:
        raise WireError("header_type", "message type must be a short non-empty string")
    if type(seq) is not int:
        raise WireError("header_seq", "seq must be an integer")
    for value in (stamp, wall):
        if type(value) not in (float, int) or not math.isfinite(value):
            raise WireError("header_stamp", "stamp and wall must be finite numbers")
    if type(meta) is not dict:
        raise WireError("header_meta", "meta must be a map")
    if type(fields) is not bytes:
        raise WireError("header_fields", "fields must be a packed field list (msgpack bin)")
    return msg_type, seq, float(stamp), float(wall), meta, fields


_ANY_TYPE_LAYOUTS: dict = {}  # layouts validated without a schema


def _layout(fields: bytes, spec: Schema | None) -> tuple[_Entry, ...]:
    """The arrays a packed field list declares, checked once per distinct list against the schema, then found again
    by its bytes. Everything here depends only on the field list: names, dtypes, shapes, sizes, required and extra
    fields. Per-message checks (buffer sizes, finite values, meta) stay in `decode`."""
    cache = _ANY_TYPE_LAYOUTS if spec is None else spec._layouts
    layout = cache.get(fields)
    if layout is None:
        entries = _unpack(fields, "header_fields")
        if type(entries) is not list or len(entries) > MAX_FIELDS:
            raise WireError("header_fields", f"fields must be a list of at most {MAX_FIELDS} entries")
        layout = _check_layout(entries, spec)
        if len(cache) >= _MAX_LAYOUTS:
            cache.clear()
        cache[fields] = layout
    return layout


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
    """Validate and decode frames (bytes or zmq.Frame). Arrays are read-only: views on large received buffers,
    copies of small ones.

    schema: one Schema (only that type is accepted), a {type: Schema} map (only those types), or None (any type,
    structure checks only). Raises WireError (VersionMismatchError for another protocol version).
    """
    if not 1 <= len(frames) <= MAX_FIELDS + 1:
        raise WireError(
            "frame_count", f"{len(frames)} frames (expected 1 header + up to {MAX_FIELDS} arrays)"
        )
    msg_type, seq, stamp, wall, meta, fields = _read_header(_frame_bytes(frames[0]))
    spec = _pick_schema(msg_type, schema)
    layout = _layout(fields, spec)
    if len(layout) != len(frames) - 1:
        raise WireError("frame_count", f"header lists {len(layout)} arrays, got {len(frames) - 1}")
    arrays = {entry[0]: _array(frame, entry, msg_type) for entry, frame in zip(layout, frames[1:])}
    if spec is not None:
        _check_meta(msg_type, meta, spec)
    return Message(msg_type, seq, stamp, meta, arrays, wall)


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
