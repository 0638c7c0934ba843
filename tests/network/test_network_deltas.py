"""deltas.py without a network: who gets a delta and who the whole model, which global each
member holds, and that a member and the host agree on the global bit for bit."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from segmentation_suite.network.codec import decode_weights, reference_id, serialize_weights
from segmentation_suite.network.deltas import (
    GlobalModelLedger,
    MemberDeltas,
    round_as_float16_wire,
)


def state(seed: int, base: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    if base is None:
        return {"w": rng.standard_normal(600).astype(np.float32), "n": np.array(seed, np.int64)}
    step = rng.standard_normal(600).astype(np.float32) * 1e-2
    return {"w": base["w"] + step, "n": np.array(seed, np.int64)}


def versions(sends) -> dict[str, int]:
    """Format version (1 whole, 2 delta) of what each member is sent, read with msgpack."""
    return {m: msgpack.unpackb(bytes(data))["version"] for data, ms in sends for m in ms}


def publish_to(ledger, members_state: dict[str, MemberDeltas], weights, round_number):
    canonical, sends = ledger.publish(
        weights, list(members_state), metadata={"aggregation_round": round_number}
    )
    for data, recipients in sends:
        for member in recipients:
            members_state[member].receive_global(data)
    return canonical, sends


def test_first_global_is_whole_then_deltas_to_members_that_said_what_they_hold():
    ledger = GlobalModelLedger("auto")
    ann, bob = MemberDeltas("auto"), MemberDeltas(None)
    members = {"ann": ann, "bob": bob}
    canonical, sends = publish_to(ledger, members, state(1), 1)
    assert versions(sends) == {"ann": 1, "bob": 1}
    assert reference_id(ann.held) == reference_id(canonical) == reference_id(bob.held)
    # pushes: ann's is a delta naming what it holds; bob (compression=None) stays whole
    for name, member in members.items():
        data = member.encode_push(state(2, member.held), epoch=1)
        weights, metadata = decode_weights(data, reference=ledger.reference_for(data))
        ledger.note_push(name, metadata)
    assert ledger.holds("ann") == reference_id(canonical) and ledger.holds("bob") is None
    canonical, sends = publish_to(ledger, members, state(3, canonical), 2)
    assert versions(sends) == {"ann": 2, "bob": 1}
    np.testing.assert_array_equal(ann.held["w"], bob.held["w"])  # the same bits either way
    np.testing.assert_array_equal(ann.held["w"], canonical["w"])
    assert np.array_equal(canonical["w"], round_as_float16_wire(canonical)["w"])


def test_a_member_pushes_whole_until_the_host_says_it_accepts_deltas():
    member = MemberDeltas("q8-delta")
    member.receive_global(serialize_weights(state(1)))  # an original host: no accepts_deltas
    data = member.encode_push(state(2, member.held))
    assert decode_weights(data)[1]["reference_id"] is None
    assert "holds_global" in decode_weights(data)[1]["extra"]


def test_forgetting_what_a_member_holds_sends_it_the_whole_model_once():
    ledger = GlobalModelLedger("auto")
    ann = MemberDeltas("auto")
    canonical, _ = publish_to(ledger, {"ann": ann}, state(1), 1)
    data = ann.encode_push(state(2, ann.held))
    ledger.note_push("ann", decode_weights(data, reference=ledger.reference_for(data))[1])
    ledger.forget_held("ann")
    canonical, sends = publish_to(ledger, {"ann": ann}, state(3, canonical), 2)
    assert versions(sends) == {"ann": 1}
    _, sends = publish_to(ledger, {"ann": ann}, state(4, canonical), 3)
    assert versions(sends) == {"ann": 2}


def test_pushes_against_forgotten_or_unknown_globals_are_refused():
    ledger = GlobalModelLedger("auto")
    ann = MemberDeltas("auto")
    canonical, _ = publish_to(ledger, {"ann": ann}, state(1), 1)
    old_push = ann.encode_push(state(2, ann.held))
    for round_number in range(2, 7):  # five more globals: the first one is no longer kept
        canonical, _ = publish_to(ledger, {"ann": ann}, state(round_number, canonical), 2)
    with pytest.raises(ValueError, match="does not keep"):
        ledger.reference_for(old_push)
    ledger.note_push("bob", {"extra": {"holds_global": "not hex"}})
    ledger.note_push("bob", {"extra": {"holds_global": 7}})
    assert ledger.holds("bob") is None


def test_a_delta_against_a_global_the_member_does_not_hold_is_a_value_error():
    ledger = GlobalModelLedger("auto")
    ann, late = MemberDeltas("auto"), MemberDeltas("auto")
    canonical, _ = publish_to(ledger, {"ann": ann}, state(1), 1)
    data = ann.encode_push(state(2, ann.held))
    ledger.note_push("ann", decode_weights(data, reference=ledger.reference_for(data))[1])
    _, sends = ledger.publish(state(3, canonical), ["ann"])
    ((delta, _),) = sends
    with pytest.raises(ValueError, match="no reference was given"):
        late.receive_global(delta)


def test_compression_choices_are_checked():
    with pytest.raises(ValueError, match="compression"):
        MemberDeltas("zip")
    with pytest.raises(ValueError, match="compression"):
        GlobalModelLedger("q4")


def test_a_new_host_rebuilds_pushes_against_the_global_it_held_as_a_member():
    old_host = GlobalModelLedger("auto")
    ann, bob = MemberDeltas("auto"), MemberDeltas("auto")
    canonical, _ = publish_to(old_host, {"ann": ann, "bob": bob}, state(1), 1)
    # the host leaves; bob takes over with an empty ledger and ann pushes against global 1
    new_host = GlobalModelLedger("auto")
    push = ann.encode_push(state(2, ann.held))
    with pytest.raises(ValueError, match="does not keep"):
        new_host.reference_for(push)
    reference = new_host.reference_for(push, also_held=bob.held)
    weights, metadata = decode_weights(push, reference=reference)
    new_host.note_push("ann", metadata)
    assert new_host.holds("ann") == reference_id(canonical)
    _, sends = publish_to(new_host, {"ann": ann}, state(3, weights), 2)
    assert versions(sends) == {"ann": 2}  # and the chain of deltas goes on
    assert new_host.reference_for(push) is not None  # kept from then on


@pytest.mark.parametrize("compression", ["topk", "q8-delta"])
def test_the_host_carries_what_its_global_deltas_dropped_into_the_next_rounds(compression):
    # topk keeps 10% here: at 1% of 2000 values, 38 rounds cannot deliver every coordinate
    """Members train on from the global they rebuilt, so what a lossy global delta dropped is
    not in the next round's average: the host owes it. Over rounds, what a member holds must
    follow the exact averages (error feedback), not only their compressed parts; and the
    member and the host still hold the same global bit for bit."""
    rng = np.random.default_rng(8)
    shape = (40, 50)  # two dimensions: topk sends one-dimensional tensors as q8
    ledger = GlobalModelLedger(compression, topk_fraction=0.1)
    ann = MemberDeltas(compression, topk_fraction=0.1)
    start = {"w": rng.standard_normal(shape).astype(np.float32)}
    canonical, _ = publish_to(ledger, {"ann": ann}, start, 1)
    ledger.note_push("ann", {"extra": {"holds_global": reference_id(ann.held).hex()}})
    exact = canonical["w"].astype(np.float64)
    compressed_only = canonical["w"].copy()  # what a host without feedback would publish
    drift = rng.standard_normal(shape).astype(np.float32) * 1e-2  # training goes somewhere
    for round_number in range(2, 40):
        progress = drift + rng.standard_normal(shape).astype(np.float32) * 1e-3
        average = {"w": canonical["w"] + progress}  # trained on from what members hold
        exact += progress
        before = {"w": compressed_only}
        compressed_only = deserialize({"w": compressed_only + progress}, compression, before)
        canonical, sends = publish_to(ledger, {"ann": ann}, average, round_number)
        assert versions(sends) == {"ann": 2}
        np.testing.assert_array_equal(ann.held["w"], canonical["w"])
    followed = np.linalg.norm(ann.held["w"] - exact) / np.linalg.norm(exact - start["w"])
    dropped = np.linalg.norm(compressed_only - exact) / np.linalg.norm(exact - start["w"])
    print(f"{compression}: held vs exact {followed:.4f}, without feedback {dropped:.4f}")
    assert followed < dropped / 2


def deserialize(weights: dict, compression: str, reference: dict) -> np.ndarray:
    """What a member holds after a plain (feedback-free) delta of `weights`."""
    data = serialize_weights(
        weights, compression=compression, reference=reference, topk_fraction=0.1
    )
    return round_as_float16_wire(decode_weights(data, reference=reference)[0])["w"]


def test_the_host_residual_is_what_members_lack_and_a_new_chain_starts_owing_nothing():
    """held + the host's residual = the exact average it published (to float32 rounding)."""
    rng = np.random.default_rng(9)
    ledger = GlobalModelLedger("topk")
    ann = MemberDeltas("topk")
    first = {"w": rng.standard_normal((30, 30)).astype(np.float32)}
    canonical, _ = publish_to(ledger, {"ann": ann}, first, 1)
    assert ledger._feedback.residual_norm() == 0.0  # sent whole: nothing owed
    ledger.note_push("ann", {"extra": {"holds_global": reference_id(ann.held).hex()}})
    average = {"w": canonical["w"] + rng.standard_normal((30, 30)).astype(np.float32) * 0.1}
    canonical, _ = publish_to(ledger, {"ann": ann}, average, 2)
    residual = ledger._feedback._residual["w"]
    assert np.linalg.norm(residual) > 0.5 * np.linalg.norm(average["w"] - first["w"])
    np.testing.assert_allclose(ann.held["w"] + residual, average["w"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("compression", [None, "auto"])
def test_a_whole_global_is_the_float16_message_of_the_canonical_global(compression):
    """publish encodes the average once and decodes that: the message is byte for byte the
    float16 message of the canonical global (what every member decodes, exactly), and the
    canonical global is the average rounded to float16 values, float64 and integers kept."""
    rng = np.random.default_rng(21)
    average = {
        "w": rng.standard_normal((40, 30)).astype(np.float32) * 3,
        "d": rng.standard_normal(77),  # float64
        "h": rng.standard_normal(5).astype(np.float16),
        "n": np.array(12, np.int64),
    }
    ledger = GlobalModelLedger(compression)
    canonical, sends = ledger.publish(average, ["ann"], metadata={"aggregation_round": 1})
    ((data, recipients),) = sends
    assert recipients == ["ann"]
    for name, value in average.items():
        assert canonical[name].dtype == value.dtype
        expected = (
            value.astype(np.float16).astype(value.dtype) if value.dtype.itemsize >= 4 else value
        )
        np.testing.assert_array_equal(canonical[name], expected, err_msg=name)
    extra = {"aggregation_round": 1, "accepts_deltas": compression is not None}
    assert bytes(data) == bytes(serialize_weights(canonical, metadata=extra))
    assert ledger.latest is canonical


def test_without_compression_the_ledger_keeps_the_latest_global_by_no_id():
    """compression=None: nothing can name a global, so none is kept by id (and no id is
    computed); every member gets each round whole, and `latest` is the last canonical global."""
    ledger = GlobalModelLedger(None)
    first, _ = ledger.publish(state(1), ["ann"])
    ledger.note_push("ann", {"extra": {"holds_global": reference_id(first).hex()}})
    second, sends = ledger.publish(state(2, first), ["ann"])
    assert versions(sends) == {"ann": 1}
    assert ledger.latest is second and ledger.holds("ann") is None
    assert ledger._globals == {}
