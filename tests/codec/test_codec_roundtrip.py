"""serialize_weights/deserialize_weights round trips: every dtype and shape (Hypothesis),
wire dtype options, metadata, numpy and torch in and out, non-contiguous input, zero-copy
views, the message layout as an independent msgpack reader sees it, and the full U-Net."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segmentation_suite.network import _relayclient
from segmentation_suite.network.codec import (
    FORMAT_VERSION,
    decode_weights,
    deserialize_weights,
    serialize_weights,
)

UNET_LAYOUT = Path(__file__).resolve().parents[1] / "vectors" / "unet_deep_dice_v2_layout.json"
INTEGER_AND_BOOL = [
    "bool",
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
]
ALL_NUMPY_DTYPES = INTEGER_AND_BOOL + ["float16", "float32", "float64"]


def float16_reference(array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(np.float16).astype(array.dtype)


def bfloat16_reference(array: np.ndarray) -> np.ndarray:
    """bfloat16 rounding written independently of the C code (see test_codec_fp16.py)."""
    bits = array.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    halves = np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint32)
    return (halves << 16).view(np.float32).astype(array.dtype)


def expected_after_wire(array: np.ndarray, wire_dtype: str) -> np.ndarray:
    if array.dtype.kind != "f" or array.dtype == np.float16 or wire_dtype == "float32":
        return array
    if wire_dtype == "float16":
        return float16_reference(array)
    if array.dtype == np.float64:  # float64 -> bfloat16 is not checked here (see fp16 tests)
        return None
    return bfloat16_reference(array)


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tobytes() == np.ascontiguousarray(expected).tobytes()


names = st.text(min_size=1, max_size=30)
arrays = st.sampled_from(ALL_NUMPY_DTYPES).flatmap(
    lambda dtype: hnp.arrays(
        np.dtype(dtype),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    weights=st.dictionaries(names, arrays, max_size=6),
    wire_dtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    writable_input=st.booleans(),
)
def test_round_trip_any_dtype_shape_and_name(weights, wire_dtype, writable_input):
    encoded = serialize_weights(weights, wire_dtype=wire_dtype)
    data = bytearray(encoded) if writable_input else bytes(encoded)
    decoded, metadata = decode_weights(data)
    assert list(decoded) == list(weights)
    assert metadata["kind"] == "numpy"
    for name, original in weights.items():
        expected = expected_after_wire(original, wire_dtype)
        got = decoded[name]
        assert isinstance(got, np.ndarray)
        assert got.flags.writeable
        if expected is None:
            assert got.dtype == original.dtype and got.shape == original.shape
        else:
            assert_same_bits(got, expected)


@settings(max_examples=40, deadline=None)
@given(
    extra=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text(max_size=20)
        | st.binary(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ),
    epoch=st.none() | st.integers(-(2**63), 2**63 - 1),
    loss=st.none() | st.floats(allow_nan=False),
    num_samples=st.none() | st.integers(0, 2**64 - 1),
    architecture=st.none() | st.text(max_size=40),
)
def test_metadata_round_trip(extra, epoch, loss, num_samples, architecture):
    encoded = serialize_weights(
        {},
        epoch=epoch,
        loss=loss,
        num_samples=num_samples,
        architecture=architecture,
        metadata={"value": extra},
    )
    _, metadata = decode_weights(encoded)
    assert metadata["epoch"] == epoch
    assert metadata["loss"] == loss
    assert metadata["num_samples"] == num_samples
    assert metadata["architecture"] == architecture
    assert metadata["extra"] == {"value": json_like(extra)}
    assert metadata["format_version"] == FORMAT_VERSION


def json_like(value):
    """What comes back from metadata: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [json_like(v) for v in value]
    if isinstance(value, dict):
        return {k: json_like(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"x": object()}, TypeError),
        ({1: "key not str"}, TypeError),
        ({"x": 2**64}, ValueError),
        ({"x": {"nested": set()}}, TypeError),
    ],
)
def test_metadata_that_is_not_json_like_is_refused(bad, error):
    with pytest.raises(error):
        serialize_weights({}, metadata=bad)


