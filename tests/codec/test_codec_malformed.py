"""Malformed, truncated and hostile messages: each raises ValueError that says what is wrong
and where, and nothing else happens (no crash, no over-read, no allocation the input does not
justify, no code run). Messages are built with msgpack-python, independently of our encoder."""

from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import struct

import msgpack
import numpy as np
import pytest
from codec_messages import message, packed, raw_map, raw_message, tensor_entry

from segmentation_suite.network.codec import deserialize_weights, serialize_weights


def valid_message() -> bytes:
    weights = {
        "enc.conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "enc.bn.num_batches_tracked": np.array(9, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    return bytes(serialize_weights(weights, epoch=3, loss=0.5, metadata={"note": ["a", 1]}))


def f32(values) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


def test_the_reference_message_is_valid():
    assert set(deserialize_weights(valid_message())) == {
        "enc.conv.weight",
        "enc.bn.num_batches_tracked",
        "mask",
        "empty",
    }


def test_every_truncation_is_refused():
    data = valid_message()
    for end in range(len(data)):
        with pytest.raises(ValueError):
            deserialize_weights(data[:end])


def test_truncation_error_names_the_offset():
    with pytest.raises(ValueError, match=r"truncated.*offset \d+"):
        deserialize_weights(valid_message()[:-5])


def test_trailing_garbage_is_refused():
    with pytest.raises(ValueError, match="trailing"):
        deserialize_weights(valid_message() + b"\x00")


def test_single_byte_corruptions_raise_only_value_error():
    # A small sweep in Python; the libFuzzer harness (csrc/fuzz) goes much further.
    data = valid_message()
    for position in range(len(data)):
        for replacement in (0x00, 0xFF, data[position] ^ 0x80, (data[position] + 1) & 0xFF):
            corrupted = bytearray(data)
            corrupted[position] = replacement
            with contextlib.suppress(ValueError):
                deserialize_weights(bytes(corrupted))


def data_header_positions(data: bytes) -> list[int]:
    """Offsets of the bin headers that follow each 'data' key."""
    positions, start = [], 0
    while (found := data.find(b"\xa4data", start)) >= 0:
        positions.append(found + 5)
        start = found + 1
    return positions


@pytest.mark.parametrize("delta", [-1, 1, 1000, -(2**20)])
def test_flipped_data_lengths_are_refused(delta):
    data = valid_message()
    positions = data_header_positions(data)
    assert positions
    for position in positions:
        tag = data[position]
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4}[tag]
        fmt = {1: ">B", 2: ">H", 4: ">I"}[width]
        (length,) = struct.unpack_from(fmt, data, position + 1)
        new_length = (length + delta) % (1 << (8 * width))
        if new_length == length:  # the delta vanishes modulo this header's width
            continue
        corrupted = bytearray(data)
        struct.pack_into(fmt, corrupted, position + 1, new_length)
        with pytest.raises(ValueError):
            deserialize_weights(bytes(corrupted))


def test_flipped_map_and_array_counts_are_refused():
    tensor = tensor_entry("float32", [2, 2], f32([1, 2, 3, 4]))
    good = message({"t": tensor})
    assert deserialize_weights(good)["t"].shape == (2, 2)
    # the shape array [2, 2] is 0x92 0x02 0x02; claim three dimensions instead
    assert good.count(b"\x92\x02\x02") == 1
    with pytest.raises(ValueError):
        deserialize_weights(good.replace(b"\x92\x02\x02", b"\x93\x02\x02"))
    # the top-level map claims 6 pairs but has 5
    assert good[0] == 0x85
    with pytest.raises(ValueError):
        deserialize_weights(b"\x86" + good[1:])
    with pytest.raises(ValueError):
        deserialize_weights(b"\x84" + good[1:])


