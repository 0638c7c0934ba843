"""Relay nodes joined through NATS (docs/operations.md, "Running a cluster"): a room spread over
three relay processes behaves, for v1 clients using the `websockets` library, as one relay.

Every node is a real relay_server process with --nats, the backplane a real nats-server with
JetStream (tests/cluster/conftest.py). Waits are generous safety nets; the assertions are on
what arrives and how often.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

import pytest

from helpers.relay_process import SLOWDOWN
from helpers.ws_client import close_all, member, recv, recv_binary, recv_type, send_json

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

MIB = 1024 * 1024
# A node's directory entries live 8 s without refresh, checked every second: ~10 s in all.
NODE_LOSS_TIMEOUT = 30 * SLOWDOWN


async def spread_room(nodes):
    """alice on node A creates a room, bob joins on B and carol on C; every join is seen by the
    earlier members. Returns the three members."""
    alice = await member(nodes[0], "alice")
    bob = await member(nodes[1], "bob")
    carol = await member(nodes[2], "carol")
    code = (await alice.create())["room_code"]
    joined = await bob.join(code)
    assert joined["users"] == [alice.entry, bob.entry]
    assert joined["host_id"] == "alice"
    seen = (await recv_type(alice.ws, "user_joined"))["payload"]
    assert seen["user_id"] == "bob" and seen["users"] == [alice.entry, bob.entry]
    joined = await carol.join(code)
    assert joined["users"] == [alice.entry, bob.entry, carol.entry]
    assert joined["host_id"] == "alice"
    for earlier in (alice, bob):
        seen = (await recv_type(earlier.ws, "user_joined"))["payload"]
        assert seen["user_id"] == "carol"
        assert seen["users"] == [alice.entry, bob.entry, carol.entry]
        assert seen["host_id"] == "alice"
    return alice, bob, carol


async def test_a_room_spread_over_three_nodes_is_one_room(cluster):
    nodes = cluster(3)
    alice, bob, carol = await spread_room(nodes)

    # Text from C reaches A and B once, attributed by the relay (the client's own sender
    # fields are overwritten).
    await send_json(carol.ws, "note", {"n": 1}, sender_id="mallory")
    for receiver in (alice, bob):
        got = await recv_type(receiver.ws, "note")
        assert got["payload"] == {"n": 1}
        assert (got["sender_id"], got["sender_name"]) == ("carol", "Carol")

    # 20 MiB from B arrives byte-exact at A and C and not at B.
    payload = os.urandom(20 * MIB)
    await bob.ws.send(payload)
    for receiver in (alice, carol):
        assert await recv_binary(receiver.ws, timeout=60 * SLOWDOWN) == payload

    # Markers: each member's next message is this one, so nothing was duplicated (a second
    # copy of the note or of the binary would arrive first) and B never got its own binary.
    await send_json(alice.ws, "marker", {})
    for receiver in (bob, carol):
        assert (await recv_type(receiver.ws, "marker"))["sender_id"] == "alice"
    await send_json(bob.ws, "marker", {})
    for receiver in (alice, carol):
        assert (await recv_type(receiver.ws, "marker"))["sender_id"] == "bob"

    # Directed delivery across nodes: only the named member gets it.
    await send_json(alice.ws, "private", {}, to=["carol"])
    assert (await recv_type(carol.ws, "private"))["sender_id"] == "alice"
    await send_json(carol.ws, "marker2", {})
    for receiver in (alice, bob):
        assert (await recv_type(receiver.ws, "marker2"))["sender_id"] == "carol"

    # A member leaving on one node is seen on the others, with the merged list.
    await bob.close()
    for receiver in (alice, carol):
        left = (await recv_type(receiver.ws, "user_left"))["payload"]
        assert left["user_id"] == "bob"
        assert left["users"] == [alice.entry, carol.entry]
    await close_all([alice, carol])


async def test_two_hundred_rooms_made_across_nodes_have_distinct_codes(cluster):
    nodes = cluster(3)
    creators = [await member(nodes[i % 3], f"user{i}") for i in range(200)]
    codes = await asyncio.gather(*(creator.create() for creator in creators))
    codes = [payload["room_code"] for payload in codes]
    assert len(set(codes)) == 200
    # Every room is one the cluster knows: joined through another node, its creator hears it.
    for index in (0, 1, 199):
        guest = await member(nodes[(index + 1) % 3], f"guest{index}")
        joined = await guest.join(codes[index])
        assert joined["users"] == [creators[index].entry, guest.entry]
        assert (await recv_type(creators[index].ws, "user_joined"))["payload"]["user_id"] == (
            guest.user_id
        )
        await guest.close()
    await close_all(creators)


async def test_a_killed_node_s_members_leave_and_the_others_keep_relaying(cluster):
    nodes = cluster(3)
    alice, bob, carol = await spread_room(nodes)
    nodes[1].kill()  # SIGKILL: no goodbye from node B

    for receiver in (alice, carol):
        left = (await recv_type(receiver.ws, "user_left", timeout=NODE_LOSS_TIMEOUT))["payload"]
        assert left["user_id"] == "bob"
        assert left["users"] == [alice.entry, carol.entry]
        assert left["host_id"] == "alice"

    await send_json(carol.ws, "after", {"n": 2})
    got = await recv_type(alice.ws, "after")
    assert got["sender_id"] == "carol" and got["payload"] == {"n": 2}
    payload = os.urandom(3 * MIB)
    await alice.ws.send(payload)
    assert await recv_binary(carol.ws, timeout=30 * SLOWDOWN) == payload
    await close_all([alice, carol])


async def test_a_room_without_nats_traffic_when_all_members_share_a_node(cluster, nats_server):
    """A room whose members are all on one node delivers locally; only its members' joins
    cross (as control messages), so its fan-out never waits on NATS."""
    nodes = cluster(2)
    alice = await member(nodes[0], "alice")
    bob = await member(nodes[0], "bob")
    code = (await alice.create())["room_code"]
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    before = nats_bytes(nats_server)
    payload = os.urandom(8 * MIB)
    for _ in range(4):
        await alice.ws.send(payload)
        assert await recv_binary(bob.ws) == payload
    # Heartbeats still cross meanwhile: a few kB, not the 32 MiB delivered.
    assert nats_bytes(nats_server) - before < MIB
    await close_all([alice, bob])


def nats_bytes(nats_server) -> int:
    """Bytes nats-server has received from its clients (its /varz monitoring counters would
    need a monitoring port; the process's read I/O counter is what it read from sockets)."""
    with open(f"/proc/{nats_server.process.pid}/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


async def test_an_unknown_code_is_not_found_on_any_node(cluster):
    nodes = cluster(2)
    alice = await member(nodes[0], "alice")
    code = (await alice.create())["room_code"]
    stranger = await member(nodes[1], "stranger")
    wrong = "ABCDEF" if code != "ABCDEF" else "ABCDEG"
    await send_json(stranger.ws, "join_room", {"room_code": wrong, "user_id": "s"})
    message = json.loads(await recv(stranger.ws))
    assert message["payload"]["code"] == "ROOM_NOT_FOUND"
    await close_all([alice, stranger])


async def test_nats_down_local_rooms_keep_working(cluster, nats_server):
    """docs/operations.md: while NATS is unreachable a node serves the rooms whose members it
    has, refuses to create rooms it cannot register, and stops cleanly (the fixture checks)."""
    nodes = cluster(2)
    alice = await member(nodes[0], "alice")
    bob = await member(nodes[0], "bob")
    code = (await alice.create())["room_code"]
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    nats_server.stop()
    nodes[0].wait_for_line("cluster_disconnected", timeout=10)

    await send_json(alice.ws, "still", {"n": 1})
    assert (await recv_type(bob.ws, "still"))["sender_id"] == "alice"
    payload = os.urandom(MIB)
    await bob.ws.send(payload)
    assert await recv_binary(alice.ws) == payload

    carol = await member(nodes[0], "carol")
    await send_json(carol.ws, "create_room", {"user_id": "carol"})
    refused = await recv_type(carol.ws, "error")
    assert refused["payload"]["code"] == "INTERNAL"
    await close_all([alice, bob, carol])


async def test_a_room_reserved_over_http_on_one_node_is_joined_on_others(cluster):
    """POST /api/create-room (how the original clients make a room) on node A; the creator
    joins on node B (as HAProxy may send it), a guest on node A: one room, B's joiner its host."""
    nodes = cluster(2)
    request = urllib.request.Request(f"{nodes[0].http_url}/api/create-room", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        code = json.load(response)["room_code"]
    creator = await member(nodes[1], "creator")
    joined = await creator.join(code)
    assert joined["users"] == [creator.entry] and joined["host_id"] == "creator"
    guest = await member(nodes[0], "guest")
    joined = await guest.join(code)
    assert joined["users"] == [creator.entry, guest.entry]
    assert joined["host_id"] == "creator"
    seen = (await recv_type(creator.ws, "user_joined"))["payload"]
    assert seen["users"] == [creator.entry, guest.entry]
    await close_all([creator, guest])
