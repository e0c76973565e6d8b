"""The wire format: round trips, zero-copy, and every kind of malformed message raises WireError (nothing else)."""

import msgpack
import numpy as np
import pytest

from expo_robot.transport.protocol import chunk_schema, driver_inbox, obs_schema
from expo_robot.transport.wire import (
    PROTOCOL_VERSION,
    FieldSpec,
    Schema,
    VersionMismatchError,
    WireError,
    decode,
    encode,
    read_header,
    write_header,
)

STATE = Schema("state", {"q": FieldSpec("float32", (7,))}, {"step": int})


def with_header(frames, **changes) -> list:
    h = read_header(frames[0])
    h.update(changes)
    return [write_header(h), *frames[1:]]


def test_round_trip_keeps_values_dtypes_and_meta():
    arrays = {
        "q": np.arange(7, dtype=np.float32),
        "img": np.zeros((4, 5, 3), np.uint8),
        "flag": np.array(True),
    }
    msg = decode(encode("x", arrays, {"step": 3, "tag": "a"}, seq=9, stamp=1.5))
    assert (msg.type, msg.seq, msg.stamp, msg.meta) == ("x", 9, 1.5, {"step": 3, "tag": "a"})
    for k, v in arrays.items():
        assert msg.arrays[k].dtype == v.dtype and msg.arrays[k].shape == v.shape
        np.testing.assert_array_equal(msg.arrays[k], v)
    assert decode(encode("state", {"q": np.ones(7, np.float32)}, {"step": 1}), STATE).meta["step"] == 1


def test_arrays_are_sent_and_received_without_copies():
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    frames = encode("frame", {"rgb": big})
    assert frames[1] is big  # contiguous arrays go out as they are
    received = [frames[0], memoryview(big)]
    arr = decode(received).arrays["rgb"]
    assert np.shares_memory(arr, big) and not arr.flags.writeable


def test_non_contiguous_and_big_endian_arrays_are_normalised():
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    out = decode(encode("x", {"a": a})).arrays["a"]
    np.testing.assert_array_equal(out, a) and out.dtype == np.float32
    with pytest.raises(TypeError, match="dtype"):
        encode("x", {"a": np.array(["text"])})


@pytest.mark.parametrize(
    "frames,reason",
    [
        ([], "frame_count"),
        ([b"\xc1garbage"], "header_garbage"),
        ([msgpack.packb([1, 2, 3])], "header_keys"),
        ([b"\x00" * 70_000], "header_size"),
    ],
)
def test_garbage_is_rejected(frames, reason):
    with pytest.raises(WireError) as e:
        decode(frames)
    assert e.value.reason == reason


def test_header_fields_are_checked():
    good = encode("state", {"q": np.ones(7, np.float32)}, {"step": 1})
    cases = {
        "header_type": {"type": ""},
        "header_seq": {"seq": "1"},
        "header_stamp": {"stamp": float("nan")},
        "header_meta": {"meta": [1]},
        "dtype": {"fields": [["q", "object", [7]]]},
        "shape": {"fields": [["q", "float32", [-7]]]},
        "buffer_size": {"fields": [["q", "float32", [8]]]},
        "size": {"fields": [["q", "float64", [10**9, 10**9]]]},
        "field_entry": {"fields": [["q", "float32"]]},
    }
    for reason, change in cases.items():
        with pytest.raises(WireError) as e:
            decode(with_header(good, **change))
        assert e.value.reason == reason, change
    with pytest.raises(WireError, match="frame_count"):
        decode(good[:1])  # header announces one array, none follows


def test_version_mismatch_is_its_own_error():
    frames = with_header(encode("x"), v=PROTOCOL_VERSION + 1)
    with pytest.raises(VersionMismatchError, match="protocol version"):
        decode(frames)
    protocol_1 = {"type": "x", "v": 1, "seq": 0, "stamp": 0.0, "wall": 0.0, "meta": {}, "fields": []}  # a map
    with pytest.raises(VersionMismatchError, match="peer speaks protocol version 1"):
        decode([msgpack.packb(protocol_1)])


