"""Hostile version-2 (delta) messages, written with msgpack-python: bad q8 block counts,
NaN/infinite/negative scales, truncated or oversized data, hostile topk counts and
positions, delta wires where they do not belong. Each is a ValueError that says what is wrong,
raised before any reference is even looked at (issue 14, must-show 1)."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import numpy as np
import pytest

from segmentation_suite.network.codec import deserialize_weights, serialize_weights

REFERENCE_ID = bytes(range(16))


def delta_message(tensors: dict, *, version=2, reference=REFERENCE_ID, **top) -> bytes:
    message = {"format": "segmentation-suite-weights", "version": version, "kind": "numpy"}
    if reference is not None:
        message["reference"] = reference
    message.update({"metadata": {}, "tensors": tensors, **top})
    return msgpack.packb(message, use_bin_type=True)


def q8_entry(count: int, *, blocks=None, scales=None, levels=None, dtype="float32") -> dict:
    blocks_needed = -(-count // 256)
    scales = np.full(blocks_needed, 0.01, np.float16).tobytes() if scales is None else scales
    levels = np.zeros(count, np.int8).tobytes() if levels is None else levels
    return {
        "dtype": dtype,
        "wire": "q8",
        "shape": [count],
        "blocks": blocks_needed if blocks is None else blocks,
        "data": scales + levels,
    }


def varints(values) -> bytes:
    out = bytearray()
    for value in values:
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def topk_entry(count: int, kept: int, positions, *, scale=0.5, levels=None) -> dict:
    levels = bytes(kept) if levels is None else levels
    return {
        "dtype": "float32",
        "wire": "topk",
        "shape": [count],
        "kept": kept,
        "data": struct.pack("<f", scale) + levels + varints(positions),
    }


def half_bits(bits: int, count: int = 2) -> bytes:
    return struct.pack("<H", bits) * count


def test_the_hand_built_messages_are_valid_against_their_reference():
    """The builders above write real messages: with the matching reference they decode."""
    valid = serialize_weights(
        {"w": np.ones(300, np.float32)},
        compression="q8-delta",
        reference={"w": np.zeros(300, np.float32)},
    )
    unpacked = msgpack.unpackb(bytes(valid), raw=False)
    entry = unpacked["tensors"]["w"]
    fields = ("dtype", "wire", "shape", "blocks", "data")
    rebuilt = delta_message({"w": {k: entry[k] for k in fields}}, reference=unpacked["reference"])
    out = deserialize_weights(rebuilt, reference={"w": np.zeros(300, np.float32)})
    np.testing.assert_allclose(out["w"], 1.0, rtol=1e-3)
    with pytest.raises(ValueError, match="reference mismatch"):
        deserialize_weights(
            delta_message({"w": q8_entry(300)}), reference={"w": np.zeros(300, np.float32)}
        )
    with pytest.raises(ValueError, match="reference mismatch"):
        deserialize_weights(
            delta_message({"w": topk_entry(300, 2, [3, 5])}),
            reference={"w": np.zeros(300, np.float32)},
        )


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({"w": q8_entry(300, blocks=1)}, "declares 1 q8 blocks but its 300 elements make 2"),
        ({"w": q8_entry(300, blocks=3)}, "declares 3 q8 blocks"),
        ({"w": q8_entry(300, blocks=0)}, "declares 0 q8 blocks"),
        ({"w": q8_entry(300, blocks=2**64 - 1)}, "q8 blocks"),
        ({"w": q8_entry(300, blocks=-1)}, "'blocks'.*non-negative"),
        ({"w": q8_entry(300, blocks="2")}, "'blocks'"),
        ({"w": q8_entry(300, scales=half_bits(0x7E00))}, "block 0 .* is NaN"),
        (
            {"w": q8_entry(300, scales=half_bits(0x3C00, 1) + half_bits(0x7C00, 1))},
            "block 1 .* is infinite",
        ),
        ({"w": q8_entry(300, scales=half_bits(0xFC00))}, "infinite"),
        ({"w": q8_entry(300, scales=half_bits(0x8001))}, "negative"),
        ({"w": q8_entry(300, levels=bytes(299))}, "needs 304 bytes.*has 303"),
        ({"w": q8_entry(300, levels=bytes(301))}, "needs 304 bytes"),
        ({"w": q8_entry(300, scales=b"")}, "needs 304 bytes"),
        ({"w": {**q8_entry(300), "shape": [2**40]}}, "q8 blocks"),
        ({"w": q8_entry(4, dtype="int32")}, "int32 tensor cannot travel as a delta"),
        ({"w": q8_entry(4, dtype="float16")}, "float16 tensor cannot travel as a delta"),
        ({"w": {k: v for k, v in q8_entry(4).items() if k != "blocks"}}, "no 'blocks'"),
        ({"w": {**q8_entry(4), "kept": 1}}, "'kept' does not belong"),
        ({"w": {**q8_entry(4), "wire": "q9"}}, "unknown wire"),
        ({"w": topk_entry(100, 101, range(101))}, "keeps more values"),
        ({"w": topk_entry(100, 3, [5, 1])}, "fewer positions"),
        ({"w": topk_entry(100, 2, [5, 0])}, "repeats a position"),
        ({"w": topk_entry(100, 2, [5, 95])}, "past the end"),
        ({"w": topk_entry(100, 1, [100])}, "past the end"),
        ({"w": topk_entry(100, 1, [2**62])}, "past the end"),
        ({"w": topk_entry(100, 2, [1, 1, 1])}, "bytes after its last position"),
        ({"w": topk_entry(100, 1, [1], scale=float("nan"))}, "scale"),
        ({"w": topk_entry(100, 1, [1], scale=float("inf"))}, "scale"),
        ({"w": topk_entry(100, 1, [1], scale=-1.0)}, "scale"),
        ({"w": topk_entry(100, 1, [1], scale=2.6e38)}, "scale larger"),
        ({"w": {**topk_entry(100, 1, [1]), "data": b"\x00\x00"}}, "too short"),
        (
            {
                "w": {
                    **topk_entry(100, 1, []),
                    "data": struct.pack("<f", 1) + b"\x01" + b"\xff" * 12,
                }
            },
            "longer than 9 bytes",
        ),
        ({"w": {**topk_entry(100, 1, [1]), "blocks": 1}}, "'blocks' does not belong"),
        ({"w": {**topk_entry(100, 1, [1]), "kept": 2**64 - 1}}, "keeps more"),
    ],
)
def test_hostile_delta_tensors_are_refused(tensors, match):
    with pytest.raises(ValueError, match=match):
        deserialize_weights(delta_message(tensors), reference={"w": np.zeros(300, np.float32)})


@pytest.mark.parametrize(
    "data, match",
    [
        (
            delta_message({"w": q8_entry(4)}, version=1, reference=None),
            "wire 'q8'.*needs format version 2",
        ),
        (
            delta_message({"w": topk_entry(4, 1, [0])}, version=1, reference=None),
            "wire 'topk'.*version 2",
        ),
        (delta_message({}, version=1), "unknown top-level key"),
        (delta_message({}, reference=None), "no 'reference'"),
        (delta_message({}, reference=bytes(15)), "'reference'.*15 bytes, not 16"),
        (delta_message({}, reference="x" * 16), "'reference'.*must be a bin"),
    ],
)
def test_version_and_reference_rules(data, match):
    with pytest.raises(ValueError, match=match):
        deserialize_weights(data)


def test_every_truncation_of_a_delta_message_is_refused():
    base = {"w": np.zeros((7, 100), np.float32), "n": np.array(3, np.int64)}
    update = {
        "w": np.linspace(-1, 1, 700, dtype=np.float32).reshape(7, 100),
        "n": np.array(4, np.int64),
    }
    for compression in ("q8-delta", "topk"):
        data = bytes(serialize_weights(update, compression=compression, reference=base))
        for cut in range(len(data)):
            with pytest.raises(ValueError):
                deserialize_weights(data[:cut], reference=base)


def test_single_byte_corruptions_of_a_delta_message_raise_only_value_error():
    base = {"w": np.zeros((3, 100), np.float32)}  # two dimensions: topk sends 1-d ones as q8
    update = {"w": np.linspace(-1, 1, 300, dtype=np.float32).reshape(3, 100)}
    for compression in ("q8-delta", "topk"):
        data = bytes(serialize_weights(update, compression=compression, reference=base))
        for position in range(0, len(data), 3):
            for value in (0x00, 0xFF, data[position] ^ 0x80):
                corrupted = bytearray(data)
                corrupted[position] = value
                with contextlib.suppress(ValueError):
                    deserialize_weights(bytes(corrupted), reference=base)
