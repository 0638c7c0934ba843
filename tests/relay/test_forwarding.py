"""Forwarding as in PROTOCOL.md §1: any other message type goes to every other member with
sender_id/sender_name added and its other top-level fields kept; binary goes byte for byte to
every other member; nothing is echoed to the sender or forwarded from outside a room.

"Did not receive" is checked by ordering, not by waiting: a later message from the same or a
causally later sender must be the next thing a connection sees."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import pytest
from websockets.frames import Opcode

from helpers.relay_process import SLOWDOWN
from helpers.sansio_client import BlockingClient
from helpers.ws_client import (
    close_all,
    member,
    recv_binary,
    recv_json,
    recv_type,
    room_of,
    send_json,
)

pytestmark = pytest.mark.asyncio


async def test_other_types_are_forwarded_with_sender_and_extra_fields(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    payload = {"user_id": "alice", "epoch": 3, "loss": 0.25, "nested": {"a": [1, 2, None]}}
    await send_json(alice.ws, "weights_push", payload, timestamp=1712345678901, extra="kept")
    for other in (bob, carol):
        message = await recv_json(other.ws)
        assert message == {
            "type": "weights_push",
            "payload": payload,
            "timestamp": 1712345678901,
            "extra": "kept",
            "sender_id": "alice",
            "sender_name": "Alice",
        }
    await close_all([alice, bob, carol])


async def test_sender_fields_cannot_be_forged(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    await alice.ws.send(
        json.dumps(
            {"type": "chat", "payload": {}, "sender_id": "mallory", "sender_name": "Mallory"}
        )
    )
    message = await recv_type(bob.ws, "chat")
    assert (message["sender_id"], message["sender_name"]) == ("alice", "Alice")
    await close_all([alice, bob])


async def test_forwarded_text_is_not_echoed_to_the_sender(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    await send_json(alice.ws, "chat", {"n": 1})
    await recv_type(bob.ws, "chat")
    # Bob answers only after he got Alice's message, so an echo would reach Alice first.
    await send_json(bob.ws, "chat", {"n": 2})
    message = await recv_type(alice.ws, "chat")
    assert (message["payload"], message["sender_id"]) == ({"n": 2}, "bob")
    await close_all([alice, bob])


async def test_text_from_outside_a_room_is_dropped(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    outsider = await member(server, "eve")
    await send_json(outsider.ws, "chat", {"from": "outside"})
    await outsider.ws.send(b"outside bytes")
    # The outsider's messages were read before this one arrived on a later connection event;
    # to be sure they were processed, the outsider itself asks for something afterwards.
    await send_json(outsider.ws, "join_room", {"room_code": "ZZZZZZ", "user_id": "eve"})
    await recv_type(outsider.ws, "error")
    await send_json(alice.ws, "chat", {"from": "alice"})
    assert (await recv_type(bob.ws, "chat"))["payload"] == {"from": "alice"}
    await close_all([alice, bob, outsider])


async def test_binary_is_forwarded_verbatim_to_all_others_not_the_sender(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    blobs = [b"\x00", bytes(range(256)) * 4, os.urandom(100_000), b"not SSBF"]
    for blob in blobs:
        await alice.ws.send(blob)
    for other in (bob, carol):
        for blob in blobs:
            assert await recv_binary(other.ws) == blob
    await bob.ws.send(b"from bob")
    assert await recv_binary(alice.ws) == b"from bob"  # not one of her own
    await close_all([alice, bob, carol])


async def test_empty_binary_message_is_forwarded(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    await alice.ws.send(b"")
    await alice.ws.send(b"after")
    assert await recv_binary(bob.ws) == b""
    assert await recv_binary(bob.ws) == b"after"
    await close_all([alice, bob])


@pytest.mark.parametrize("blob", [b"S", b"SS", b"SSB", b"SSBx-not-magic"])
async def test_binary_that_only_resembles_the_magic_is_forwarded_as_v1(relay, blob):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    await alice.ws.send(blob)
    await alice.ws.send(b"after")
    assert await recv_binary(bob.ws) == blob
    assert await recv_binary(bob.ws) == b"after"
    await close_all([alice, bob])


async def test_text_and_binary_keep_their_order(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    await send_json(alice.ws, "weights_push", {"epoch": 1})
    await alice.ws.send(b"weights-1")
    await send_json(alice.ws, "training_data", {"chunk_index": 0})
    await alice.ws.send(b"image")
    await alice.ws.send(b"mask")
    assert (await recv_json(bob.ws))["type"] == "weights_push"
    assert await recv_binary(bob.ws) == b"weights-1"
    assert (await recv_json(bob.ws))["type"] == "training_data"
    assert await recv_binary(bob.ws) == b"image"
    assert await recv_binary(bob.ws) == b"mask"
    await close_all([alice, bob])


async def test_fragmented_binary_arrives_whole(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    parts = [os.urandom(n) for n in (1, 70_000, 3, 500_000)]
    await alice.ws.send(parts)  # one message in four WebSocket frames
    assert await recv_binary(bob.ws) == b"".join(parts)
    await close_all([alice, bob])


async def send_and_check_big(relay_server, size: int) -> None:
    alice, bob, carol = await room_of(relay_server, "alice", "bob", "carol")
    blob = bytearray(os.urandom(size))
    blob[:4] = b"v1!!"  # not the frame-header magic: a plain v1 payload
    digest = hashlib.sha256(blob).hexdigest()

    async def receive(who):
        data = await recv_binary(who.ws, timeout=60)
        return len(data), hashlib.sha256(data).hexdigest()

    sent = asyncio.create_task(alice.ws.send(bytes(blob)))
    results = await asyncio.gather(receive(bob), receive(carol))
    await sent
    assert results == [(size, digest), (size, digest)]
    await close_all([alice, bob, carol])


@pytest.mark.slow
async def test_16_mib_binary_message_arrives_intact_at_two_receivers(relay):
    await send_and_check_big(relay(), 16 * 1024 * 1024)


@pytest.mark.slow
async def test_64_mib_binary_message_arrives_intact_at_two_receivers(relay):
    # 64 MiB is exactly the default --max-message-size: the largest message allowed.
    await send_and_check_big(relay(), 64 * 1024 * 1024)


async def test_room_path_is_informational(relay):
    server = relay()
    alice = await member(server, "alice", path="/room/ANYTHING")
    code = (await alice.create())["room_code"]
    bob = await member(server, "bob", path="/room/" + ("ZZZZZZ" if code != "ZZZZZZ" else "YYYYYY"))
    assert (await bob.join(code))["users"] == [alice.entry, bob.entry]
    await close_all([alice, bob])


async def test_large_message_is_forwarded_before_it_is_complete(relay):
    server = relay()
    alice, _ = await room_of(server, "alice", "bob")
    bob_raw = await asyncio.to_thread(BlockingClient, server.port)
    await asyncio.to_thread(
        bob_raw.send_json,
        "join_room",
        {"room_code": alice.room_code, "user_id": "carol", "display_name": "C"},
    )
    assert (await asyncio.to_thread(bob_raw.recv_json))["type"] == "room_joined"
    await recv_type(alice.ws, "user_joined")
    first, second = os.urandom(1024 * 1024), os.urandom(1024 * 1024)
    rest_may_go = asyncio.Event()

    async def fragments():
        yield first
        await rest_may_go.wait()
        yield second

    sending = asyncio.create_task(alice.ws.send(fragments()))

    # The relay may gather up to 64 KiB before publishing a fragment (send_queue.h), so
    # Carol must get all but at most that much of the first megabyte while the sender still
    # holds back the second.
    gather_limit = 64 * 1024

    def read_first_part() -> bytes:
        got = b""
        try:
            while True:
                frame = bob_raw.next_frame(timeout=1.0 * SLOWDOWN)
                assert frame is not None and frame.opcode in (Opcode.BINARY, Opcode.CONT)
                assert not frame.fin, "the relay ended the message before the sender did"
                got += frame.data
        except TimeoutError:
            return got

    early = await asyncio.to_thread(read_first_part)
    assert len(early) >= len(first) - gather_limit, f"only {len(early)} bytes forwarded early"
    assert first.startswith(early)
    rest_may_go.set()
    await asyncio.wait_for(sending, 10 * SLOWDOWN)

    def read_rest() -> bytes:
        got = b""
        while True:
            frame = bob_raw.next_frame()
            assert frame is not None and frame.opcode == Opcode.CONT
            got += frame.data
            if frame.fin:
                return got

    assert early + await asyncio.to_thread(read_rest) == first + second
    bob_raw.close()
    await alice.close()


async def test_sender_gone_mid_message_ends_the_receivers_copy_early(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    part = os.urandom(300_000)
    stop = asyncio.Event()

    async def fragments():
        yield part
        await stop.wait()  # never set: Alice drops before finishing
        yield b"never sent"

    sending = asyncio.create_task(alice.ws.send(fragments()))
    await asyncio.sleep(0.3 * SLOWDOWN)  # the first fragment reaches the relay
    alice.ws.transport.abort()
    sending.cancel()
    for other in (bob, carol):
        truncated = await recv_binary(other.ws)
        assert len(truncated) <= len(part) and part.startswith(truncated)
        left = await recv_type(other.ws, "user_left")
        assert left["payload"]["user_id"] == "alice"
    # The room carries on.
    await bob.ws.send(b"next")
    assert await recv_binary(carol.ws) == b"next"
    await close_all([bob, carol])


async def test_concurrent_senders_never_mix_their_messages(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    size, count = 2 * 1024 * 1024, 5
    sent = {
        sender.user_id: [bytes([n]) + os.urandom(size - 1) for n in range(count)]
        for sender in (alice, bob)
    }

    async def send_all(sender):
        for message in sent[sender.user_id]:
            await sender.ws.send(message)

    async def receive_all(receiver, expected):
        return [await recv_binary(receiver.ws, timeout=30) for _ in range(expected)]

    _, _, at_carol, at_alice, at_bob = await asyncio.gather(
        send_all(alice),
        send_all(bob),
        receive_all(carol, 2 * count),
        receive_all(alice, count),
        receive_all(bob, count),
    )
    assert (at_alice, at_bob) == (sent["bob"], sent["alice"])
    # Each message arrives whole, and each sender's messages in the order sent.
    from_alice = [m for m in at_carol if m in sent["alice"]]
    from_bob = [m for m in at_carol if m in sent["bob"]]
    assert (from_alice, from_bob) == (sent["alice"], sent["bob"])
    await close_all([alice, bob, carol])


async def test_relay_messages_do_not_cut_into_a_streaming_message(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    parts = [os.urandom(256 * 1024) for _ in range(12)]
    half_sent = asyncio.Event()

    async def slow_fragments():
        for index, part in enumerate(parts):
            yield part
            if index == 5:
                half_sent.set()
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(alice.ws.send(slow_fragments()))
    await half_sent.wait()
    # While Carol is in the middle of Alice's message: a join notice and Bob's messages.
    dave = await member(server, "dave")
    await dave.join(alice.room_code)
    await send_json(bob.ws, "chat", {"during": True})
    await bob.ws.send(b"bob's bytes")
    await asyncio.wait_for(sending, 30)

    texts, binaries = [], []
    while len(texts) < 2 or len(binaries) < 2:
        message = await asyncio.wait_for(carol.ws.recv(), 10)  # a protocol error would raise
        (texts if isinstance(message, str) else binaries).append(message)
    assert sorted(json.loads(t)["type"] for t in texts) == ["chat", "user_joined"]
    assert sorted(binaries, key=len) == [b"bob's bytes", b"".join(parts)]
    # The others have unread messages queued; drop them rather than wait on closing handshakes.
    for other in (alice, bob, dave):
        other.ws.transport.abort()
    await carol.close()
