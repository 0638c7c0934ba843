"""The private-room session layer without sockets: host and members exchange the control
messages (as the relay would deliver them, with `sender_id`), and the results are checked:
keys agree, wrong secrets are refused in words, 3 failures close the room, a departed member
cannot read what follows, and global models only count when the host signed them."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation_suite.network import _relayclient as rc
from segmentation_suite.network.private_code import parse_room_code
from segmentation_suite.network.private_room import (
    CLOSED,
    MISMATCH,
    PrivateRoomError,
    PrivateRoomHost,
    PrivateRoomMember,
)

CODE = parse_room_code("K7QX2M-4HRT")
WEIGHTS, GLOBAL = rc.FRAME_KIND_WEIGHTS, rc.FRAME_KIND_GLOBAL_MODEL


def deliver(outgoing, sender: str, parties: dict) -> None:
    """Delivers each message to the parties it is directed to, like the relay, recursively."""
    queue = [(message, sender) for message in outgoing]
    while queue:
        out, origin = queue.pop(0)
        for name in out.to:
            message = dict(out.message, sender_id=origin)
            queue.extend((reply, name) for reply in parties[name].handle(message))


def join(host: PrivateRoomHost, member: PrivateRoomMember, parties: dict) -> None:
    parties[member.user_id] = member
    deliver([member.start()], member.user_id, parties)


@pytest.fixture
def room():
    alerts: list[str] = []
    host = PrivateRoomHost(CODE, "host", on_alert=alerts.append)
    return host, {"host": host}, alerts


def payload(seed: int = 0) -> bytes:
    return np.random.default_rng(seed).standard_normal(50_000).astype(np.float32).tobytes()


def test_members_with_the_full_code_get_the_key_and_exchange_transfers(room) -> None:
    host, parties, alerts = room
    alice = PrivateRoomMember(CODE, "alice", "host")
    join(host, alice, parties)
    assert alice.ready and alice.error is None
    assert host.members == ["alice"]
    assert alice.verification == host.verification["alice"]
    assert len(alice.verification) == 7  # "123 456"
    data = payload(1)
    sealed = alice.seal_transfer(data, 7, WEIGHTS)
    assert data[:256] not in bytes(sealed)
    assert bytes(host.open_transfer("alice", 7, WEIGHTS, sealed)) == data
    model = payload(2)
    sealed = host.seal_transfer(model, 8, GLOBAL)
    assert bytes(alice.open_transfer("host", 8, GLOBAL, sealed)) == model
    assert alerts == []


def test_wrong_secret_is_refused_in_words_on_both_sides(room) -> None:
    host, parties, _ = room
    mallory = PrivateRoomMember(parse_room_code("K7QX2M-4HRX"), "mallory", "host")
    join(host, mallory, parties)
    assert mallory.error == MISMATCH
    assert not mallory.ready
    assert host.members == [] and host.failed_attempts == 1
    with pytest.raises(PrivateRoomError, match="no group key"):
        mallory.open_transfer("host", 1, GLOBAL, host.seal_transfer(payload(), 1, GLOBAL))


def test_three_failures_close_the_room_until_reopened(room) -> None:
    host, parties, alerts = room
    for attempt in range(3):
        join(
            host, PrivateRoomMember(parse_room_code("K7QX2M-ZZZZ"), f"m{attempt}", "host"), parties
        )
    assert host.closed and len(alerts) == 1 and "reopen" in alerts[0]
    honest = PrivateRoomMember(CODE, "alice", "host")
    join(host, honest, parties)
    assert honest.error == CLOSED and not honest.ready
    host.reopen()
    join(host, honest, parties)
    assert honest.ready and honest.error is None


def test_parallel_guesses_count_against_the_limit(room) -> None:
    host, parties, _ = room
    guessers = [
        PrivateRoomMember(parse_room_code(f"K7QX2M-ZZZ{c}"), f"g{c}", "host") for c in "ABCD"
    ]
    replies = [host.handle(dict(g.start().message, sender_id=g.user_id)) for g in guessers]
    kinds = [reply[0].message["type"] for reply in replies]
    assert kinds == ["pake_reply", "pake_reply", "pake_reply", "pake_refused"]


def test_a_member_who_left_cannot_read_what_follows(room) -> None:
    host, parties, _ = room
    alice, bob = PrivateRoomMember(CODE, "alice", "host"), PrivateRoomMember(CODE, "bob", "host")
    join(host, alice, parties)
    join(host, bob, parties)
    assert alice.epoch == bob.epoch == 0
    old_bob_sealed = host.seal_transfer(payload(3), 20, GLOBAL)
    deliver(host.member_left("bob"), "host", parties)
    assert host.epoch == 1 and alice.epoch == 1 and bob.epoch == 0
    sealed = host.seal_transfer(payload(4), 21, GLOBAL)
    with pytest.raises(PrivateRoomError, match="epoch 1, not the current 0"):
        bob.open_transfer("host", 21, GLOBAL, bytearray(sealed))
    assert bytes(alice.open_transfer("host", 21, GLOBAL, sealed)) == payload(4)
    with pytest.raises(PrivateRoomError, match="epoch 0, not the current 1"):
        alice.open_transfer("host", 20, GLOBAL, old_bob_sealed)


def test_tampered_replayed_and_forged_transfers_are_refused(room) -> None:
    host, parties, _ = room
    alice, bob = PrivateRoomMember(CODE, "alice", "host"), PrivateRoomMember(CODE, "bob", "host")
    join(host, alice, parties)
    join(host, bob, parties)
    sealed = host.seal_transfer(payload(5), 30, GLOBAL)
    flipped = bytearray(sealed)
    flipped[1000] ^= 4
    with pytest.raises(PrivateRoomError, match="failed authentication"):
        alice.open_transfer("host", 30, GLOBAL, flipped)
    assert bytes(alice.open_transfer("host", 30, GLOBAL, bytearray(sealed))) == payload(5)
    with pytest.raises(PrivateRoomError, match="replayed"):
        alice.open_transfer("host", 30, GLOBAL, bytearray(sealed))
    # bob holds the group key but not the host's signing key: his "global model" is refused
    forged = bob._transfers.seal(payload(6), 31, GLOBAL, rc.sign_keypair()[1])
    with pytest.raises(PrivateRoomError, match="not the host"):
        alice.open_transfer("bob", 31, GLOBAL, bytearray(forged))
    # ... and so is one he seals as if from the host (say, a relay relabels it): the AEAD
    # passes, as bob has the group key, but the signature does not verify
    impostor = type(bob._transfers)(bob._transfers.room, "host", bob._transfers.group)
    forged = impostor.seal(payload(6), 31, GLOBAL, rc.sign_keypair()[1])
    with pytest.raises(PrivateRoomError, match="not signed by the room's host"):
        alice.open_transfer("host", 31, GLOBAL, forged)
    assert not any(forged[64 : 64 + 200_000])  # opened in place (from byte 64), then wiped
    with pytest.raises(PrivateRoomError, match="only the host"):
        bob.seal_transfer(payload(6), 32, GLOBAL)
    with pytest.raises(PrivateRoomError, match="plaintext in a private room"):
        alice.open_transfer("bob", 33, WEIGHTS, bytearray(payload(7)))


def test_malformed_control_messages(room) -> None:
    host, _, _ = room
    replies = host.handle({"type": "pake_init", "sender_id": "x", "payload": {"cpace": "%%%"}})
    assert replies[0].message["type"] == "pake_failed"
    assert "base64" in replies[0].message["payload"]["reason"]
    replies = host.handle({"type": "pake_init", "sender_id": "y", "payload": {"cpace": "AQE="}})
    assert replies[0].message["type"] == "pake_failed"
    with pytest.raises(PrivateRoomError):
        host.handle({"type": "pake_init", "payload": {}})
    alice = PrivateRoomMember(CODE, "alice", "host")
    alice.start()
    # messages claiming another sender than the host are ignored
    assert alice.handle({"type": "pake_failed", "sender_id": "eve", "payload": {}}) == []
    assert alice.error is None


def test_the_reused_send_buffer_is_never_overwritten_while_held() -> None:
    host = PrivateRoomHost(CODE, "host")
    first = host.seal_transfer(payload(8), 50, GLOBAL)
    kept = bytes(first)
    second = host.seal_transfer(payload(9), 51, GLOBAL)  # `first` is still held
    assert bytes(first) == kept
    assert bytes(second) != kept


@pytest.mark.parametrize("piece", [1000, 4096 + 37, 10**9])
def test_global_model_opened_piece_by_piece_with_its_signature(room, piece) -> None:
    host, parties, _ = room
    alice = PrivateRoomMember(CODE, "alice", "host")
    join(host, alice, parties)
    model = payload(10)
    sealed = bytes(host.seal_transfer(model, 60, GLOBAL))
    opener = alice.transfer_opener("host", 60, GLOBAL, len(sealed))
    buffer = bytearray(len(sealed))
    for start in range(0, len(sealed), piece):  # pieces that cut through the signature too
        opener.feed_piece(buffer, sealed[start : start + piece])
    assert bytes(opener.finish(buffer)) == model
    forged = bytearray(host.seal_transfer(model, 61, GLOBAL))
    forged[-1] ^= 1  # the signature's last byte
    opener = alice.transfer_opener("host", 61, GLOBAL, len(forged))
    buffer = bytearray(len(forged))
    for start in range(0, len(forged), piece):
        opener.feed_piece(buffer, forged[start : start + piece])
    with pytest.raises(PrivateRoomError, match="not signed by the room's host"):
        opener.finish(buffer)
    assert not any(buffer[len(buffer) - 64 - len(model) : len(buffer) - 64])  # wiped


def test_resume_runs_the_exchange_again_and_gets_a_key_rotated_meanwhile(room) -> None:
    """Back after a drop (PrivateRoomMember.resume): the host answers a key holder even in a
    room closed to newcomers, a rotation that crosses the re-run exchange still unwraps, and
    with nothing rotated the same key is kept without an error."""
    host, parties, _ = room
    alice, bob = PrivateRoomMember(CODE, "alice", "host"), PrivateRoomMember(CODE, "bob", "host")
    join(host, alice, parties)
    join(host, bob, parties)
    # nothing rotated: the answer is the key alice holds, taken silently
    deliver([alice.resume()], "alice", parties)
    assert alice.ready and alice.error is None and alice.epoch == 0

    # the room closes to newcomers; a holder's re-run exchange is still answered
    for attempt in range(3):
        guess = PrivateRoomMember(
            parse_room_code(f"K7QX2M-ZZZ{'ABC'[attempt]}"), f"g{attempt}", "host"
        )
        join(host, guess, parties)
    assert host.closed
    # the exchange crosses a rotation: the host wraps epoch 1 under the wrap key it still holds
    # for alice while she already derived the new one (pake_reply taken, confirm not yet)
    init = alice.resume()
    (reply,) = host.handle(dict(init.message, sender_id="alice"))
    (confirm,) = alice.handle(dict(reply.message, sender_id="host"))
    rotation = host.member_left("bob")
    assert [out.to for out in rotation] == [["alice"]] and host.epoch == 1
    for out in rotation:
        alice.handle(dict(out.message, sender_id="host"))
    assert alice.epoch == 1
    deliver([confirm], "alice", parties)  # the host's answer: epoch 1 again, under the new key
    assert alice.epoch == 1 and alice.error is None
    sealed = host.seal_transfer(payload(3), 9, GLOBAL)
    assert bytes(alice.open_transfer("host", 9, GLOBAL, sealed)) == payload(3)
