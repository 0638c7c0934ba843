"""Rooms as in PROTOCOL.md §1 and docs/protocol.md §1: creating, joining (case-insensitive),
leaving, disconnecting, deletion of empty rooms, one room per connection, many live rooms."""

from __future__ import annotations

import asyncio

import pytest

from helpers.vectors import is_room_code
from helpers.ws_client import (
    Member,
    close_all,
    member,
    open_ws,
    recv_binary,
    recv_error,
    recv_json,
    recv_type,
    room_of,
    send_json,
)

pytestmark = pytest.mark.asyncio


async def test_create_room_answers_room_created_with_a_code(relay):
    server = relay()
    alice = await member(server, "alice", "Alice")
    await send_json(alice.ws, "create_room", {"user_id": "alice", "display_name": "Alice"})
    message = await recv_json(alice.ws)
    assert message["type"] == "room_created"
    assert is_room_code(message["payload"]["room_code"]), message
    await alice.close()


async def test_join_room_lower_case_answers_room_joined_and_tells_the_others(relay):
    server = relay()
    alice = await member(server, "alice", "Alice")
    bob = await member(server, "bob", "Bob")
    carol = await member(server, "carol", "Carol")
    code = (await alice.create())["room_code"]

    joined = await bob.join(code.lower())
    assert joined["room_code"] == code
    assert joined["users"] == [alice.entry, bob.entry]
    notice = await recv_type(alice.ws, "user_joined")
    assert notice["payload"]["user_id"] == "bob"
    assert notice["payload"]["display_name"] == "Bob"
    assert notice["payload"]["users"] == [alice.entry, bob.entry]

    joined = await carol.join(code.lower().capitalize())
    assert joined["users"] == [alice.entry, bob.entry, carol.entry]
    for earlier in (alice, bob):
        notice = await recv_type(earlier.ws, "user_joined")
        assert notice["payload"]["user_id"] == "carol"
        assert notice["payload"]["display_name"] == "Carol"
        assert notice["payload"]["users"] == [alice.entry, bob.entry, carol.entry]
    await close_all([alice, bob, carol])


async def test_join_unknown_room_is_room_not_found(relay):
    server = relay()
    ws = await open_ws(server)
    await send_json(ws, "join_room", {"room_code": "ZZZZZZ", "user_id": "u", "display_name": "U"})
    message = await recv_json(ws)
    assert message["type"] == "error"
    assert message["payload"]["error"] == "Room not found"
    assert message["payload"]["code"] == "ROOM_NOT_FOUND"
    await ws.close()


