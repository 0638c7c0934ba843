"""Protocol 2 extensions (docs/protocol.md §2): feature discovery, self-describing binary frames,
directed delivery and resume."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import stat
import time

import pytest

from helpers import frame_header
from helpers.http_metrics import scrape
from helpers.relay_process import SLOWDOWN
from helpers.vectors import FEATURES, PROTOCOL
from helpers.ws_client import (
    Member,
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


def resume_token(secret: bytes, code: str, user_id: str, host: bool = False) -> str:
    """docs/protocol.md "Resume": the room creator's token has "\\nhost" appended."""
    message = f"resume\n{code}\n{user_id}" + ("\nhost" if host else "")
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


# --- feature discovery -------------------------------------------------------------------


async def test_room_created_and_joined_advertise_the_relay_and_its_limits(relay):
    server = relay(
        "--max-message-size", "1M", "--max-text-size", "2K", "--max-room-members", "5",
        "--resume-grace", "7",
    )  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", "/health")
    version = json.loads(connection.getresponse().read())["version"]
    connection.close()

    alice = await member(server, "alice")
    bob = await member(server, "bob")
    created = await alice.create()
    joined = await bob.join(created["room_code"])
    for payload in (created, joined):
        info = payload["relay"]
        assert info["version"] == version
        assert info["protocol"] == 2
        assert set(FEATURES) <= set(info["features"])
        limits = info["limits"]
        assert limits["max_message_size"] == 1024 * 1024
        assert limits["max_text_size"] == 2048
        assert limits["max_room_members"] == 5
        assert limits["resume_grace_seconds"] == 7
        # A recommended chunk must fit in a message.
        assert 0 < limits["chunk_size"] <= limits["max_message_size"]
    # user_joined to the others is v1-shaped plus the attested host.
    notice = await recv_type(alice.ws, "user_joined")
    assert set(notice["payload"]) == {"user_id", "display_name", "users", "host_id"}
    assert notice["payload"]["host_id"] == created["host_id"] == joined["host_id"] == "alice"
    await close_all([alice, bob])


async def test_default_limits_are_the_documented_ones(relay):
    server = relay()
    alice = await member(server, "alice")
    limits = (await alice.create())["relay"]["limits"]
    documented = {
        "max_message_size": 64 * 1024 * 1024,
        "max_text_size": 1024 * 1024,
        "max_room_members": 64,
        "chunk_size": 16 * 1024 * 1024,
        "resume_grace_seconds": 30,
    }
    assert {key: limits.get(key) for key in documented} == documented
    await alice.close()


# --- self-describing binary frames ----------------------------------------------------------


def test_header_builder_matches_the_shared_vectors():
    for example in PROTOCOL["frame_header"]["examples"]:
        built = frame_header.build(
            example["sender"],
            example["recipients"],
            kind=example["kind"],
            transfer_id=example["transfer_id"],
            chunk_index=example["chunk_index"],
            chunk_count=example["chunk_count"],
            total_size=example["total_size"],
        )
        assert built.hex() == example["hex"], example["comment"]


async def test_binary_with_header_and_no_recipients_reaches_all_others(relay):
    server = relay()
    alice, bob, carol = await room_of(server, "alice", "bob", "carol", speaks_frames=True)
    message = frame_header.build("alice", total_size=5) + b"hello"
    await alice.ws.send(message)
    for other in (bob, carol):
        assert await recv_binary(other.ws) == message
    await close_all([alice, bob, carol])


async def test_binary_with_recipients_reaches_only_them(relay):
    server = relay()
    alice, bob, carol, dave = await room_of(
        server, "alice", "bob", "carol", "dave", speaks_frames=True
    )
    directed = frame_header.build("alice", ["bob", "dave", "nobody"], kind=1, total_size=3) + b"w8s"
    await alice.ws.send(directed)
    marker = frame_header.build("alice", transfer_id=2) + b"marker"
    await alice.ws.send(marker)
    assert await recv_binary(bob.ws) == directed
    assert await recv_binary(dave.ws) == directed
    assert await recv_binary(carol.ws) == marker  # never got the directed one
    assert await recv_binary(bob.ws) == marker
    await close_all([alice, bob, carol, dave])


