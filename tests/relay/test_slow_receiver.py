"""A receiver that stops reading must not make the relay buffer without bound
(docs/protocol.md "Flow control"): the other members still receive everything, the relay's
memory stays under a fixed bound, and the stalled receiver is closed with 4008.

Memory bound, documented here: with the default --receiver-buffer of 16 MiB the relay may hold
about one buffer per receiver plus what it is reading from the sender, so its peak RSS (VmHWM)
must stay under 128 MiB while 1 GiB passes through it — a relay that buffered for the stalled
receiver would need 1 GiB. Under ASan the allocator keeps up to 256 MiB of freed memory in
quarantine (plus shadow memory), so the bound there is 640 MiB: still far below 1 GiB.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import pytest

from helpers.http_metrics import scrape
from helpers.relay_process import SANITIZED, SLOWDOWN
from helpers.sansio_client import BlockingClient
from helpers.vectors import CLOSE
from helpers.ws_client import close_all, recv, recv_type, room_of

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

MIB = 1024 * 1024
MESSAGE_SIZE = 16 * MIB
RSS_BOUND_KIB = (640 if SANITIZED else 128) * 1024


def stalled_member(server, code: str) -> BlockingClient:
    """Joins `code` on a socket with a small receive buffer, then never reads again."""
    client = BlockingClient(server.port, receive_buffer=16 * 1024)
    client.send_json("join_room", {"room_code": code, "user_id": "carol", "display_name": "Carol"})
    assert client.recv_json()["type"] == "room_joined"
    return client


def messages(count: int, size: int):
    """`count` distinct messages (one random block, each stamped with its index)."""
    block = bytearray(os.urandom(size))
    block[:4] = b"v1!!"  # not the frame-header magic
    for index in range(count):
        block[4:12] = index.to_bytes(8, "little")
        yield bytes(block)


async def transfer(server, alice, bob, count: int, size: int, lockstep: bool = False):
    """Alice sends `count` messages of `size` bytes to the room while Bob reads them.

    With `lockstep`, Alice sends the next message only when Bob has the previous one, so Bob is
    never behind by more than one message. Returns (bytes and digest sent, bytes and digest Bob
    got, the text messages Bob got on the way, the relay's peak RSS in KiB).
    """
    sent_digest = hashlib.sha256()
    received_digest = hashlib.sha256()
    received = {"bytes": 0, "messages": 0}
    texts: list[dict] = []
    delivered = asyncio.Event()
    peak_kib = 0

    async def send():
        for message in messages(count, size):
            sent_digest.update(message)
            delivered.clear()
            await alice.ws.send(message)
            if lockstep:
                await delivered.wait()

    async def receive():
        while received["messages"] < count:
            message = await recv(bob.ws, timeout=60 * SLOWDOWN)
            if isinstance(message, str):
                texts.append(json.loads(message))
                continue
            received_digest.update(message)
            received["bytes"] += len(message)
            received["messages"] += 1
            delivered.set()

    async def sample():
        nonlocal peak_kib
        while True:
            peak_kib = max(peak_kib, server.memory_kib("VmRSS"))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.wait_for(asyncio.gather(send(), receive()), 240 * SLOWDOWN)
    finally:
        sampler.cancel()
    peak_kib = max(peak_kib, server.memory_kib("VmHWM"))
    return (
        (count * size, sent_digest.hexdigest()),
        (received["bytes"], received_digest.hexdigest()),
        texts,
        peak_kib,
    )


async def wait_for_user_left(member, texts: list[dict], user_id: str) -> dict:
    """The user_left for `user_id`, either among texts already read or arriving later."""
    for message in texts:
        if message["type"] == "user_left" and message["payload"]["user_id"] == user_id:
            return message
    deadline = time.monotonic() + 30 * SLOWDOWN
    while time.monotonic() < deadline:
        message = await recv(member.ws, timeout=deadline - time.monotonic())
        if isinstance(message, str):
            parsed = json.loads(message)
            if parsed["type"] == "user_left" and parsed["payload"]["user_id"] == user_id:
                return parsed
    raise AssertionError(f"no user_left for {user_id}")


async def test_one_gib_past_a_stalled_receiver(relay):
    server = relay("--slow-receiver-timeout", "3")
    alice, bob = await room_of(server, "alice", "bob")
    carol = await asyncio.to_thread(stalled_member, server, alice.room_code)
    for member in (alice, bob):
        await recv_type(member.ws, "user_joined")

    started = time.monotonic()
    sent, got, texts, peak_kib = await transfer(server, alice, bob, 64, MESSAGE_SIZE)
    elapsed = time.monotonic() - started
    print(f"1 GiB to the room in {elapsed:.1f} s; relay peak RSS {peak_kib / 1024:.0f} MiB")

    assert got == sent, "Bob did not receive every byte intact"
    assert peak_kib < RSS_BOUND_KIB, f"relay peak RSS {peak_kib} KiB over {RSS_BOUND_KIB} KiB"

    # Carol was closed as a slow receiver and left the room.
    left = await wait_for_user_left(bob, texts, "carol")
    assert left["payload"]["users"] == [alice.entry, bob.entry]
    await wait_for_user_left(alice, [], "carol")
    samples = scrape(server)
    assert samples["relay_rejects_total{reason=slow_receiver}"] == 1
    assert samples["relay_senders_throttled_total"] >= 1  # the default policy is throttle
    assert any("4008" in line for line in server.stderr), "no log line for the 4008 close"

    # What Carol can still read ends with the relay's Close 4008 (or just the end of the TCP
    # stream, if the relay gave up waiting for her to make room for the Close frame).
    code, frames = await asyncio.to_thread(carol.read_until_closed, 60 * SLOWDOWN)
    carol.close()
    print(f"the stalled receiver read {frames} frames, then close code {code}")
    assert code in (CLOSE["slow_receiver"], None), code
    await close_all([alice, bob])


async def test_drop_policy_closes_a_stalled_receiver_without_slowing_the_sender(relay):
    server = relay("--flow-control", "drop")
    alice, bob = await room_of(server, "alice", "bob")
    carol = await asyncio.to_thread(stalled_member, server, alice.room_code)
    for member in (alice, bob):
        await recv_type(member.ws, "user_joined")

    # Lockstep keeps Bob within one 4 MiB message, under his buffer, so only Carol is dropped.
    sent, got, texts, peak_kib = await transfer(server, alice, bob, 32, 4 * MIB, lockstep=True)
    assert got == sent
    assert peak_kib < RSS_BOUND_KIB
    await wait_for_user_left(bob, texts, "carol")
    samples = scrape(server)
    assert samples["relay_rejects_total{reason=slow_receiver}"] == 1
    assert samples["relay_senders_throttled_total"] == 0
    code, _ = await asyncio.to_thread(carol.read_until_closed, 60 * SLOWDOWN)
    carol.close()
    assert code in (CLOSE["slow_receiver"], None), code
    await close_all([alice, bob])
