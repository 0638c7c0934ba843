"""A receiver that stops reading on one node of a cluster: its node's memory stays bounded,
it is closed with 4008 as on a single relay, the others receive everything, and its node stays
connected to NATS (never a slow-consumer disconnect) and keeps relaying.

Bound: a receiver's queue is closed past 4 × --receiver-buffer (8 MiB here) plus a text
message, and the node's hand-over queue from NATS holds at most 64 MiB, so no node's peak RSS
(VmHWM) may reach 128 MiB while 256 MiB crosses the cluster; a node that buffered for the
stalled receiver would need 256 MiB. Under ASan the allocator's quarantine and shadow memory
add to it: 640 MiB, still far below what an unbounded buffer would need plus that overhead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from helpers.http_metrics import scrape
from helpers.relay_process import SANITIZED, SLOWDOWN
from helpers.sansio_client import BlockingClient
from helpers.ws_client import close_all, member, recv, recv_type, send_json

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

MIB = 1024 * 1024
COUNT, SIZE = 64, 4 * MIB
RSS_BOUND_KIB = (640 if SANITIZED else 128) * 1024


def stalled_member(node, code: str) -> BlockingClient:
    """Joins `code` on a socket with a small receive buffer, then never reads again."""
    client = BlockingClient(node.port, receive_buffer=16 * 1024)
    client.send_json("join_room", {"room_code": code, "user_id": "carol", "display_name": "Carol"})
    assert client.recv_json()["type"] == "room_joined"
    return client


async def next_binary(ws, texts: list) -> bytes:
    while True:
        message = await recv(ws, timeout=60 * SLOWDOWN)
        if isinstance(message, bytes):
            return message
        texts.append(message)


async def test_a_stalled_receiver_on_one_node_bounds_every_node(cluster):
    nodes = cluster(3, "--receiver-buffer", "8M", "--slow-receiver-timeout", "3")
    alice = await member(nodes[0], "alice")
    bob = await member(nodes[1], "bob")
    dave = await member(nodes[2], "dave")
    code = (await alice.create())["room_code"]
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    await dave.join(code)
    for earlier in (alice, bob):
        await recv_type(earlier.ws, "user_joined")
    carol = await asyncio.to_thread(stalled_member, nodes[2], code)
    for earlier in (alice, bob, dave):
        await recv_type(earlier.ws, "user_joined")

    sent, got = hashlib.sha256(), {"bob": hashlib.sha256(), "dave": hashlib.sha256()}
    texts = {"bob": [], "dave": []}
    block = bytearray(os.urandom(SIZE))
    block[:4] = b"v1!!"  # not the frame-header magic
    for index in range(COUNT):
        block[4:12] = index.to_bytes(8, "little")
        message = bytes(block)
        sent.update(message)
        await alice.ws.send(message)
        # Lockstep with the readers that do read: only Carol falls behind.
        for name, reader in (("bob", bob), ("dave", dave)):
            got[name].update(await next_binary(reader.ws, texts[name]))

    assert got["bob"].hexdigest() == sent.hexdigest()
    assert got["dave"].hexdigest() == sent.hexdigest()
    peaks = [node.memory_kib("VmHWM") for node in nodes]
    print(f"peak RSS of nodes A, B, C: {[p // 1024 for p in peaks]} MiB")
    for node, peak in zip(nodes, peaks, strict=True):
        assert peak < RSS_BOUND_KIB, f"node {node.port} peak RSS {peak} KiB"

    # Carol was closed as a slow receiver (4008) and left the room on every node.
    texts["alice"] = []
    for name, reader in (("dave", dave), ("bob", bob), ("alice", alice)):
        seen = [m for m in texts[name] if '"user_left"' in m]
        left = seen[0] if seen else (await recv_type(reader.ws, "user_left", 30 * SLOWDOWN))
        assert "carol" in str(left)
    assert scrape(nodes[2])["relay_rejects_total{reason=slow_receiver}"] == 1
    carol.close()

    # Node C never lost NATS and still relays both ways.
    assert not any("cluster_disconnected" in line for line in nodes[2].log)
    await send_json(dave.ws, "still_here", {})
    for receiver in (alice, bob):
        assert (await recv_type(receiver.ws, "still_here"))["sender_id"] == "dave"
    await send_json(alice.ws, "and_back", {})
    assert (await recv_type(dave.ws, "and_back"))["sender_id"] == "alice"
    await close_all([alice, bob, dave])