def test_a_header_reads_as_a_map_and_writes_back():
    frames = encode("state", {"q": np.ones(7, np.float32)}, {"step": 1}, seq=4, stamp=2.5)
    h = read_header(frames[0])
    assert (h["type"], h["seq"], h["stamp"], h["meta"]) == ("state", 4, 2.5, {"step": 1})
    assert h["fields"] == [["q", "float32", [7]]]
    assert write_header(h) == frames[0]


def test_schema_checks_type_fields_dtype_shape_finite_meta():
    q = np.ones(7, np.float32)
    cases = {
        "unexpected_type": encode("other", {"q": q}, {"step": 1}),
        "missing_field": encode("state", {}, {"step": 1}),
        "extra_field": encode("state", {"q": q, "z": q}, {"step": 1}),
        "dtype": encode("state", {"q": q.astype(np.float64)}, {"step": 1}),
        "shape": encode("state", {"q": np.ones(6, np.float32)}, {"step": 1}),
        "not_finite": encode("state", {"q": np.full(7, np.nan, np.float32)}, {"step": 1}),
        "meta": encode("state", {"q": q}, {"step": "one"}),
    }
    for reason, frames in cases.items():
        with pytest.raises(WireError) as e:
            decode(frames, STATE)
        assert e.value.reason == reason
    with pytest.raises(WireError, match="meta"):
        decode(encode("state", {"q": q}, {"step": True}), STATE)  # a bool is not a step count


def test_chunk_length_limit_and_protocol_schemas():
    inbox = driver_inbox(action_dim=4, max_chunk_len=8)
    ok = encode("chunk", {"actions": np.zeros((8, 4), np.float32)}, {"t0": 0.0, "chunk_id": 1, "client": "c"})
    assert decode(ok, inbox).arrays["actions"].shape == (8, 4)
    long = encode(
        "chunk", {"actions": np.zeros((9, 4), np.float32)}, {"t0": 0.0, "chunk_id": 1, "client": "c"}
    )
    with pytest.raises(WireError, match="size"):
        decode(long, chunk_schema(4, 8))
    obs = encode("obs", {"state": np.zeros(21, np.float32), "action": np.zeros(4, np.float32)}, {})
    with pytest.raises(WireError, match="meta"):
        decode(obs, obs_schema(21, 4))


