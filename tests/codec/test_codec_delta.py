"""Delta messages (format version 2): q8-delta and topk against a reference model.

The expected bytes and values come from numpy re-implementations of the rules in
docs/weights-format.md written here, not from the C code: q8 levels and scales, topk selection
and varint positions, and the rebuilt tensors bit for bit. Also: accuracy (relative L2 error of
the delta <= 1% per tensor for q8), integers exact, the reference id (missing, different or
reordered references are refused), the SIMD and scalar kernels agreeing bit for bit, error
feedback, and the wire size of the U-Net update (issue 14, must-show 1 and 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

from segmentation_suite.network import _relayclient
from segmentation_suite.network.codec import (
    DELTA_FORMAT_VERSION,
    ErrorFeedback,
    decode_weights,
    deserialize_weights,
    reference_id,
    serialize_weights,
)

UNET_LAYOUT = Path(__file__).resolve().parents[1] / "vectors" / "unet_deep_dice_v2_layout.json"
BLOCK = 256


@pytest.fixture(params=["simd", "scalar"])
def kernel_path(request):
    _relayclient._set_simd(request.param == "simd")
    yield request.param
    _relayclient._set_simd(True)


def model_pair(seed: int = 0, step: float = 1e-3) -> tuple[dict, dict]:
    """A reference model and an update of it: odd sizes (partial last q8 block), a 0-d and an
    empty tensor, float64, a BatchNorm counter and a float16 tensor."""
    rng = np.random.default_rng(seed)
    reference = {
        "conv.weight": rng.standard_normal((37, 5, 3, 3)).astype(np.float32) * 0.1,
        "conv.bias": rng.standard_normal(37).astype(np.float32),
        "scalar": np.array(0.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "wide": rng.standard_normal(1000),
        "bn.num_batches_tracked": np.array(100, np.int64),
        "half": rng.standard_normal(10).astype(np.float16),
    }
    update = {}
    for name, value in reference.items():
        if value.dtype.kind == "f" and value.dtype != np.float16:
            update[name] = (value + step * rng.standard_normal(value.shape)).astype(value.dtype)
        elif value.dtype == np.int64:
            update[name] = value + 7
        else:
            update[name] = (value + 1).astype(value.dtype)
    return reference, update


def relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ---- independent reference implementations ------------------------------------------------


def q8_reference(update: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float16 scales, int8 levels, rebuilt tensor) by the rules of docs/weights-format.md."""
    delta = (update.astype(np.float32) - base.astype(np.float32)) if update.dtype == np.float32 \
        else (update - base).astype(np.float32)  # fmt: skip
    flat = delta.reshape(-1)
    scales, levels = [], []
    for start in range(0, flat.size, BLOCK):
        block = flat[start : start + BLOCK]
        biggest = np.float32(np.abs(block).max())
        if biggest == 0:
            scale = np.float16(0)
        else:
            wanted = np.float32(biggest / np.float32(127))
            scale = np.float16(wanted)
            if np.float32(scale) < wanted:
                scale = np.nextafter(scale, np.float16(np.inf))
            if scale == 0:
                scale = np.nextafter(np.float16(0), np.float16(1))
        inverse = np.float32(1) / np.float32(scale) if scale else np.float32(0)
        scales.append(scale)
        levels.append(np.clip(np.rint(block * inverse), -127, 127).astype(np.int8))
    scales = np.array(scales, np.float16)
    levels = np.concatenate(levels) if levels else np.zeros(0, np.int8)
    per_value = np.repeat(scales.astype(np.float32), BLOCK)[: flat.size]
    step = (levels.astype(np.float32) * per_value).reshape(update.shape)
    rebuilt = base + step.astype(base.dtype)
    return scales, levels, rebuilt


def read_varints(data: bytes) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
    assert shift == 0, "unterminated varint"
    return values


