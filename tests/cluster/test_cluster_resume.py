"""Resume across nodes: a member whose node died reconnects to another node and resumes its
place (docs/protocol.md "Resume"); every node shares the resume key through --secret-file.
The other members see no user_left and no user_joined: to them it never left."""

from __future__ import annotations

import asyncio
import os

import pytest

from helpers.relay_process import SLOWDOWN
from helpers.ws_client import (
    close_all,
    expect_silence,
    member,
    recv_binary,
    recv_type,
    send_json,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

RESUME = {"features": ["resume"]}


async def test_a_member_of_a_killed_node_resumes_on_another(cluster, tmp_path):
    secret = tmp_path / "resume.key"
    nodes = cluster(3, "--secret-file", str(secret), "--resume-grace", "60")
    alice = await member(nodes[0], "alice")
    bob = await member(nodes[1], "bob")
    carol = await member(nodes[2], "carol")
    code = (await alice.create(**RESUME))["room_code"]
    token = (await bob.join(code, **RESUME))["resume_token"]
    await recv_type(alice.ws, "user_joined")
    await carol.join(code, **RESUME)
    for earlier in (alice, bob):
        await recv_type(earlier.ws, "user_joined")

    nodes[1].kill()  # bob's node dies without a word
    # Bob reconnects through another node (as through the load balancer) and resumes.
    again = await member(nodes[2], "bob")
    await send_json(
        again.ws,
        "resume",
        {"room_code": code, "user_id": "bob", "display_name": "Bob", "resume_token": token},
    )
    resumed = (await recv_type(again.ws, "room_joined", timeout=10 * SLOWDOWN))["payload"]
    assert resumed["resumed"] is True
    assert resumed["users"] == [alice.entry, bob.entry, carol.entry]
    assert resumed["host_id"] == "alice"

    # Bob is back as himself: what he sends is his, what is sent to him reaches him.
    await send_json(again.ws, "back", {})
    for receiver in (alice, carol):
        got = await recv_type(receiver.ws, "back")
        assert got["sender_id"] == "bob"
    await send_json(alice.ws, "for_bob", {}, to=["bob"])
    assert (await recv_type(again.ws, "for_bob"))["sender_id"] == "alice"
    payload = os.urandom(2 * 1024 * 1024)
    await alice.ws.send(payload)
    for receiver in (again, carol):
        assert await recv_binary(receiver.ws, timeout=30 * SLOWDOWN) == payload

    # Past the time node B's entries take to expire (~10 s), still no user_left for Bob.
    await asyncio.sleep(12)
    await expect_silence(alice.ws, 0.5)
    await expect_silence(carol.ws, 0.5)
    await close_all([alice, carol, again])