@pytest.mark.parametrize(
    "shape, data",
    [
        ([2**40], f32([1.0])),
        ([2**32, 2**32], f32([1.0])),
        ([2**63], b""),
        ([0, 2**60, 2**60], b""),
        ([1] * 33, f32([1.0])),
        ([3], f32([1.0, 2.0])),
        ([], b""),
    ],
)
def test_shapes_that_do_not_match_the_data_are_refused(shape, data):
    with pytest.raises(ValueError, match="tensor 'huge'"):
        deserialize_weights(message({"huge": tensor_entry("float32", shape, data)}))


def test_shape_mismatch_error_says_sizes_and_offset():
    bad = message({"conv.weight": tensor_entry("float32", [4, 4], f32([1.0] * 15))})
    with pytest.raises(ValueError) as info:
        deserialize_weights(bad)
    text = str(info.value)
    assert "conv.weight" in text and "64 bytes" in text and "60 bytes" in text
    assert "offset" in text


@pytest.mark.parametrize(
    "hostile",
    [
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion pairs in 5 bytes
        b"\xdd\xff\xff\xff\xff\x00",  # array32
        b"\xc6\xff\xff\xff\xff\x00\x00",  # bin32 of 4 GiB
        b"\xdb\xff\xff\xff\xff",  # str32
        raw_map([("format", "segmentation-suite-weights"), ("version", 1)])[:5]
        + b"\xff\xff\xff\xff",
    ],
)
def test_huge_declared_sizes_are_refused_without_allocating(hostile):
    with pytest.raises(ValueError):
        deserialize_weights(hostile)


def test_huge_tensor_count_is_refused():
    tensors = b"\xdf\xff\xff\xff\xff" + packed("a")
    with pytest.raises(ValueError, match="declares 4294967295 pairs"):
        deserialize_weights(raw_message(tensors))


def test_duplicate_tensor_names_are_refused():
    entry = packed(tensor_entry("int8", [1], b"\x01"))
    tensors = raw_map([("w", entry), ("x", entry), ("w", entry)])
    with pytest.raises(ValueError, match="tensor 'w' appears twice"):
        deserialize_weights(raw_message(tensors))


def test_duplicate_fields_are_refused():
    fields = [("dtype", "int8"), ("wire", "int8"), ("shape", [1]), ("data", packed(b"\x01"))]
    entry = raw_map(fields)
    doubled = raw_map([*fields, ("dtype", "int8")])
    assert deserialize_weights(raw_message(raw_map([("w", entry)])))["w"][0] == 1
    with pytest.raises(ValueError, match="appears twice"):
        deserialize_weights(raw_message(raw_map([("w", doubled)])))
    meta = raw_map([("epoch", 1), ("epoch", 2)])
    with pytest.raises(ValueError, match="'epoch'.*twice"):
        deserialize_weights(raw_message(raw_map([]), metadata=meta))