def mutate(frames: list, rng: np.random.Generator) -> list:
    """One random corruption of a valid message."""
    frames = [bytes(f) for f in frames]
    kind = rng.integers(6)
    i = int(rng.integers(len(frames)))
    if kind == 0 and frames[i]:  # truncate a frame
        frames[i] = frames[i][: int(rng.integers(len(frames[i])))]
    elif kind == 1:  # flip random bytes
        b = bytearray(frames[i])
        for _ in range(int(rng.integers(1, 8))):
            if b:
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
        frames[i] = bytes(b)
    elif kind == 2:  # drop or duplicate a frame
        frames = frames[:i] + frames[i + 1 :] if rng.random() < 0.5 else [*frames, frames[i]]
    elif kind == 3:  # random garbage frames
        frames = [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(0, 4)))]
    elif kind == 4:  # NaN/Inf in the payload
        frames[-1] = np.full(len(frames[-1]) // 4, rng.choice([np.nan, np.inf]), np.float32).tobytes()
    else:  # header with random types
        h = read_header(frames[0])
        key = ["type", "v", "seq", "stamp", "meta", "fields"][int(rng.integers(6))]
        h[key] = [None, -1, 2**40, "x", {"a": 1}, [[1, 2, 3]], 1e308, b"\xc1"][int(rng.integers(8))]
        frames[0] = write_header(h)
    return frames


def test_fuzz_decode_raises_only_wire_errors():
    rng = np.random.default_rng(0)
    inbox = driver_inbox(4, 32)
    valid = [
        encode("chunk", {"actions": np.zeros((5, 4), np.float32)}, {"t0": 1.0, "chunk_id": 2, "client": "c"}),
        encode("cmd", meta={"op": "reset", "client": "c", "seed": 1}),
        encode("heartbeat", meta={"client": "c"}),
    ]
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(5_000):
        frames = mutate(valid[int(rng.integers(len(valid)))], rng)
        try:
            msg = decode(frames, inbox)
        except WireError:
            outcomes["rejected"] += 1
            continue
        outcomes["ok"] += 1
        if msg.type == "chunk":
            assert np.isfinite(msg.arrays["actions"]).all() and msg.arrays["actions"].shape[1] == 4
    assert outcomes["rejected"] > 3_000


def test_a_cached_layout_never_admits_a_header_that_only_looks_equal():
    """decode reuses the checks of a header's field list; bools/floats that compare equal to ints must not alias it."""
    one = Schema("one", {"q": FieldSpec("float32", (1,))})
    for schema, n, look_alike in ((STATE, 7, 7.0), (one, 1, True), (STATE, 7, b"\x07")):
        good = encode(schema.type, {"q": np.zeros(n, np.float32)}, {"step": 1})
        decode(good, schema)  # caches the checked layout of [["q", "float32", [n]]]
        with pytest.raises(WireError) as e:
            shape = (
                look_alike if isinstance(look_alike, bytes) else [look_alike]
            )  # bytes: a "shape" of one byte
            decode(with_header(good, fields=[["q", "float32", shape]]), schema)
        assert e.value.reason == "shape"
    nan = encode("state", {"q": np.full(7, np.nan, np.float32)}, {"step": 1})
    with pytest.raises(WireError, match="NaN"):  # values are checked on every message, cached layout or not
        decode(nan, STATE)
    huge = encode("state", {"q": np.full(7, 3e38, np.float32)}, {"step": 1})
    assert decode(huge, STATE).arrays["q"][0] == np.float32(3e38)  # finite, though q.q overflows


@pytest.mark.parametrize(
    "values",
    [
        {},  # as encode wrote it
        {"stamp": 1e308, "wall": -1e308},  # finite extremes
        {"stamp": 3, "seq": 2**63 - 1},  # an integer stamp, a big seq
        {"type": "t" * 64},
        {"type": "t" * 65},
        {"seq": True},
        {"stamp": float("nan")},
        {"wall": float("-inf")},
        {"meta": {b"k": 1}},  # a bytes key
        {"meta": []},
        {"fields": []},  # not packed
        {"v": 2.0},
    ],
)
def test_the_fast_header_path_never_accepts_what_the_checked_path_refuses(values):
    """decode reads a header with msgspec first and, when msgspec refuses it, with the path that names the error."""
    from expo_robot.transport import wire

    frame = with_header(encode("state", {"q": np.ones(7, np.float32)}, {"step": 1}), **values)[0]
    try:
        checked = wire._split_header(wire._unpack_header(frame))
    except WireError:
        checked = None
    try:
        h = wire._HEADER.decode(frame)
        fast = (
            (h.type, h.seq, float(h.stamp), float(h.wall), h.meta, h.fields)
            if h.v == PROTOCOL_VERSION
            else None
        )
    except Exception:
        fast = None
    assert fast is None or fast == checked
    if checked is not None:
        assert wire._read_header(frame) == checked


def test_numpy_scalars_in_meta_go_as_numbers_and_other_objects_are_refused():
    msg = decode(encode("x", meta={"t": np.float64(1.5), "n": np.int64(3), "s": np.str_("a")}))
    assert msg.meta == {"t": 1.5, "n": 3, "s": "a"} and type(msg.meta["t"]) is float
    with pytest.raises(TypeError, match="cannot go on the wire"):
        encode("x", meta={"bad": object()})
