"""float16/bfloat16 conversion, checked bit for bit against numpy (and, for bfloat16, against
a reference written here and torch), through both the SIMD kernels and the scalar fallback.

Conversions are observed through the public codec: float32 -> wire bytes are read back with
msgpack-python, and wire bytes written with msgpack-python are decoded by ours."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from codec_messages import message, tensor_entry

from segmentation_suite.network import _relayclient
from segmentation_suite.network.codec import decode_weights, serialize_weights

# numpy warns when its own reference casts overflow or meet NaN; those are the point here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)

ALL_HALF_BITS = np.arange(65536, dtype=np.uint32).astype(np.uint16)


@pytest.fixture(params=["simd", "scalar"])
def kernels(request):
    """Runs the test once with the best kernels and once with the scalar fallback."""
    _relayclient._set_simd(request.param == "simd")
    if request.param == "simd" and _relayclient._simd_path() == "scalar":
        _relayclient._set_simd(True)
        pytest.skip("this CPU has no SIMD conversion path (no F16C/AVX2 or NEON)")
    yield request.param
    _relayclient._set_simd(True)


def test_switch_changes_the_active_path():
    _relayclient._set_simd(False)
    try:
        assert _relayclient._simd_path() == "scalar"
    finally:
        _relayclient._set_simd(True)
    assert _relayclient._simd_path() in ("f16c+avx2", "neon", "scalar")


def wire_bytes(array: np.ndarray, wire_dtype: str) -> bytes:
    encoded = serialize_weights({"x": array}, wire_dtype=wire_dtype)
    return msgpack.unpackb(encoded)["tensors"]["x"]["data"]


def decode_wire(bits: np.ndarray, dtype: str, wire: str) -> np.ndarray:
    raw = message({"x": tensor_entry(dtype, [bits.size], bits.tobytes(), wire=wire)})
    return decode_weights(raw)[0]["x"]


def edge_float32_bits() -> np.ndarray:
    """float32 values where float16 rounding is easy to get wrong."""
    values = []
    for exponent in range(100, 146):  # from below half subnormals to past the half range
        base = exponent << 23
        for low in (0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFFFF, 0x7FF000):
            values.append(base | low)
    values += [
        0x00000000,
        0x00000001,  # float32 subnormals
        0x007FFFFF,
        0x33000000,  # 2**-25: tie between 0 and the smallest half subnormal
        0x33000001,
        0x33C00000,  # 1.5 * 2**-24: tie that rounds up to even
        0x387FC000,  # just under the smallest half normal
        0x387FE000,
        0x38800000,
        0x477FE000,  # 65504, the largest half
        0x477FEFFF,
        0x477FF000,  # 65520: tie, rounds to inf
        0x477FF001,
        0x7F7FFFFF,  # float32 max
        0x7F800000,  # inf
        0x7F800001,  # signalling NaN whose payload vanishes in float16
        0x7F802000,
        0x7FA00000,
        0x7FC00000,  # quiet NaN
        0x7FFFFFFF,
        0x7FC01234,
    ]
    bits = np.array(values, dtype=np.uint32)
    return np.concatenate([bits, bits | 0x80000000])


def test_every_float16_value_decodes_to_float32_like_numpy(kernels):
    decoded = decode_wire(ALL_HALF_BITS, "float32", "float16")
    expected = ALL_HALF_BITS.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(decoded.view(np.uint32), expected.view(np.uint32))


def test_every_float16_value_decodes_to_float64_like_numpy(kernels):
    decoded = decode_wire(ALL_HALF_BITS, "float64", "float16")
    expected = ALL_HALF_BITS.view(np.float16).astype(np.float64)
    np.testing.assert_array_equal(decoded.view(np.uint64), expected.view(np.uint64))


def test_every_float16_value_survives_float32_encoding(kernels):
    as_float32 = ALL_HALF_BITS.view(np.float16).astype(np.float32)
    assert wire_bytes(as_float32, "float16") == ALL_HALF_BITS.tobytes()


def test_edge_float32_values_encode_to_float16_like_numpy(kernels):
    bits = edge_float32_bits()
    expected = bits.view(np.float32).astype(np.float16).view(np.uint16)
    got = np.frombuffer(wire_bytes(bits.view(np.float32), "float16"), dtype=np.uint16)
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, [
        (hex(bits[i]), hex(got[i]), hex(expected[i])) for i in mismatches[:10]
    ]


def test_random_float32_bits_encode_to_float16_like_numpy(kernels):
    bits = np.random.default_rng(7).integers(0, 2**32, size=1 << 18, dtype=np.uint32)
    expected = bits.view(np.float32).astype(np.float16).view(np.uint16)
    got = np.frombuffer(wire_bytes(bits.view(np.float32), "float16"), dtype=np.uint16)
    np.testing.assert_array_equal(got, expected)


def test_large_tensors_use_the_streaming_stores_correctly(kernels):
    # Outputs of 1 MiB or more take the non-temporal store path of the x86 kernels.
    halves = np.tile(ALL_HALF_BITS, 9)[:-3]  # odd length: a scalar tail after the vectors
    decoded = decode_wire(halves, "float32", "float16")
    expected = halves.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(decoded.view(np.uint32), expected.view(np.uint32))
    floats = np.random.default_rng(3).standard_normal(600_001).astype(np.float32)
    got = np.frombuffer(wire_bytes(floats, "float16"), dtype=np.uint16)
    np.testing.assert_array_equal(got, floats.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("length", range(0, 41))
def test_every_tail_length_matches_numpy(kernels, length):
    bits = edge_float32_bits()[:length]
    got = np.frombuffer(wire_bytes(bits.view(np.float32), "float16"), dtype=np.uint16)
    np.testing.assert_array_equal(got, bits.view(np.float32).astype(np.float16).view(np.uint16))


def test_float64_encodes_to_float16_like_numpy(kernels):
    rng = np.random.default_rng(11)
    doubles = np.concatenate(
        [
            edge_float32_bits().view(np.float32).astype(np.float64),
            rng.standard_normal(10_000) * 10.0 ** rng.integers(-9, 6, 10_000),
            # values a hair away from float16 ties, where rounding twice would go wrong
            np.nextafter(np.float64(1 + 2**-11), 2.0) * np.array([1, -1, 2**-20, 2**15]),
            np.array(
                [0x7FF0000000000001, 0x7FF8000000000001, 0xFFF0000000004000], dtype=np.uint64
            ).view(np.float64),
        ]
    )
    got = np.frombuffer(wire_bytes(doubles, "float16"), dtype=np.uint16)
    np.testing.assert_array_equal(got, doubles.astype(np.float16).view(np.uint16))


def bfloat16_reference(bits: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16 with the NaN rule of docs/weights-format.md."""
    bits = bits.astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(is_nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)