@pytest.mark.parametrize("version", [0, 3, 999, -1, "1", 1.0, None])
def test_other_format_versions_are_refused(version):
    with pytest.raises(ValueError, match="version"):
        deserialize_weights(message({}, version=version))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "truncated"),
        (packed([1, 2, 3]), "must be a map"),
        (packed({"version": 1, "format": "segmentation-suite-weights"}), "'format'"),
        (message({}, format_name="something-else"), "not a weights message"),
        (message({}, format_name=b"segmentation-suite-weights"), "not a weights message"),
        (message({}, kind="pickle"), "kind"),
        (message({}, metadata=[1, 2]), "metadata"),
        (message({}, metadata={"epoch": "three"}), "'epoch'"),
        (message({}, metadata={"loss": "low"}), "'loss'"),
        (message({}, metadata={"num_samples": -5}), "'num_samples'"),
        (message({}, metadata={"architecture": 7}), "'architecture'"),
        (message({}, metadata={"extra": [1]}), "'extra'"),
        (message({}, metadata={"surprise": 1}), "unknown key"),
        (message({}, metadata={"extra": {"k": msgpack.ExtType(1, b"x")}}), "ext"),
        (message({}, metadata={"extra": {1: "int key"}}), "map key"),
        (message({"w": [1, 2]}), "tensor 'w'.*must be a map"),
        (message({"w": {**tensor_entry("int8", [1], b"\x01"), "dtype": 8}}), "'dtype'"),
        (message({"w": {**tensor_entry("int8", [1], b"\x01"), "shape": "1"}}), "'shape'"),
        (message({"w": {**tensor_entry("int8", [1], b"\x01"), "shape": [-1]}}), "dimension"),
        (message({"w": {**tensor_entry("int8", [1], b"\x01"), "shape": [1.0]}}), "dimension"),
        (message({"w": {**tensor_entry("int8", [1], b"\x01"), "data": "\x01"}}), "'data'"),
        (message({"w": {**tensor_entry("int8", [1], b"\x01"), "pad": 3}}), "'pad'"),
        (message({"w": {**tensor_entry("int8", [1], b"\x01"), "extra": 1}}), "unknown field"),
        (message({"w": {"dtype": "int8", "wire": "int8", "shape": [1]}}), "no 'data'"),
        (message({"w": tensor_entry("complex64", [1], b"\x00" * 8)}), "unknown dtype"),
        (message({"w": tensor_entry("int64", [1], b"\x00" * 2, wire="float16")}), "cannot travel"),
        (message({"w": tensor_entry("float16", [1], b"\x00" * 2, wire="bfloat16")}), "cannot"),
        (message({"": tensor_entry("int8", [1], b"\x01")}), "tensor name"),
        (message({"x" * 5000: tensor_entry("int8", [1], b"\x01")}), "tensor name"),
    ],
)
def test_wrong_types_and_values_are_refused_with_a_reason(data, match):
    with pytest.raises(ValueError, match=match):
        deserialize_weights(data)


def test_tensors_that_are_not_a_map_are_refused():
    with pytest.raises(ValueError, match="'tensors'"):
        deserialize_weights(raw_message(packed([1, 2])))
    name_as_bin = raw_map([(packed(b"w"), packed(tensor_entry("int8", [1], b"\x01")))])
    with pytest.raises(ValueError, match="tensor name"):
        deserialize_weights(raw_message(name_as_bin))


def test_invalid_utf8_is_refused():
    bad_name = b"\xa2\xff\xfe"  # fixstr of two bytes that are not UTF-8
    tensors = raw_map([(bad_name, packed(tensor_entry("int8", [1], b"\x01")))])
    with pytest.raises(ValueError, match="UTF-8"):
        deserialize_weights(raw_message(tensors))
    meta = raw_map([("architecture", b"\xa1\xc0")])
    with pytest.raises(ValueError, match="'architecture'"):
        deserialize_weights(raw_message(raw_map([]), metadata=meta))


def test_deep_nesting_is_refused():
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError, match="nested"):
        deserialize_weights(message({}, metadata={"extra": {"deep": deep}}))
    # the same bomb as raw bytes (msgpack-python limits its own recursion)
    bomb = b"\x91" * 100_000 + b"\x01"
    with pytest.raises(ValueError, match="nested"):
        deserialize_weights(
            raw_message(raw_map([]), metadata=raw_map([("extra", raw_map([("deep", bomb)]))]))
        )


def test_non_buffer_input_is_a_type_error():
    with pytest.raises(TypeError):
        deserialize_weights("not bytes")


class _Exploit:
    ran = False

    def __reduce__(self):
        return (setattr, (_Exploit, "ran", True))


def test_a_pickle_payload_is_never_unpickled():
    # The original app's format is a gzip'd pickle; one that runs code on load.
    payload = pickle.dumps({"weights": _Exploit()})
    for data in (payload, gzip.compress(payload, compresslevel=1)):
        with pytest.raises(ValueError):
            deserialize_weights(data)
    assert not _Exploit.ran
    torch = pytest.importorskip("torch", reason="the torch.save variant needs torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3).half()}, buffer)
    with pytest.raises(ValueError, match="not a weights message|must be a map"):
        deserialize_weights(gzip.compress(buffer.getvalue(), compresslevel=1))
