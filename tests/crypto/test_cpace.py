"""CPace through the Python binding: the draft's ristretto255 + SHA-512 vectors
(draft-irtf-cfrg-cpace-21, appendix B.3, in tests/vectors/cpace_ristretto255.json), and the
CPaceSession object: agreement, the words of a mismatch, and malformed messages refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segmentation_suite.network import _relayclient as rc

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "cpace_ristretto255.json").read_text()
)


def vec(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])


def test_vector_file_names_its_source() -> None:
    assert "draft-irtf-cfrg-cpace-21" in VECTORS["source"]
    assert "B.3" in VECTORS["source"]


def test_generator_matches_the_draft() -> None:
    generator_hash, g = rc._cpace_generator(vec("PRS"), vec("CI"), vec("sid"))
    assert generator_hash.hex() == VECTORS["generator_hash"]
    assert g.hex() == VECTORS["g"]


def test_shares_shared_point_and_isk_match_the_draft() -> None:
    _, g = rc._cpace_generator(vec("PRS"), vec("CI"), vec("sid"))
    ya_share = rc._cpace_scalar_mult_vfy(vec("ya"), g)
    yb_share = rc._cpace_scalar_mult_vfy(vec("yb"), g)
    assert ya_share.hex() == VECTORS["Ya"]
    assert yb_share.hex() == VECTORS["Yb"]
    k = rc._cpace_scalar_mult_vfy(vec("ya"), yb_share)
    assert k.hex() == VECTORS["K"]
    assert rc._cpace_scalar_mult_vfy(vec("yb"), ya_share) == k
    isk = rc._cpace_isk(vec("sid"), k, ya_share, vec("ADa"), yb_share, vec("ADb"))
    assert isk.hex() == VECTORS["ISK_IR"]


def test_scalar_mult_vfy_cases_of_the_draft() -> None:
    valid = VECTORS["scalar_mult_valid"]
    out = rc._cpace_scalar_mult_vfy(bytes.fromhex(valid["s"]), bytes.fromhex(valid["X"]))
    assert out.hex() == valid["result"]
    invalid = VECTORS["scalar_mult_invalid"]
    for point in (invalid["Y_i1"], invalid["Y_i2"]):
        with pytest.raises(ValueError, match="not a valid ristretto255|identity"):
            rc._cpace_scalar_mult_vfy(bytes.fromhex(invalid["s"]), bytes.fromhex(point))


def pair(member_secret: bytes, host_secret: bytes, room: str = "K7QX2M"):
    member = rc.CPaceSession("initiator", member_secret, room, "alice", "host", b"member")
    host = rc.CPaceSession("responder", host_secret, "K7QX2M", "alice", "host", b"host")
    return member, host


def test_same_secret_agrees_on_keys() -> None:
    member, host = pair(b"4HRT", b"4HRT")
    confirm = member.receive(host.receive(member.start()))
    assert member.state == "confirmed"
    assert host.state == "await_confirm"
    assert host.receive(confirm) is None
    assert host.state == "confirmed"
    assert member.derive_key("wrap") == host.derive_key("wrap")
    assert member.derive_key("wrap") != member.derive_key("verify")
    assert len(member.derive_key("wrap")) == 32


def test_two_runs_give_different_keys() -> None:
    keys = set()
    for _ in range(2):
        member, host = pair(b"4HRT", b"4HRT")
        host.receive(member.receive(host.receive(member.start())))
        keys.add(member.derive_key("wrap"))
    assert len(keys) == 2


def test_wrong_secret_is_refused_in_words() -> None:
    member, host = pair(b"4HRT", b"4HRX")
    share_b = host.receive(member.start())
    with pytest.raises(rc.CPaceMismatch, match="the code's secret part does not match"):
        member.receive(share_b)
    assert member.state == "failed"
    with pytest.raises(ValueError, match="confirm"):
        member.derive_key("wrap")


def test_other_room_code_does_not_agree() -> None:
    member, host = pair(b"4HRT", b"4HRT", room="ABCDEF")
    with pytest.raises(rc.CPaceMismatch):
        member.receive(host.receive(member.start()))


def test_host_refuses_a_forged_confirmation() -> None:
    member, host = pair(b"4HRT", b"4HRT")
    host.receive(member.start())
    with pytest.raises(rc.CPaceMismatch):
        host.receive(bytes([1, 3]) + bytes(64))
    assert host.state == "failed"


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda m: m[:-1], "length"),  # cut inside the associated data
        (lambda m: m + b"\0", "length"),  # trailing byte
        (lambda m: m[:20], "truncated"),  # cut inside the share
        (lambda m: b"\x02" + m[1:], "version"),
        (lambda m: m[:1] + b"\x09" + m[2:], "type"),
        (lambda m: m[:18] + bytes(32) + m[50:], "identity"),  # the identity element
        (lambda m: m[:18] + b"\xff" * 32 + m[50:], "valid ristretto255"),  # not an encoding
        (lambda m: b"", "shorter"),
    ],
)
def test_host_refuses_malformed_shares(mangle, words) -> None:
    member, host = pair(b"4HRT", b"4HRT")
    with pytest.raises(ValueError, match=words):
        host.receive(mangle(member.start()))
    assert host.state == "failed"


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="role"):
        rc.CPaceSession("both", b"4HRT", "K7QX2M", "a", "b")
    with pytest.raises(ValueError, match="secret part"):
        rc.CPaceSession("initiator", b"", "K7QX2M", "a", "b")
    with pytest.raises(ValueError, match="user ids"):
        rc.CPaceSession("initiator", b"4HRT", "K7QX2M", "", "b")
    with pytest.raises(ValueError, match="32 bytes"):
        rc._cpace_scalar_mult_vfy(bytes(31), bytes(32))


def test_a_session_without_init_refuses_to_run() -> None:
    bare = rc.CPaceSession.__new__(rc.CPaceSession)  # no secret, no ids
    with pytest.raises(ValueError, match="not initialised"):
        bare.start()
    with pytest.raises(ValueError, match="not initialised"):
        bare.receive(b"\x01\x03" + bytes(64))