def test_float32_encodes_to_bfloat16_by_round_to_nearest_even(kernels):
    rng = np.random.default_rng(5)
    bits = np.concatenate(
        [
            edge_float32_bits(),
            rng.integers(0, 2**32, size=1 << 16, dtype=np.uint32),
            np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x7F7FFFFF, 0x00008000], np.uint32),
        ]
    )
    got = np.frombuffer(wire_bytes(bits.view(np.float32), "bfloat16"), dtype=np.uint16)
    np.testing.assert_array_equal(got, bfloat16_reference(bits))


def test_bfloat16_agrees_with_torch_except_nan_payloads(kernels):
    torch = pytest.importorskip("torch", reason="torch is the independent bfloat16 oracle")
    bits = np.random.default_rng(9).integers(0, 2**32, size=1 << 16, dtype=np.uint32)
    bits = bits[(bits & 0x7FFFFFFF) <= 0x7F800000]  # torch's NaN encoding is its own
    floats = bits.view(np.float32)
    got = np.frombuffer(wire_bytes(floats, "bfloat16"), dtype=np.uint16)
    expected = torch.from_numpy(floats.copy()).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(got, expected.view(np.uint16))


def test_every_bfloat16_value_decodes_exactly(kernels):
    decoded = decode_wire(ALL_HALF_BITS, "float32", "bfloat16")
    np.testing.assert_array_equal(decoded.view(np.uint32), ALL_HALF_BITS.astype(np.uint32) << 16)
    decoded64 = decode_wire(ALL_HALF_BITS, "float64", "bfloat16")
    finite = (ALL_HALF_BITS & 0x7FFF) <= 0x7F80
    np.testing.assert_array_equal(
        decoded64[finite], (ALL_HALF_BITS.astype(np.uint32) << 16).view(np.float32)[finite]
    )
    assert np.isnan(decoded64[~finite]).all()


def test_float64_encodes_to_correctly_rounded_bfloat16():
    # Oracle: the nearest finite bfloat16 by search, ties to the even bit pattern.
    positive = np.arange(0, 0x7F80, dtype=np.uint32).astype(np.uint16)
    grid = (positive.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    rng = np.random.default_rng(13)
    midpoints = (grid[:-1] + grid[1:]) / 2
    doubles = np.concatenate(
        [
            midpoints[rng.integers(0, midpoints.size, 3000)],
            np.nextafter(midpoints[rng.integers(0, midpoints.size, 3000)], 0.0),
            np.nextafter(midpoints[rng.integers(0, midpoints.size, 3000)], np.inf),
            np.abs(rng.standard_normal(3000)) * 10.0 ** rng.integers(-40, 38, 3000),
        ]
    )
    upper = np.clip(np.searchsorted(grid, doubles), 1, grid.size - 1)
    lower = upper - 1
    distance_low = doubles - grid[lower]
    distance_high = grid[upper] - doubles
    pick_upper = (distance_high < distance_low) | (
        (distance_high == distance_low) & (positive[upper] % 2 == 0)
    )
    expected = np.where(pick_upper, positive[upper], positive[lower])
    got = np.frombuffer(wire_bytes(doubles, "bfloat16"), dtype=np.uint16)
    np.testing.assert_array_equal(got, expected)
