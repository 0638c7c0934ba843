"""Limits against abuse and overload (docs/protocol.md "Limits", "Errors", "Close codes"):
message and text size, room size, number of rooms, join attempts per address (so that room codes
cannot be found by guessing), and how long a handshake may take."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from helpers.http_metrics import scrape
from helpers.relay_process import SLOWDOWN
from helpers.sansio_client import BlockingClient
from helpers.vectors import ALPHABET, CLOSE
from helpers.ws_client import (
    close_all,
    expect_close,
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


async def recv_json_or_binary(who):
    return await asyncio.wait_for(who.ws.recv(), 10 * SLOWDOWN)


async def next_text(who) -> dict:
    """The next text message, skipping any (partial) binary the relay may have started to
    forward before it saw the message was too big."""
    while True:
        message = await recv_json_or_binary(who)
        if isinstance(message, str):
            return json.loads(message)
        assert len(message) <= 1024 * 1024 + 1


async def test_binary_over_max_message_size_closes_sender_1009_others_unaffected(relay):
    server = relay("--max-message-size", "1M")
    alice, bob, carol = await room_of(server, "alice", "bob", "carol")
    limit = 1024 * 1024
    await alice.ws.send(b"\x07" * limit)  # exactly the limit is allowed
    for other in (bob, carol):
        assert len(await recv_json_or_binary(other)) == limit

    await alice.ws.send(b"\x08" * (limit + 1))
    code, _ = await expect_close(alice.ws)
    assert code == CLOSE["message_too_big"] == 1009

    for other in (bob, carol):
        message = await next_text(other)
        assert message["type"] == "user_left" and message["payload"]["user_id"] == "alice"
    await bob.ws.send(b"still works")
    assert await recv_binary(carol.ws) == b"still works"
    await send_json(carol.ws, "chat", {"ok": True})
    assert (await recv_type(bob.ws, "chat"))["payload"] == {"ok": True}
    await close_all([bob, carol])


async def test_fragmented_binary_over_max_message_size_closes_1009(relay):
    server = relay("--max-message-size", "1M")
    alice, bob = await room_of(server, "alice", "bob")
    fragments = [b"\x09" * (256 * 1024)] * 5  # 1.25 MiB in frames the relay cannot size ahead

    async def send():
        # The relay may close before the last fragment is written.
        with contextlib.suppress(ConnectionClosed):
            await alice.ws.send(fragments)

    sending = asyncio.create_task(send())
    code, _ = await expect_close(alice.ws)
    await sending
    assert code == 1009
    message = await next_text(bob)
    assert message["type"] == "user_left"
    await send_json(bob.ws, "create_room", {"user_id": "bob", "display_name": "Bob"})
    await recv_type(bob.ws, "room_created")
    await bob.close()


async def test_text_over_max_text_size_closes_1009(relay):
    server = relay("--max-text-size", "2K")
    alice, bob = await room_of(server, "alice", "bob")
    empty = json.dumps({"type": "chat", "payload": {"pad": ""}})
    at_limit = json.dumps({"type": "chat", "payload": {"pad": "x" * (2048 - len(empty))}})
    assert len(at_limit.encode()) == 2048
    await alice.ws.send(at_limit)  # exactly the limit: forwarded
    await recv_type(bob.ws, "chat")
    await alice.ws.send(at_limit.replace('"pad": "', '"pad": "x'))  # one byte more
    code, _ = await expect_close(alice.ws)
    assert code == 1009
    assert (await recv_type(bob.ws, "user_left"))["payload"]["user_id"] == "alice"
    await bob.close()


async def test_room_full(relay):
    server = relay("--max-room-members", "2")
    alice, bob = await room_of(server, "alice", "bob")
    carol = await open_ws(server)
    await send_json(
        carol, "join_room", {"room_code": alice.room_code, "user_id": "c", "display_name": "C"}
    )
    await recv_error(carol, "ROOM_FULL")
    # Once someone leaves there is room again.
    await send_json(bob.ws, "leave_room", {})
    await recv_type(alice.ws, "user_left")
    await send_json(
        carol, "join_room", {"room_code": alice.room_code, "user_id": "c", "display_name": "C"}
    )
    assert (await recv_type(carol, "room_joined"))["payload"]["users"][0] == alice.entry
    await close_all([alice, bob])
    await carol.close()


async def test_too_many_rooms(relay):
    server = relay("--max-rooms", "2")
    sockets = [await open_ws(server) for _ in range(3)]
    for i, ws in enumerate(sockets[:2]):
        await send_json(ws, "create_room", {"user_id": f"u{i}", "display_name": ""})
        await recv_type(ws, "room_created")
    await send_json(sockets[2], "create_room", {"user_id": "u2", "display_name": ""})
    await recv_error(sockets[2], "TOO_MANY_ROOMS")
    await asyncio.gather(*(ws.close() for ws in sockets))


async def test_join_rate_limit(relay):
    server = relay("--join-rate", "5", join_rate=None)
    owner = await open_ws(server)
    await send_json(owner, "create_room", {"user_id": "owner", "display_name": ""})
    code = (await recv_type(owner, "room_created"))["payload"]["room_code"]

    ws = await open_ws(server)
    for _ in range(5):
        guess = {"room_code": "ZZZZZZ", "user_id": "g", "display_name": ""}
        await send_json(ws, "join_room", guess)
        await recv_error(ws, "ROOM_NOT_FOUND")
    # The sixth attempt is refused without being evaluated, even for a room that exists.
    await send_json(ws, "join_room", {"room_code": code, "user_id": "g", "display_name": ""})
    error = await recv_error(ws, "RATE_LIMITED")
    # Five failures this minute: back once they fade, at most two minutes from now.
    assert isinstance(error["retry_after"], int | float) and 0 < error["retry_after"] <= 120
    # The limit is per address, not per connection.
    again = await open_ws(server)
    await send_json(again, "join_room", {"room_code": code, "user_id": "h", "display_name": ""})
    await recv_error(again, "RATE_LIMITED")
    # Creating a room is not a join attempt.
    await send_json(again, "create_room", {"user_id": "h", "display_name": ""})
    await recv_type(again, "room_created")
    await asyncio.gather(owner.close(), ws.close(), again.close())


@pytest.mark.slow
async def test_10000_guessed_codes_find_nothing_and_are_mostly_refused_unevaluated(relay):
    server = relay(join_rate=None)  # the relay's default --join-rate
    owner = await open_ws(server)
    await send_json(owner, "create_room", {"user_id": "owner", "display_name": ""})
    real_code = (await recv_type(owner, "room_created"))["payload"]["room_code"]

    guesses = ["".join(secrets.choice(ALPHABET) for _ in range(6)) for _ in range(10_000)]
    guesses = [g if g != real_code else "ZZZZZZ" for g in guesses]
    guesses[5000] = real_code  # a correct guess late in the run must not get in either

    ws = await open_ws(server, max_queue=None)

    async def send_all():
        for i, code in enumerate(guesses):
            payload = {"room_code": code, "user_id": f"g{i}", "display_name": ""}
            await ws.send(json.dumps({"type": "join_room", "payload": payload}))

    async def receive_all():
        answers = []
        for _ in guesses:
            answers.append(await recv_json(ws, timeout=30))
        return answers

    # The budget is counted per minute-long window from the first failure, not refilled as
    # time passes: however slowly the relay answers, 30 failures are all that is evaluated
    # within that minute. The timeout (well inside the minute) is only a safety net.
    _, answers = await asyncio.wait_for(asyncio.gather(send_all(), receive_all()), 55)

    kinds = [(a["type"], a.get("payload", {}).get("code")) for a in answers]
    assert set(kinds) <= {("error", "ROOM_NOT_FOUND"), ("error", "RATE_LIMITED")}, set(kinds)
    assert kinds[5000] == ("error", "RATE_LIMITED")
    evaluated = kinds.count(("error", "ROOM_NOT_FOUND"))
    refused = kinds.count(("error", "RATE_LIMITED"))
    assert evaluated == 30, "the default --join-rate is 30 failed attempts per minute"
    assert refused == 10_000 - 30
    metrics = scrape(server)
    assert metrics["relay_rejects_total{reason=room_not_found}"] == evaluated
    assert metrics["relay_rejects_total{reason=rate_limited}"] == refused
    await asyncio.gather(owner.close(), ws.close())


async def test_40_colleagues_behind_one_address_all_get_in(relay):
    server = relay(
        join_rate=None, per_address=False
    )  # the default: 30 failed attempts per address per minute
    host = await member(server, "host")
    code = (await host.create())["room_code"]
    colleagues = []
    for i in range(40):
        colleague = await member(server, f"colleague{i}")
        colleagues.append(colleague)
        joined = await colleague.join(code)
        assert len(joined["users"]) == i + 2
    # Nobody was refused: correct codes do not spend the budget.
    metrics = scrape(server)
    assert metrics["relay_rejects_total{reason=rate_limited}"] == 0
    assert metrics["relay_rejects_total{reason=room_not_found}"] == 0
    await close_all([host, *colleagues])


async def test_100_wrong_codes_at_most_30_evaluated(relay):
    server = relay(join_rate=None)
    owner = await member(server, "owner")
    real_code = (await owner.create())["room_code"]
    ws = await open_ws(server)
    answers = []
    for i in range(100):
        code = "ZZZZZZ" if real_code != "ZZZZZZ" else "YYYYYY"
        await send_json(ws, "join_room", {"room_code": code, "user_id": f"g{i}"})
        answers.append((await recv_type(ws, "error"))["payload"]["code"])
    assert answers.count("ROOM_NOT_FOUND") == 30
    assert answers.count("RATE_LIMITED") == 70
    assert answers[:30] == ["ROOM_NOT_FOUND"] * 30  # evaluated until the budget is spent
    metrics = scrape(server)
    assert metrics["relay_rejects_total{reason=room_not_found}"] == 30
    # The same address, with the right code, now waits too: it would tell a guesser it won.
    await send_json(ws, "join_room", {"room_code": real_code, "user_id": "late"})
    assert (await recv_error(ws, "RATE_LIMITED"))["retry_after"] > 0
    await asyncio.gather(owner.close(), ws.close())


# Waiting longer than this means the relay did not apply --handshake-timeout 1 (libwebsockets'
# own default would close after 10 s). A safety net, several times the timeout.
UNFINISHED_HANDSHAKE_NET = 8 * SLOWDOWN


def seconds_until_closed(sock: socket.socket) -> float:
    """Reads until the relay closes the connection; the time that took, or inf past the net."""
    started = time.monotonic()
    sock.settimeout(UNFINISHED_HANDSHAKE_NET)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return float("inf")
    finally:
        sock.close()
    return time.monotonic() - started


async def test_unfinished_handshake_is_dropped(relay):
    server = relay("--handshake-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    elapsed = await asyncio.to_thread(seconds_until_closed, sock)
    assert elapsed != float("inf"), "half a handshake was kept open"
    assert elapsed >= 0.5, f"dropped after {elapsed:.2f} s, before the timeout"


async def test_silent_connection_is_dropped(relay):
    server = relay("--handshake-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    elapsed = await asyncio.to_thread(seconds_until_closed, sock)
    assert elapsed != float("inf"), "a silent connection was kept open"
    assert elapsed >= 0.5, f"dropped after {elapsed:.2f} s, before the timeout"


async def test_connection_that_stops_answering_is_closed_after_idle_timeout(relay):
    server = relay("--idle-timeout", "2", "--ping-interval", "0")
    client = await asyncio.to_thread(BlockingClient, server.port)
    started = time.monotonic()
    code, _ = await asyncio.to_thread(client.read_until_closed, 10 * SLOWDOWN)
    elapsed = time.monotonic() - started
    client.close()
    assert code == CLOSE["going_away"] == 1001
    assert elapsed >= 1.5, f"closed after {elapsed:.1f} s, before the idle timeout"
    assert scrape(server)["relay_rejects_total{reason=idle_timeout}"] == 1


async def test_quiet_client_that_answers_pings_stays_connected(relay):
    # Idle timeout 3 s, pings after 1 s of silence: there is time for a ping and its pong even
    # if the relay's timers only tick once a second.
    server = relay("--idle-timeout", "3", "--ping-interval", "1")
    # Like a browser, these clients send no pings of their own but answer the relay's (websockets
    # does that by itself); neither sends anything else for longer than the idle timeout.
    alice = await member(server, "alice", ping_interval=None)
    bob = await member(server, "bob", ping_interval=None)
    await bob.join((await alice.create())["room_code"])
    await asyncio.sleep(4.5)
    await alice.ws.send(b"still here")
    assert await recv_binary(bob.ws) == b"still here"
    await close_all([alice, bob])


async def test_max_connections_refuses_the_next_handshake_clearly(relay):
    server = relay("--max-connections", "2")
    alice, bob = await room_of(server, "alice", "bob")
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(server)
    assert refused.value.response.status_code >= 400
    # The two connections are unaffected, and a slot frees up when one leaves.
    await alice.ws.send(b"fine")
    assert await recv_binary(bob.ws) == b"fine"
    await alice.close()
    await recv_type(bob.ws, "user_left")
    carol = await open_ws(server)
    payload = {"room_code": bob.room_code, "user_id": "c", "display_name": ""}
    await send_json(carol, "join_room", payload)
    await recv_type(carol, "room_joined")
    await asyncio.gather(carol.close(), bob.ws.close())