def topk_reference(
    update: np.ndarray, base: np.ndarray, keep: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """(positions, scale, levels): the `keep` largest |delta|, ties taken in index order."""
    delta = (update - base).astype(np.float32).reshape(-1)
    magnitude = np.abs(delta)
    order = np.lexsort((np.arange(delta.size), -magnitude))  # by size, then position
    positions = np.sort(order[:keep])
    scale = np.float32(magnitude.max() / np.float32(127)) if delta.size else np.float32(0)
    inverse = np.float32(1) / scale if scale else np.float32(0)
    levels = np.clip(np.rint(delta[positions] * inverse), -127, 127).astype(np.int8)
    return positions, float(scale), levels


def tensors_of(data) -> dict:
    return msgpack.unpackb(bytes(data), raw=False)["tensors"]


# ---- q8-delta -------------------------------------------------------------------------------


def test_q8_bytes_and_values_match_an_independent_implementation(kernel_path):
    reference, update = model_pair()
    data = serialize_weights(update, compression="q8-delta", reference=reference)
    message = msgpack.unpackb(bytes(data), raw=False)
    assert message["version"] == DELTA_FORMAT_VERSION == 2
    assert len(message["reference"]) == 16
    rebuilt = deserialize_weights(data, reference=reference)
    for name in ("conv.weight", "conv.bias", "scalar", "empty", "wide"):
        entry = message["tensors"][name]
        scales, levels, want = q8_reference(update[name], reference[name])
        assert entry["wire"] == "q8" and entry["blocks"] == len(scales)
        assert entry["data"] == scales.tobytes() + levels.tobytes(), name
        assert rebuilt[name].dtype == update[name].dtype
        np.testing.assert_array_equal(rebuilt[name], want, err_msg=name)


def test_q8_error_is_at_most_one_percent_of_the_delta_and_integers_are_exact():
    reference, update = model_pair(step=3e-4)
    rebuilt = deserialize_weights(
        serialize_weights(update, compression="q8-delta", reference=reference),
        reference=reference,
    )
    for name in ("conv.weight", "conv.bias", "wide"):
        error = relative_l2(rebuilt[name] - reference[name], update[name] - reference[name])
        assert error <= 0.01, (name, error)
    assert rebuilt["bn.num_batches_tracked"] == 107  # exact, not a delta
    np.testing.assert_array_equal(rebuilt["half"], update["half"])  # float16 travels whole


def test_q8_simd_and_scalar_paths_give_identical_bytes_and_values():
    rng = np.random.default_rng(5)
    # whole blocks, a partial block, ties at .5 levels, zeros, subnormal-sized deltas
    base = rng.standard_normal(256 * 40 + 77).astype(np.float32)
    update = base + rng.standard_normal(base.size).astype(np.float32) * 1e-3
    update[:256] = base[:256]  # an all-zero block
    update[256:512] = base[256:512] + np.float32(1e-30)
    update[512:768] = base[512:768] + np.arange(256, dtype=np.float32) * np.float32(0.5)
    weights, ref = {"w": update}, {"w": base}
    results = []
    for simd in (True, False):
        _relayclient._set_simd(simd)
        try:
            data = bytes(serialize_weights(weights, compression="q8-delta", reference=ref))
            results.append((data, deserialize_weights(data, reference=ref)["w"].tobytes()))
        finally:
            _relayclient._set_simd(True)
    assert results[0] == results[1]


def test_a_non_finite_delta_is_refused_when_encoding():
    base = np.zeros(600, np.float32)
    for bad in (np.nan, np.inf):
        update = base.copy()
        update[300] = bad
        with pytest.raises(ValueError, match="index 300"):
            serialize_weights({"w": update}, compression="q8-delta", reference={"w": base})
    huge = base.copy()
    huge[3] = 1e10  # more than 65504 * 127: no float16 scale
    with pytest.raises(ValueError, match="too large"):
        serialize_weights({"w": huge}, compression="q8-delta", reference={"w": base})


# ---- the reference id -----------------------------------------------------------------------


def test_missing_reference_is_refused():
    reference, update = model_pair()
    data = serialize_weights(update, compression="q8-delta", reference=reference)
    with pytest.raises(ValueError, match="delta against a reference model.*no reference"):
        deserialize_weights(data)
    partial = {k: v for k, v in reference.items() if k != "conv.bias"}
    with pytest.raises(ValueError, match="no tensor 'conv.bias'"):
        deserialize_weights(data, reference=partial)


@pytest.mark.parametrize("change", ["one_value", "last_bit", "shape", "dtype", "order"])
def test_a_different_reference_is_refused(change):
    reference, update = model_pair()
    data = serialize_weights(update, compression="q8-delta", reference=reference)
    other = {k: v.copy() for k, v in reference.items()}
    if change == "one_value":
        other["wide"][999] += 1.0
    elif change == "last_bit":
        other["conv.weight"].view(np.uint32).reshape(-1)[1234] ^= 1
    elif change == "shape":
        other["conv.bias"] = np.zeros(38, np.float32)
    elif change == "dtype":
        other["wide"] = other["wide"].astype(np.float32)
    else:  # the same tensors under swapped names
        other["conv.bias"], other["scalar"] = other["scalar"], other["conv.bias"]
    with pytest.raises(ValueError, match="reference"):
        deserialize_weights(data, reference=other)


def test_reference_id_names_the_model_and_a_whole_message_ignores_the_reference():
    reference, update = model_pair()
    data = serialize_weights(update, compression="q8-delta", reference=reference)
    _, meta = decode_weights(data, reference=reference)
    assert meta["reference_id"] == reference_id(reference)
    assert reference_id(update) != reference_id(reference)
    # a torch copy of the same values has the same id
    torch = pytest.importorskip("torch")
    as_torch = {k: torch.from_numpy(v.copy()) for k, v in reference.items()}
    assert reference_id(as_torch) == reference_id(reference)
    whole = serialize_weights(update, wire_dtype="float32")
    out, meta = decode_weights(whole, reference=reference)
    assert meta["format_version"] == 1 and meta["reference_id"] is None
    np.testing.assert_array_equal(out["wide"], update["wide"])


def test_reference_hash_simd_and_scalar_agree_on_every_length():
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, 5000, dtype=np.uint8)
    ids = {}
    for simd in (True, False):
        _relayclient._set_simd(simd)
        try:
            ids[simd] = [
                _relayclient._reference_id(
                    [("t", "float32", (n // 4,), data[: n // 4 * 4].view(np.float32))]
                )
                for n in range(0, 5000, 4 * 7)
            ]
        finally:
            _relayclient._set_simd(True)
    assert ids[True] == ids[False]
    assert len(set(ids[True])) == len(ids[True])  # every length hashes differently


# ---- topk -----------------------------------------------------------------------------------


def as_columns(weights: dict) -> dict:
    """Tensors of at most one dimension as (n, 1) columns: topk sends those as q8."""
    return {name: v.reshape(-1, 1) if v.ndim <= 1 else v for name, v in weights.items()}


def test_topk_selection_positions_and_values_match_an_independent_implementation():
    reference, update = model_pair(seed=3)
    update["conv.bias"][:5] = reference["conv.bias"][:5] + 0.25  # ties at the top
    reference, update = as_columns(reference), as_columns(update)
    data = serialize_weights(update, compression="topk", reference=reference)
    entries = tensors_of(data)
    rebuilt = deserialize_weights(data, reference=reference)
    for name in ("conv.weight", "conv.bias", "scalar", "empty", "wide"):
        size = update[name].size
        keep = math.ceil(size * 0.01)
        positions, scale, levels = topk_reference(update[name], reference[name], keep)
        entry = entries[name]
        raw = entry["data"]
        assert entry["wire"] == "topk" and entry["kept"] == keep
        assert np.frombuffer(raw[:4], np.float32)[0] == np.float32(scale)
        np.testing.assert_array_equal(np.frombuffer(raw[4 : 4 + keep], np.int8), levels)
        gaps = read_varints(raw[4 + keep :])
        np.testing.assert_array_equal(np.cumsum(gaps, dtype=np.int64), positions)
        want = reference[name].copy().reshape(-1)
        want[positions] += (levels.astype(np.float32) * np.float32(scale)).astype(want.dtype)
        np.testing.assert_array_equal(rebuilt[name].reshape(-1), want, err_msg=name)


def test_topk_sends_tensors_of_one_dimension_or_none_as_q8():
    """Biases, normalization scales and running statistics act on whole channels: topk would
    keep one value of a 64-channel bias. They go as q8 (the same bytes as q8-delta's)."""
    reference, update = model_pair(seed=5)
    topk = tensors_of(serialize_weights(update, compression="topk", reference=reference))
    q8 = tensors_of(serialize_weights(update, compression="q8-delta", reference=reference))
    for name in ("conv.bias", "scalar", "wide"):
        assert topk[name]["wire"] == "q8" and "kept" not in topk[name], name
        assert topk[name]["data"] == q8[name]["data"], name
    assert topk["conv.weight"]["wire"] == "topk"
    assert topk["empty"]["wire"] == "topk"  # (0, 4): two dimensions
    assert topk["bn.num_batches_tracked"]["wire"] == "int64"  # integers stay exact


def transmitted_update_error(
    feedback: ErrorFeedback | None, compression: str, rounds: int
) -> float:
    """A member pushes global + its update each round, as a delta against that round's
    global (which moves on independently). Returns the relative L2 error of the sum of what
    arrived against the sum of the true updates."""
    rng = np.random.default_rng(4)
    shape = (200, 100)  # two dimensions: topk sends one-dimensional tensors as q8
    global_model = rng.standard_normal(shape).astype(np.float32)
    update = rng.standard_normal(shape).astype(np.float32) * 1e-3
    arrived = np.zeros_like(update)
    for _ in range(rounds):
        global_model = global_model + rng.standard_normal(shape).astype(np.float32) * 1e-2
        local = {"w": global_model + update}
        reference = {"w": global_model}
        if feedback is not None:
            data = feedback.encode(local, reference=reference)
        else:
            data = serialize_weights(local, compression=compression, reference=reference)
        arrived += deserialize_weights(data, reference=reference)["w"] - global_model
    return relative_l2(arrived, update * rounds)


@pytest.mark.parametrize("compression, rounds", [("topk", 300), ("q8-delta", 20)])
def test_error_feedback_carries_the_residual_into_the_next_message(compression, rounds):
    with_feedback = transmitted_update_error(ErrorFeedback(compression), compression, rounds)
    without = transmitted_update_error(None, compression, rounds)
    print(
        f"{compression}: error of the summed updates {with_feedback:.4f} with feedback, "
        f"{without:.4f} without"
    )
    assert with_feedback < without / 2


def test_error_feedback_reset_forgets_the_residual():
    feedback = ErrorFeedback("topk")
    base = {"w": np.zeros((10, 100), np.float32)}
    update = {"w": np.linspace(-1, 1, 1000, dtype=np.float32).reshape(10, 100)}
    feedback.encode(update, reference=base)
    again = deserialize_weights(feedback.encode(update, reference=base), reference=base)["w"]
    feedback.reset()
    fresh = deserialize_weights(feedback.encode(update, reference=base), reference=base)["w"]
    first = deserialize_weights(
        serialize_weights(update, compression="topk", reference=base), reference=base
    )["w"]
    np.testing.assert_array_equal(fresh, first)
    assert not np.array_equal(again, first)  # the residual changed the second message


# ---- the U-Net update on the wire (must-show 2) -------------------------------------------------


def unet_pair() -> tuple[dict, dict]:
    layout = json.loads(UNET_LAYOUT.read_text())["layout"]
    rng = np.random.default_rng(1)
    reference, update = {}, {}
    for entry in layout:
        if entry["dtype"] == "float32":
            base = rng.standard_normal(entry["shape"], dtype=np.float32) * 0.05
            reference[entry["name"]] = base
            update[entry["name"]] = (
                base + rng.standard_normal(entry["shape"], dtype=np.float32) * 1e-3
            )
        else:
            reference[entry["name"]] = np.array(10, dtype=entry["dtype"])
            update[entry["name"]] = np.array(12, dtype=entry["dtype"])
    return reference, update


def test_unet_update_wire_bytes_q8_at_most_052_and_topk_at_most_005_of_fp16():
    reference, update = unet_pair()
    fp16 = len(serialize_weights(update))
    q8 = len(serialize_weights(update, compression="q8-delta", reference=reference))
    topk = len(serialize_weights(update, compression="topk", reference=reference))
    print(
        f"U-Net update: fp16 {fp16} B, q8-delta {q8} B ({q8 / fp16:.3f}x), "
        f"topk {topk} B ({topk / fp16:.4f}x)"
    )
    assert q8 <= 0.52 * fp16
    assert topk <= 0.05 * fp16


@pytest.mark.parametrize(
    "distribution", ["gaussian", "mostly_zero", "all_equal", "few_levels", "one_outlier"]
)
def test_topk_selection_of_large_tensors_matches_the_independent_implementation(distribution):
    """Large tensors take the sampled-threshold path of the encoder; skewed and tied
    distributions make its estimate miss and fall back. Same selection either way."""
    rng = np.random.default_rng(11)
    size = 300_001
    base = rng.standard_normal(size).astype(np.float32)
    if distribution == "gaussian":
        delta = rng.standard_normal(size).astype(np.float32)
    elif distribution == "mostly_zero":
        delta = np.zeros(size, np.float32)
        delta[rng.choice(size, 1000, replace=False)] = rng.standard_normal(1000)
    elif distribution == "all_equal":
        delta = np.full(size, 0.25, np.float32)
    elif distribution == "few_levels":
        delta = rng.integers(-3, 4, size).astype(np.float32) * 0.5
    else:
        delta = rng.standard_normal(size).astype(np.float32) * 1e-3
        delta[1234] = 100.0
    update = base + delta
    for fraction in (0.01, 0.2):
        data = serialize_weights(
            {"w": update.reshape(-1, 1)},
            compression="topk",
            reference={"w": base.reshape(-1, 1)},
            topk_fraction=fraction,
        )
        raw = tensors_of(data)["w"]["data"]
        keep = math.ceil(size * fraction)
        positions, scale, levels = topk_reference(update, base, keep)
        np.testing.assert_array_equal(np.cumsum(read_varints(raw[4 + keep :])), positions)
        np.testing.assert_array_equal(np.frombuffer(raw[4 : 4 + keep], np.int8), levels)


@pytest.mark.parametrize("compression", ["q8-delta", "topk", None])
def test_float16_values_rebuild_the_same_bits_as_sending_the_result_again_as_float16(
    compression, kernel_path
):
    """decode_weights(float16_values=True) rounds in the decoding pass; the result must be
    what numpy's float16 rounding of the plain rebuilt tensors gives, float64 included, with
    integers and float16 tensors untouched (and a whole float32 message rounded too)."""
    reference, update = model_pair(seed=6, step=0.3)
    if compression is None:
        data = serialize_weights(update, wire_dtype="float32")
    else:
        data = serialize_weights(update, compression=compression, reference=reference)
    plain = deserialize_weights(data, reference=reference)
    rounded = deserialize_weights(data, reference=reference, float16_values=True)
    for name, value in plain.items():
        if value.dtype in (np.float32, np.float64):
            want = value.astype(np.float16).astype(value.dtype)
        else:
            want = value
        assert rounded[name].dtype == value.dtype, name
        np.testing.assert_array_equal(rounded[name], want, err_msg=name)
    whole_fp16 = serialize_weights(update)  # already float16 values: unchanged
    np.testing.assert_array_equal(
        deserialize_weights(whole_fp16, float16_values=True)["conv.weight"],
        deserialize_weights(whole_fp16)["conv.weight"],
    )


@pytest.mark.parametrize("compression", ["q8-delta", "topk"])
def test_error_feedback_residual_made_in_c_equals_compensated_minus_decoded(
    compression, kernel_path
):
    """ErrorFeedback.encode makes the residual with _subtract_rebuilt (no decoded copy of the
    model); it must be bit for bit what `compensated - decode_weights(message)` gives, for
    float32 tensors longer than one of its pieces (16384 values, partial last block) and
    float64 ones."""
    rng = np.random.default_rng(12)
    reference = {
        "big": rng.standard_normal((70, 301)).astype(np.float32),
        "conv": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "wide": rng.standard_normal((30, 7)),
        "bias": rng.standard_normal(19).astype(np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "count": np.array(4, np.int64),
    }
    feedback = ErrorFeedback(compression)
    expected = {name: np.zeros_like(v) for name, v in reference.items() if v.dtype.kind == "f"}
    for step in range(3):
        update = {
            name: (v + rng.standard_normal(v.shape) * 10.0 ** -(step + 1)).astype(v.dtype)
            if v.dtype.kind == "f"
            else v
            for name, v in reference.items()
        }
        data = feedback.encode(update, reference=reference)
        rebuilt = deserialize_weights(data, reference=reference)
        for name in expected:
            expected[name] = (expected[name] + update[name]) - rebuilt[name]
            np.testing.assert_array_equal(feedback._residual[name], expected[name], err_msg=name)
    assert feedback.residual_norm() > 0


def test_subtract_rebuilt_refuses_what_it_cannot_do():
    reference = {"w": np.zeros((4, 64), np.float32)}
    update = {"w": np.ones((4, 64), np.float32)}
    delta = serialize_weights(update, compression="q8-delta", reference=reference)
    buffers = {"w": ("float32", (4, 64), reference["w"])}
    with pytest.raises(ValueError, match="not a delta"):
        _relayclient._subtract_rebuilt(serialize_weights(update), buffers, {})
    with pytest.raises(ValueError, match="no residual"):
        _relayclient._subtract_rebuilt(delta, buffers, {})
    with pytest.raises(ValueError, match="does not match"):
        _relayclient._subtract_rebuilt(delta, buffers, {"w": np.zeros(10, np.float32)})
    read_only = np.zeros((4, 64), np.float32)
    read_only.flags.writeable = False
    with pytest.raises((BufferError, ValueError, TypeError)):
        _relayclient._subtract_rebuilt(delta, buffers, {"w": read_only})
    with pytest.raises(ValueError):
        _relayclient._subtract_rebuilt(bytes(delta)[:-3], buffers, {"w": np.zeros((4, 64))})
    residual = np.zeros((4, 64), np.float32)
    _relayclient._subtract_rebuilt(delta, buffers, {"w": residual})
    np.testing.assert_array_equal(residual, -deserialize_weights(delta, reference=reference)["w"])