async def test_leave_room_sends_user_left_to_the_others(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    await send_json(bob.ws, "leave_room", {})
    for other in (alice, carol):
        message = await recv_type(other.ws, "user_left")
        assert message["payload"]["user_id"] == "bob"
        assert message["payload"]["display_name"] == bob.display_name
        assert message["payload"]["users"] == [alice.entry, carol.entry]

    # Bob is no longer in the room: what he sends now reaches nobody, what they send skips him.
    await send_json(bob.ws, "chat", {"n": 1})
    await send_json(alice.ws, "chat", {"n": 2})
    assert (await recv_type(carol.ws, "chat"))["payload"] == {"n": 2}
    await send_json(carol.ws, "chat", {"n": 3})
    assert (await recv_type(alice.ws, "chat"))["payload"] == {"n": 3}
    # Bob's connection is still usable: he can rejoin and is told the current members.
    rejoined = await bob.join(alice.room_code)
    assert rejoined["users"] == [alice.entry, carol.entry, bob.entry]
    await close_all([alice, bob, carol])


async def test_disconnect_sends_user_left_with_remaining_users(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    await alice.close()
    for other in (bob, carol):
        message = await recv_type(other.ws, "user_left")
        assert message["payload"] == {
            "user_id": "alice",
            "display_name": alice.display_name,
            "users": [bob.entry, carol.entry],
            "host_id": None,  # the creator left: nobody is the attested host any more
        }
    await close_all([bob, carol])


async def test_abrupt_disconnect_sends_user_left(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    alice.ws.transport.abort()  # TCP reset, no closing handshake
    message = await recv_type(bob.ws, "user_left")
    assert message["payload"]["user_id"] == "alice"
    assert message["payload"]["users"] == [bob.entry]
    await bob.close()


async def test_empty_room_is_deleted(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    code = alice.room_code
    await alice.close()
    await recv_type(bob.ws, "user_left")
    # Bob leaves, then (same connection, so in order) tries to come back: the room is gone.
    await send_json(bob.ws, "leave_room", {})
    await send_json(bob.ws, "join_room", {"room_code": code, "user_id": "bob", "display_name": "B"})
    error = await recv_error(bob.ws, "ROOM_NOT_FOUND")
    assert error["error"] == "Room not found"
    await bob.close()


async def test_room_of_a_disconnected_last_member_is_deleted(relay):
    server = relay()
    alice = await member(server, "alice")
    code = (await alice.create())["room_code"]
    await alice.close()
    # Alice's close() returned once the relay closed the TCP connection, which it does after
    # it has removed her, so the room must be gone now.
    other = await open_ws(server)
    await send_json(other, "join_room", {"room_code": code, "user_id": "x", "display_name": ""})
    await recv_error(other, "ROOM_NOT_FOUND")
    await other.close()


async def test_creating_a_second_room_leaves_the_first(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    first = alice.room_code
    second = (await alice.create())["room_code"]
    assert second != first
    message = await recv_type(bob.ws, "user_left")
    assert message["payload"] == {
        "user_id": "alice",
        "display_name": "Alice",
        "users": [bob.entry],
        "host_id": None,
    }
    # No ghost: Bob's messages no longer reach Alice; a member of her new room does.
    carol = await member(server, "carol")
    await carol.join(second)
    await recv_type(alice.ws, "user_joined")
    await send_json(bob.ws, "chat", {"from": "bob"})
    await send_json(carol.ws, "chat", {"from": "carol"})
    assert (await recv_type(alice.ws, "chat"))["payload"] == {"from": "carol"}
    await close_all([alice, bob, carol])


async def test_joining_a_second_room_leaves_the_first(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    dave = await member(server, "dave")
    other_code = (await dave.create())["room_code"]
    joined = await bob.join(other_code)
    assert joined["users"] == [dave.entry, bob.entry]
    await recv_type(dave.ws, "user_joined")
    for old in (alice, carol):
        message = await recv_type(old.ws, "user_left")
        assert message["payload"]["user_id"] == "bob"
        assert message["payload"]["users"] == [alice.entry, carol.entry]
    # Bob's old room no longer forwards to him; his new room does.
    await send_json(alice.ws, "chat", {"from": "alice"})
    await send_json(dave.ws, "chat", {"from": "dave"})
    assert (await recv_type(bob.ws, "chat"))["payload"] == {"from": "dave"}
    await close_all([alice, bob, carol, dave])


async def test_joining_the_same_room_twice_keeps_one_membership(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    again = await bob.join(alice.room_code)
    # Whatever the relay tells Alice about it, Bob is listed once.
    assert again["users"].count(bob.entry) == 1
    assert alice.entry in again["users"]
    await close_all([alice, bob])


@pytest.mark.slow
async def test_200_live_rooms_have_unique_codes(relay):
    server = relay()
    creators = [Member(await open_ws(server), f"creator{i}", f"C{i}") for i in range(200)]
    codes = await asyncio.gather(*(c.create() for c in creators))
    codes = [payload["room_code"] for payload in codes]
    assert all(is_room_code(code) for code in codes)
    assert len(set(codes)) == 200
    # All 200 are live at once: one visitor joins each in turn and finds its creator there.
    visitor = Member(await open_ws(server), "visitor", "V")
    for creator, code in zip(creators, codes, strict=True):
        joined = await visitor.join(code)
        assert joined["users"] == [creator.entry, visitor.entry]
        await recv_type(creator.ws, "user_joined")
    await close_all([*creators, visitor])


async def test_rooms_are_isolated(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    carol, dave = await room_of(server, "carol", "dave")
    await send_json(alice.ws, "chat", {"room": 1})
    await alice.ws.send(b"room 1")
    await send_json(carol.ws, "chat", {"room": 2})
    await carol.ws.send(b"room 2")
    assert (await recv_type(bob.ws, "chat"))["payload"] == {"room": 1}
    assert await recv_binary(bob.ws) == b"room 1"
    assert (await recv_type(dave.ws, "chat"))["payload"] == {"room": 2}
    assert await recv_binary(dave.ws) == b"room 2"
    await close_all([alice, bob, carol, dave])


async def test_client_close_is_answered_promptly_with_1000(relay):
    # The original Worker never answered a client's Close, so clients hung for ~10 s.
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    await alice.ws.close()
    # Had the relay not answered, websockets would have given up after its close_timeout and
    # close_rcvd would be empty: the answer itself is the proof, not how long it took.
    close_rcvd = alice.ws.protocol.close_rcvd
    assert close_rcvd is not None and close_rcvd.code == 1000
    await recv_type(bob.ws, "user_left")
    await bob.close()


async def test_leave_room_outside_a_room_is_harmless(relay):
    server = relay()
    alice = await member(server, "alice")
    await send_json(alice.ws, "leave_room", {})
    await alice.create()  # the next answer is for this, nothing came for the leave_room
    await alice.close()
