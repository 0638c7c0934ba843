"""Identity in a room (docs/protocol.md "Identity and the attested host"): a member's user_id
cannot be taken, the relay attests the room's creator as `host_id`, and frames or text that
claim another sender are not passed off as that sender's. The relay side of the impostor drill;
the client side (SyncClient trusting only the attested host) is in tests/network."""

from __future__ import annotations

import asyncio

import pytest

from helpers import frame_header
from helpers.http_metrics import scrape
from helpers.ws_client import (
    close_all,
    expect_silence,
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


async def test_impostor_cannot_take_the_hosts_id_nor_its_traffic(relay):
    server = relay()
    host, bob = await room_of(server, "host", "bob", speaks_frames=True)
    assert host.last_payload["host_id"] == "host"
    assert bob.last_payload["host_id"] == "host"

    impostor = await open_ws(server)
    for taken in ("host", "bob"):
        payload = {"room_code": host.room_code, "user_id": taken, "display_name": ""}
        await send_json(impostor, "join_room", payload)
        await recv_error(impostor, "USER_ID_TAKEN")
    assert scrape(server)["relay_rejects_total{reason=user_id_taken}"] == 2

    # Joined under its own id, the impostor is listed once, and the host stays the host.
    payload = {"room_code": host.room_code, "user_id": "mallory", "display_name": ""}
    await send_json(impostor, "join_room", payload)
    joined = (await recv_type(impostor, "room_joined"))["payload"]
    assert [u["user_id"] for u in joined["users"]] == ["host", "bob", "mallory"]
    assert joined["host_id"] == "host"
    for earlier in (host, bob):
        notice = (await recv_type(earlier.ws, "user_joined"))["payload"]
        assert notice["host_id"] == "host"

    # Bob's directed push (text then a framed binary) reaches the host only.
    await send_json(bob.ws, "weights_push", {"epoch": 1}, to=["host"])
    weights = frame_header.build("bob", ["host"], kind=1, total_size=4) + b"\x01\x02\x03\x04"
    await bob.ws.send(weights)
    assert (await recv_type(host.ws, "weights_push"))["sender_id"] == "bob"
    assert await recv_binary(host.ws) == weights
    await expect_silence(impostor, 0.3)

    # What the impostor sends in the host's name is refused or re-attributed to it.
    forged = frame_header.build("host", kind=2, total_size=4) + b"\xff\xff\xff\xff"
    await impostor.send(forged)
    assert (
        "header names another sender" in (await recv_error(impostor, "BAD_FRAME_HEADER"))["details"]
    )
    await send_json(impostor, "global_model", {"aggregation_round": 1}, sender_id="host")
    for receiver in (host, bob):
        message = await recv_json(receiver.ws)
        assert (message["type"], message["sender_id"]) == ("global_model", "mallory")
    await expect_silence(bob.ws, 0.3)  # the forged binary never arrived
    await close_all([host, bob])
    await impostor.close()


async def test_host_id_survives_nothing_but_the_creator(relay):
    server = relay()
    host, bob, carol = await room_of(server, "host", "bob", "carol")
    await host.close()
    for other in (bob, carol):
        left = (await recv_type(other.ws, "user_left"))["payload"]
        assert (left["user_id"], left["host_id"]) == ("host", None)
    # Once the creator has left, its id is free, but taking it does not make a host.
    again = await member(server, "host")
    assert (await again.join(bob.room_code))["host_id"] is None
    for other in (bob, carol):
        assert (await recv_type(other.ws, "user_joined"))["payload"]["host_id"] is None
    await close_all([again, bob, carol])


async def test_away_member_keeps_its_id_until_its_grace_ends(relay):
    server = relay("--resume-grace", "30")
    host = await member(server, "host")
    await host.create(features=["resume"])
    bob = await member(server, "bob")
    await bob.join(host.room_code)
    await recv_type(host.ws, "user_joined")
    host.ws.transport.abort()  # away, within its grace period

    impostor = await open_ws(server)
    await send_json(
        impostor, "join_room", {"room_code": host.room_code, "user_id": "host", "display_name": ""}
    )
    await recv_error(impostor, "USER_ID_TAKEN")
    # The real host is back with its token and is still the attested host.
    back = await open_ws(server)
    payload = {
        "room_code": host.room_code,
        "user_id": "host",
        "display_name": "Host",
        "resume_token": host.last_payload["resume_token"],
    }
    await send_json(back, "resume", payload)
    resumed = (await recv_type(back, "room_joined"))["payload"]
    assert resumed["resumed"] is True and resumed["host_id"] == "host"
    await asyncio.gather(back.close(), impostor.close(), bob.close())