def test_fixed_metadata_fields_are_type_checked():
    with pytest.raises(TypeError, match="epoch"):
        serialize_weights({}, epoch="3")
    with pytest.raises(TypeError, match="architecture"):
        serialize_weights({}, architecture=3)
    with pytest.raises(ValueError, match="num_samples"):
        serialize_weights({}, num_samples=-1)


def test_bad_inputs_to_serialize_are_refused_clearly():
    with pytest.raises(ValueError, match="wire_dtype"):
        serialize_weights({}, wire_dtype="int8")
    with pytest.raises(TypeError, match="'x'"):
        serialize_weights({"x": [1.0, 2.0]})
    with pytest.raises(TypeError, match="complex"):
        serialize_weights({"x": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match="names must be str"):
        serialize_weights({3: np.zeros(2)})
    with pytest.raises(ValueError, match="1 to 4096 bytes"):
        serialize_weights({"": np.zeros(2)})


def test_defaults_follow_the_original_app():
    weights = {"w": np.linspace(-3, 3, 1001, dtype=np.float32), "n": np.array(5, np.int64)}
    on_wire = msgpack.unpackb(serialize_weights(weights))["tensors"]
    assert on_wire["w"]["wire"] == "float16" and on_wire["w"]["dtype"] == "float32"
    assert on_wire["n"]["wire"] == "int64"
    # the original positional switch: False means full precision
    lossless = msgpack.unpackb(serialize_weights(weights, False))["tensors"]
    assert lossless["w"]["wire"] == "float32"
    assert msgpack.unpackb(serialize_weights(weights, True))["tensors"]["w"]["wire"] == "float16"


def test_float64_rules():
    doubles = {"d": np.array([1 / 3, 1e300, -2.5e-10], dtype=np.float64)}
    lossless = deserialize_weights(serialize_weights(doubles, wire_dtype="float32"))["d"]
    assert_same_bits(lossless, doubles["d"])
    halved = deserialize_weights(serialize_weights(doubles))["d"]
    assert halved.dtype == np.float64
    assert_same_bits(halved, float16_reference(doubles["d"]))
    on_wire = msgpack.unpackb(serialize_weights(doubles, wire_dtype="bfloat16"))["tensors"]["d"]
    assert (on_wire["dtype"], on_wire["wire"]) == ("float64", "bfloat16")


def test_message_layout_as_an_independent_msgpack_reader_sees_it():
    weights = {
        "a": np.arange(7, dtype=np.float32),
        "b.with.dots": np.ones((2, 3), dtype=np.int32),
        "é": np.zeros((), dtype=np.bool_),
    }
    encoded = bytes(serialize_weights(weights, epoch=4, loss=0.25, num_samples=9))
    top = msgpack.unpackb(encoded)
    assert list(top) == ["format", "version", "kind", "metadata", "tensors"]
    assert top["format"] == _relayclient.FORMAT_NAME and top["version"] == 1
    assert top["metadata"]["epoch"] == 4 and top["metadata"]["loss"] == 0.25
    assert list(top["tensors"]) == list(weights)
    for name, entry in top["tensors"].items():
        assert list(entry) == ["dtype", "wire", "shape", "pad", "data"]
        assert entry["shape"] == list(weights[name].shape)
        # the data bytes start at an aligned offset from the message start
        key = encoded.index(b"\xa4data", encoded.index(msgpack.packb(name))) + 5
        header_size = {0xC4: 2, 0xC5: 3, 0xC6: 5}[encoded[key]]
        offset = key + header_size
        assert offset % _relayclient.DATA_ALIGNMENT == 0
        assert encoded[offset : offset + len(entry["data"])] == entry["data"]
    assert top["tensors"]["b.with.dots"]["data"] == weights["b.with.dots"].tobytes()


def test_zero_dimensional_and_empty_tensors():
    weights = {
        "scalar": np.array(3.5, dtype=np.float32),
        "int_scalar": np.array(-7, dtype=np.int64),
        "empty": np.zeros((0,), dtype=np.float32),
        "empty_2d": np.zeros((3, 0, 2), dtype=np.int16),
    }
    decoded = deserialize_weights(serialize_weights(weights))
    assert decoded["scalar"].shape == () and decoded["scalar"] == 3.5
    assert decoded["int_scalar"].shape == () and decoded["int_scalar"] == -7
    assert decoded["empty"].shape == (0,) and decoded["empty"].dtype == np.float32
    assert decoded["empty_2d"].shape == (3, 0, 2) and decoded["empty_2d"].dtype == np.int16


def test_non_contiguous_and_big_endian_input():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    weights = {
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "negative": base[::-1],
        "big_endian": np.arange(5, dtype=">i4"),
    }
    decoded = deserialize_weights(serialize_weights(weights, wire_dtype="float32"))
    for name, original in weights.items():
        np.testing.assert_array_equal(decoded[name], original)
        assert decoded[name].flags.c_contiguous
    assert decoded["big_endian"].dtype == np.dtype("<i4")


def memory_owner(array: np.ndarray):
    """The object at the end of an array's chain of bases: who owns its memory."""
    owner = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner.obj if isinstance(owner, memoryview) else owner


def test_decoded_tensors_share_one_block_and_views_of_writable_input():
    weights = {f"t{i}": np.full(100 + i, i, dtype=np.float32) for i in range(5)}
    weights["count"] = np.array(12, dtype=np.int64)
    # float16 on the wire: every float tensor is converted into the same block
    decoded = deserialize_weights(serialize_weights(weights))
    owners = {id(memory_owner(decoded[f"t{i}"])) for i in range(5)}
    assert len(owners) == 1
    assert isinstance(memory_owner(decoded["t0"]), _relayclient.Block)
    # lossless from a writable buffer: tensors are views into that buffer, kept alive
    buffer = bytearray(serialize_weights(weights, wire_dtype="float32"))
    views = deserialize_weights(buffer)
    assert all(np.shares_memory(views[name], np.frombuffer(buffer, np.uint8)) for name in views)
    views["t3"][0] = 42.0
    assert deserialize_weights(buffer)["t3"][0] == 42.0
    # from immutable bytes the same tensors are writable copies
    copies = deserialize_weights(bytes(buffer))
    assert all(a.flags.writeable for a in copies.values())
    del buffer
    assert views["t4"][1] == 4.0  # the array keeps the buffer alive


def test_memoryview_slices_and_misaligned_buffers_decode():
    weights = {"w": np.arange(33, dtype=np.float64), "i": np.arange(5, dtype=np.int32)}
    encoded = bytes(serialize_weights(weights, wire_dtype="float32"))
    for shift in range(1, 8):
        shifted = bytearray(b"\0" * shift + encoded)
        decoded = deserialize_weights(memoryview(shifted)[shift:])
        np.testing.assert_array_equal(decoded["w"], weights["w"])
        np.testing.assert_array_equal(decoded["i"], weights["i"])


def test_serialize_releases_nothing_early():
    # The result stays valid after the inputs are gone.
    weights = {"w": np.random.default_rng(1).standard_normal(1000).astype(np.float32)}
    expected = float16_reference(weights["w"])
    encoded = serialize_weights(weights)
    del weights
    np.testing.assert_array_equal(deserialize_weights(encoded)["w"], expected)


# ---- torch ------------------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is optional; these tests need it")


def test_torch_in_torch_out(torch):
    weights = {
        "conv.weight": torch.randn(8, 4, 3, 3),
        "bn.running_mean": torch.randn(8),
        "bn.num_batches_tracked": torch.tensor(17),
        "half": torch.randn(5).half(),
        "brain": torch.randn(6).bfloat16(),
        "flags": torch.tensor([True, False]),
        "bytes": torch.arange(4, dtype=torch.uint8),
        "int8": torch.arange(-3, 3, dtype=torch.int8),
        "grad": torch.randn(3, requires_grad=True),
    }
    decoded, metadata = decode_weights(serialize_weights(weights, epoch=2))
    assert metadata["kind"] == "torch" and metadata["epoch"] == 2
    for name, original in weights.items():
        got = decoded[name]
        assert isinstance(got, torch.Tensor), name
        assert got.dtype == original.dtype and got.shape == original.shape, name
        if original.dtype == torch.float32:
            expected = original.detach().half().float()
        else:
            expected = original.detach()
        assert torch.equal(got, expected), name


def test_torch_unsigned_wide_integers(torch):
    # torch has few kernels for uint16/32/64, so they are compared through numpy
    weights = {
        dtype: torch.from_numpy(np.array([0, 1, np.iinfo(dtype).max], dtype=dtype))
        for dtype in ("uint16", "uint32", "uint64")
    }
    decoded = deserialize_weights(serialize_weights(weights))
    for name, original in weights.items():
        assert decoded[name].dtype == original.dtype
        np.testing.assert_array_equal(decoded[name].numpy(), original.numpy())


def test_torch_bfloat16_wire_and_lossless(torch):
    weights = {"w": torch.randn(257)}
    bf = deserialize_weights(serialize_weights(weights, wire_dtype="bfloat16"))["w"]
    assert bf.dtype == torch.float32
    assert torch.equal(bf, weights["w"].bfloat16().float())
    exact = deserialize_weights(serialize_weights(weights, wire_dtype="float32"))["w"]
    assert torch.equal(exact, weights["w"])


def test_torch_non_contiguous_and_zero_dim(torch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    weights = {"t": base.t(), "s": base[:, ::3], "neg": -base, "zero": torch.tensor(2.5)}
    decoded = deserialize_weights(serialize_weights(weights, wire_dtype="float32"))
    for name, original in weights.items():
        assert torch.equal(decoded[name], original), name
    assert decoded["zero"].shape == ()


def test_kind_can_be_overridden(torch):
    from_numpy = serialize_weights({"a": np.arange(3, dtype=np.float32)})
    as_torch = deserialize_weights(from_numpy, as_torch=True)["a"]
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32
    from_torch = serialize_weights({"b": torch.ones(2).bfloat16(), "c": torch.ones(2)})
    as_numpy = deserialize_weights(from_torch, as_torch=False)
    assert isinstance(as_numpy["c"], np.ndarray)
    assert as_numpy["b"].dtype == np.float32  # numpy has no bfloat16
    np.testing.assert_array_equal(as_numpy["b"], np.ones(2, np.float32))


def test_a_receiver_without_torch_gets_numpy(torch, monkeypatch):
    encoded = serialize_weights({"w": torch.ones(3), "b": torch.ones(2).bfloat16()})
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    decoded = deserialize_weights(encoded)
    assert isinstance(decoded["w"], np.ndarray) and decoded["w"].dtype == np.float32
    assert decoded["b"].dtype == np.float32
    with pytest.raises(ImportError, match="needs torch"):
        deserialize_weights(encoded, as_torch=True)


def test_cuda_tensors_come_back_on_the_cpu(torch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    weights = {"w": torch.randn(10, device="cuda")}
    decoded = deserialize_weights(serialize_weights(weights, wire_dtype="float32"))
    assert decoded["w"].device.type == "cpu"
    assert torch.equal(decoded["w"], weights["w"].cpu())


# ---- the original app's model -------------------------------------------------------------


def unet_layout():
    return json.loads(UNET_LAYOUT.read_text())


def test_full_unet_round_trip():
    layout = unet_layout()
    rng = np.random.default_rng(2024)
    weights = {}
    for entry in layout["layout"]:
        dtype = np.dtype(entry["dtype"])
        if dtype.kind == "f":
            weights[entry["name"]] = rng.standard_normal(entry["shape"], dtype=np.float32) * 0.1
        else:
            weights[entry["name"]] = np.array(rng.integers(0, 10**6), dtype=dtype)
    assert len(weights) == layout["tensors"]
    assert sum(math.prod(w.shape) for w in weights.values()) == layout["parameters_plus_buffers"]
    encoded = serialize_weights(weights, epoch=12, architecture="unet_deep_dice_v2")
    float_bytes = sum(w.nbytes for w in weights.values() if w.dtype == np.float32)
    assert len(encoded) < float_bytes / 2 + 64 * 1024  # float16 on the wire plus small overhead
    decoded, metadata = decode_weights(encoded)
    assert metadata["architecture"] == "unet_deep_dice_v2"
    assert list(decoded) == list(weights)
    for name, original in weights.items():
        got = decoded[name]
        assert got.shape == original.shape and got.dtype == original.dtype, name
        if original.dtype == np.float32:
            np.testing.assert_allclose(got, original, rtol=2**-11, atol=2**-24)
            assert_same_bits(got, float16_reference(original))
        else:
            assert_same_bits(got, original)


def test_fuzz_seed_corpus_is_small_and_valid():
    seeds = sorted((Path(__file__).parents[1] / "vectors/fuzz/fuzz_decode").glob("*.msgpack"))
    assert len(seeds) >= 3, "regenerate with: python csrc/fuzz/make_seeds.py"
    for seed in seeds:
        data = seed.read_bytes()
        assert len(data) <= 4096, seed.name
        if msgpack.unpackb(data)["version"] == 1:
            decode_weights(data)  # raises if a seed no longer matches the format
        else:  # a delta: the structure is checked before the (missing) reference is asked for
            with pytest.raises(ValueError, match="no reference was given"):
                decode_weights(data)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
@pytest.mark.skipif(
    os.environ.get("SANITIZED_BUILD") == "1",
    reason="ASan's quarantine keeps freed memory resident, so RSS says nothing about leaks here "
    "(the fuzz harness runs LeakSanitizer over the C core instead)",
)
def test_repeated_round_trips_and_errors_do_not_leak():
    weights = {"w": np.ones(2_000_000, dtype=np.float32), "n": np.array(1, np.int64)}
    truncated = bytes(serialize_weights(weights))[:-1]

    def cycle():
        deserialize_weights(serialize_weights(weights))
        deserialize_weights(bytearray(serialize_weights(weights, wire_dtype="float32")))
        with pytest.raises(ValueError):
            deserialize_weights(truncated)

    for _ in range(5):  # warm up allocator caches
        cycle()
    before = resident_bytes()
    for _ in range(40):  # a leaked block would be 4-8 MB per cycle: >= 160 MB in total
        cycle()
    assert resident_bytes() - before < 40 * 2**20


def test_encoded_size_is_the_serialized_length_and_checks_the_same():
    """encoded_size: len(serialize_weights(...)) without converting a value, for numpy and
    torch state dicts with metadata, and the same errors for what serialize_weights refuses."""
    from segmentation_suite.network.codec import encoded_size

    rng = np.random.default_rng(4)
    weights = {
        "w": rng.standard_normal((31, 7)).astype(np.float32),
        "d": rng.standard_normal(9),
        "n": np.array(5, np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }
    fields = {"epoch": 3, "loss": 0.25, "num_samples": 64, "metadata": {"holds": "ab" * 8}}
    assert encoded_size(weights, **fields) == len(serialize_weights(weights, **fields))
    assert encoded_size(weights) == len(serialize_weights(weights))
    for bad, error in (
        ({"c": np.ones(2, np.complex64)}, TypeError),
        ({1: weights["w"]}, TypeError),
    ):
        with pytest.raises(error):
            serialize_weights(bad)
        with pytest.raises(error):
            encoded_size(bad)
    with pytest.raises(ValueError, match="num_samples"):
        encoded_size(weights, num_samples=-1)