async def test_header_split_across_websocket_frames_is_still_routed(relay):
    server = relay()
    # Bob is an original client: plain (v1) binaries are for it, framed ones never are.
    alice, bob, carol = await room_of(
        server, "alice", "bob", "carol", speaks_frames={"alice", "carol"}
    )
    message = frame_header.build("alice", ["carol"], total_size=4) + b"data"
    await alice.ws.send([message[:6], message[6:20], message[20:]])
    await alice.ws.send(b"plain v1 marker")
    assert await recv_binary(carol.ws) == message
    assert await recv_binary(bob.ws) == b"plain v1 marker"
    await close_all([alice, bob, carol])


BAD_HEADERS = {
    "other-sender": frame_header.build("mallory") + b"x",
    "version-2": frame_header.build("alice", version=2) + b"x",
    "size-below-fixed": frame_header.build("alice", header_size=20) + b"x" * 40,
    "size-above-max": frame_header.build("alice", header_size=5000) + b"x" * 5000,
    "size-past-end": frame_header.build("alice", header_size=60)[:50],
    "empty-sender": frame_header.build(""),
    "chunk-count-zero": frame_header.build("alice", chunk_count=0) + b"x",
    "empty-recipient": frame_header.build("alice", ["bob", ""]) + b"x",
    "only-magic": b"SSBF",
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
async def test_bad_frame_header_is_refused_and_not_forwarded(relay, name):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    await alice.ws.send(BAD_HEADERS[name])
    await recv_error(alice.ws, "BAD_FRAME_HEADER")
    await alice.ws.send(b"after")
    assert await recv_binary(bob.ws) == b"after"
    await close_all([alice, bob])


# --- directed delivery --------------------------------------------------------------------


async def test_directed_text_reaches_only_the_named_members(relay):
    server = relay()
    alice, bob, carol, dave = await room_of(server, "alice", "bob", "carol", "dave")
    await send_json(alice.ws, "weights_push", {"epoch": 1}, to=["bob", "dave", "ghost", "alice"])
    await send_json(alice.ws, "marker", {})
    for named in (bob, dave):
        message = await recv_json(named.ws)
        assert message == {
            "type": "weights_push",
            "payload": {"epoch": 1},
            "to": ["bob", "dave", "ghost", "alice"],
            "sender_id": "alice",
            "sender_name": "Alice",
        }
    assert (await recv_json(carol.ws))["type"] == "marker"
    # Alice named herself but never gets her own message: Bob's reply is the next thing she sees.
    await recv_type(bob.ws, "marker")
    await send_json(bob.ws, "reply", {})
    assert (await recv_json(alice.ws))["type"] == "reply"
    await close_all([alice, bob, carol, dave])


# --- resume -------------------------------------------------------------------------------


async def resumable_room(server, *user_ids):
    """Like room_of, but every member asks for the resume feature."""
    members = [await member(server, user_id) for user_id in user_ids]
    await members[0].create(features=["resume"])
    for index, joiner in enumerate(members[1:], start=1):
        await joiner.join(members[0].room_code, features=["resume"])
        for earlier in members[:index]:
            await recv_type(earlier.ws, "user_joined")
    return members


async def send_resume(ws, who: Member, code: str, token: str) -> None:
    payload = {
        "room_code": code,
        "user_id": who.user_id,
        "display_name": who.display_name,
        "resume_token": token,
    }
    await send_json(ws, "resume", payload)


async def test_resume_token_is_the_documented_hmac(relay, tmp_path):
    secret_file = tmp_path / "secret"
    server = relay("--secret-file", str(secret_file))
    alice = await member(server, "alice")
    created = await alice.create(features=["resume"])
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_bytes()
    assert created["resume_token"] == resume_token(secret, created["room_code"], "alice", host=True)
    # Cross-check the computation itself with the shared vector.
    vector = PROTOCOL["resume_token"]
    vector_secret = bytes.fromhex(vector["secret_hex"])
    expected = resume_token(vector_secret, vector["room_code"], "alice")
    assert expected == vector["token_hex"]
    host_token = resume_token(vector_secret, vector["room_code"], "alice", host=True)
    assert host_token == vector["host_token_hex"]
    # A v1 client (no features) gets no token; a member asking for one gets the member kind.
    bob = await member(server, "bob")
    assert "resume_token" not in await bob.join(created["room_code"])
    carol = await member(server, "carol")
    joined = await carol.join(created["room_code"], features=["resume"])
    assert joined["resume_token"] == resume_token(secret, created["room_code"], "carol")
    await close_all([alice, bob, carol])


async def test_resume_within_grace_is_invisible_to_the_others(relay):
    server = relay()
    alice, bob = await resumable_room(server, "alice", "bob")
    token = alice.last_payload["resume_token"]
    alice.ws.transport.abort()  # the connection drops, no closing handshake

    again = await open_ws(server)
    await send_resume(again, alice, alice.room_code, token)
    joined = await recv_type(again, "room_joined")
    assert joined["payload"]["resumed"] is True
    assert joined["payload"]["room_code"] == alice.room_code
    assert joined["payload"]["users"] == [alice.entry, bob.entry]

    # Bob saw neither a user_left nor a user_joined: Alice's next message is the next thing.
    await send_json(again, "chat", {"back": True})
    message = await recv_json(bob.ws)
    assert (message["type"], message["sender_id"]) == ("chat", "alice")
    # And she gets the room's traffic again.
    await bob.ws.send(b"welcome back")
    assert await recv_binary(again) == b"welcome back"
    await again.close()
    await bob.close()


async def test_away_member_keeps_an_otherwise_empty_room_alive(relay):
    server = relay()
    (alice,) = await resumable_room(server, "alice")
    alice.ws.transport.abort()
    await asyncio.sleep(0.2)
    bob = await member(server, "bob")
    joined = await bob.join(alice.room_code)
    assert joined["room_code"] == alice.room_code
    await bob.close()


async def test_after_the_grace_period_the_others_get_user_left(relay):
    server = relay("--resume-grace", "1")
    alice, bob = await resumable_room(server, "alice", "bob")
    dropped_at = time.monotonic()
    alice.ws.transport.abort()
    await expect_silence(bob.ws, 0.6)  # still within the grace period
    message = await recv_type(bob.ws, "user_left", timeout=5 * SLOWDOWN)
    elapsed = time.monotonic() - dropped_at
    assert message["payload"] == {
        "user_id": "alice",
        "display_name": "Alice",
        "users": [bob.entry],
        "host_id": None,
    }
    # Not before the grace period; how much later depends on the machine, and the relay's own
    # counters say the member was away and then removed, not just disconnected.
    assert elapsed >= 0.9, f"user_left after {elapsed:.2f} s"
    metrics = scrape(server)
    assert metrics["relay_members_away"] == 0
    await bob.close()


async def test_room_whose_members_all_stay_away_is_deleted_after_grace(relay):
    server = relay("--resume-grace", "1")
    (alice,) = await resumable_room(server, "alice")
    alice.ws.transport.abort()
    await asyncio.sleep(1 + 1.5 * SLOWDOWN)
    other = await open_ws(server)
    await send_json(
        other, "join_room", {"room_code": alice.room_code, "user_id": "x", "display_name": ""}
    )
    await recv_error(other, "ROOM_NOT_FOUND")
    await other.close()


async def test_v1_member_leaves_at_once_even_when_others_use_resume(relay):
    server = relay()
    alice = await member(server, "alice")
    await alice.create(features=["resume"])
    bob = await member(server, "bob")
    await bob.join(alice.room_code)  # no features: a v1 client
    await recv_type(alice.ws, "user_joined")
    bob.ws.transport.abort()
    message = await recv_type(alice.ws, "user_left", timeout=2 * SLOWDOWN)
    assert message["payload"]["user_id"] == "bob"
    await alice.close()


async def test_room_reopens_after_a_relay_restart(relay, tmp_path):
    secret_file = str(tmp_path / "secret")
    first = relay("--secret-file", secret_file)
    alice = await member(first, "alice")
    created = await alice.create(features=["resume"])
    code, token = created["room_code"], created["resume_token"]
    code_exit, _ = first.terminate()
    assert code_exit == 0

    second = relay("--secret-file", secret_file)
    ws = await open_ws(second)
    await send_resume(ws, alice, code, token)
    joined = await recv_type(ws, "room_joined")
    assert joined["payload"]["room_code"] == code
    assert joined["payload"]["resumed"] is True
    assert joined["payload"]["users"] == [alice.entry]

    bob = await member(second, "bob")
    assert (await bob.join(code))["users"] == [alice.entry, bob.entry]
    await recv_type(ws, "user_joined")
    await bob.ws.send(b"after restart")
    assert await recv_binary(ws) == b"after restart"
    await ws.close()
    await bob.close()


async def test_a_different_secret_cannot_reopen_the_room(relay, tmp_path):
    first = relay("--secret-file", str(tmp_path / "one"))
    alice = await member(first, "alice")
    created = await alice.create(features=["resume"])
    assert first.terminate()[0] == 0
    second = relay("--secret-file", str(tmp_path / "two"))
    ws = await open_ws(second)
    await send_resume(ws, alice, created["room_code"], created["resume_token"])
    await recv_error(ws, "INVALID_RESUME_TOKEN")
    await ws.close()


@pytest.mark.parametrize("case", ["zeros", "other-user", "other-code", "not-hex", "short"])
async def test_invalid_resume_token(relay, case):
    server = relay()
    alice, bob = await resumable_room(server, "alice", "bob")
    code, token = alice.room_code, alice.last_payload["resume_token"]
    who, use_code, use_token = alice, code, token
    if case == "zeros":
        use_token = "0" * 64
    elif case == "other-user":
        who = bob  # Alice's token does not let Bob in as Bob
    elif case == "other-code":
        use_code = "ZZZZZZ" if code != "ZZZZZZ" else "YYYYYY"
    elif case == "not-hex":
        use_token = "z" * 64
    elif case == "short":
        use_token = token[:32]
    ws = await open_ws(server)
    await send_resume(ws, who, use_code, use_token)
    await recv_error(ws, "INVALID_RESUME_TOKEN")
    await ws.close()
    await close_all([alice, bob])


async def test_resume_without_a_token_field_is_invalid_field(relay):
    server = relay()
    ws = await open_ws(server)
    await send_json(ws, "resume", {"room_code": "ABCDEF", "user_id": "a", "display_name": "A"})
    error = await recv_error(ws, "INVALID_FIELD")
    assert error["field"] == "resume_token"
    await ws.close()


async def test_members_resuming_after_a_restart_are_announced_as_resumed(relay, tmp_path):
    secret_file = str(tmp_path / "secret")
    first = relay("--secret-file", secret_file)
    alice, bob = await resumable_room(first, "alice", "bob")
    tokens = {m.user_id: m.last_payload["resume_token"] for m in (alice, bob)}
    code = alice.room_code
    assert first.terminate()[0] == 0

    second = relay("--secret-file", secret_file)
    alice_again, bob_again = await open_ws(second), await open_ws(second)
    await send_resume(alice_again, alice, code, tokens["alice"])
    assert (await recv_type(alice_again, "room_joined"))["payload"]["users"] == [alice.entry]
    await send_resume(bob_again, bob, code, tokens["bob"])
    joined = await recv_type(bob_again, "room_joined")
    assert joined["payload"]["resumed"] is True
    assert joined["payload"]["users"] == [alice.entry, bob.entry]
    # The relay did not know Bob after the restart, so Alice is told he is (back) in the room.
    notice = await recv_type(alice_again, "user_joined")
    assert notice["payload"]["user_id"] == "bob"
    assert notice["payload"]["resumed"] is True
    assert notice["payload"]["users"] == [alice.entry, bob.entry]
    await asyncio.gather(alice_again.close(), bob_again.close())


async def test_plain_restart_without_a_secret_option_keeps_every_room(relay, tmp_path):
    # The same command line both times, with no secret option: the relay keeps its key in the
    # state directory (here a temporary one, as $STATE_DIRECTORY would be under systemd).
    state = tmp_path / "state"
    first = relay("--state-dir", str(state))
    host = await member(first, "host")
    created = await host.create(features=["resume"])
    bob = await member(first, "bob")
    joined = await bob.join(created["room_code"], features=["resume"])
    key = state / "resume.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    first.kill()  # SIGKILL: nothing is saved at exit

    second = relay("--state-dir", str(state))
    again = await open_ws(second)
    await send_resume(again, host, created["room_code"], created["resume_token"])
    back = (await recv_type(again, "room_joined"))["payload"]
    assert (back["room_code"], back["resumed"], back["host_id"]) == (
        created["room_code"],
        True,
        "host",
    )
    bob_again = await open_ws(second)
    await send_resume(bob_again, bob, created["room_code"], joined["resume_token"])
    assert (await recv_type(bob_again, "room_joined"))["payload"]["host_id"] == "host"
    assert (await recv_type(again, "user_joined"))["payload"]["user_id"] == "bob"
    await bob_again.send(b"after a kill -9")
    assert await recv_binary(again) == b"after a kill -9"
    await asyncio.gather(again.close(), bob_again.close())
