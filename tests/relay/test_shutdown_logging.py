"""Operations: SIGTERM/SIGINT close every connection with 1001 and exit 0 within 2 s; the log
has one line per connection or room event and never a payload or a secret."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from helpers.relay_process import SLOWDOWN
from helpers.sansio_client import BlockingClient
from helpers.vectors import CLOSE
from helpers.ws_client import (
    expect_close,
    member,
    recv,
    recv_type,
    room_of,
    send_json,
)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_signal_closes_every_connection_with_1001_and_exits_0(relay, signal_number):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    started = time.monotonic()
    server.process.send_signal(signal_number)
    codes = await asyncio.gather(expect_close(alice.ws), expect_close(bob.ws))
    assert [code for code, _ in codes] == [CLOSE["going_away"]] * 2 == [1001, 1001]
    exit_code = await asyncio.to_thread(server.process.wait, 3 * SLOWDOWN)
    elapsed = time.monotonic() - started
    server.terminate()  # records the exit for the fixture; the process is gone already
    assert exit_code == 0
    assert elapsed <= 2 * SLOWDOWN, f"exit took {elapsed:.2f} s"


async def test_shutdown_does_not_wait_for_a_receiver_that_never_reads(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    carol = await asyncio.to_thread(BlockingClient, server.port, "/ws", 16 * 1024)
    await asyncio.to_thread(
        carol.send_json,
        "join_room",
        {"room_code": alice.room_code, "user_id": "carol", "display_name": "C"},
    )
    # Fill Carol's path: 8 MiB she never reads (the relay's buffer for her is 16 MiB by default,
    # so nothing is closed or throttled yet).
    for _ in range(8):
        await alice.ws.send(b"\0" * (1024 * 1024))
        await recv(bob.ws)  # Bob reads user_joined, then the payloads as they come
    code, elapsed = await asyncio.to_thread(server.terminate, 3.0)
    carol.close()
    assert code == 0
    assert elapsed <= 2 * SLOWDOWN, f"exit took {elapsed:.2f} s with a stalled receiver"


def new_lines(server, since: int) -> list[str]:
    return server.stderr[since:]


async def test_one_log_line_per_event_without_payloads(relay):
    marker = "MARKER-7f3a9c-payload"
    server = relay()

    mark = len(server.stderr)
    alice = await member(server, "alice")
    server.wait_for_line(".", 5, start=mark)  # connection opened

    mark = len(server.stderr)
    code = (await alice.create())["room_code"]
    server.wait_for_line(code, 5, start=mark)

    bob = await member(server, "bob")
    mark = len(server.stderr)
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    server.wait_for_line(code, 5, start=mark)

    # Traffic is not an event: 50 messages with a marker in text, binary and broken JSON.
    mark = len(server.stderr)
    for index in range(25):
        await send_json(alice.ws, "chat", {"text": marker, "n": index})
        await alice.ws.send(marker.encode() * 10)
    for _ in range(50):
        await recv(bob.ws)
    await bob.ws.send('{"broken": "' + marker)
    await recv_type(bob.ws, "error")
    traffic_lines = new_lines(server, mark)
    assert len(traffic_lines) <= 1, f"log lines for plain traffic: {traffic_lines}"

    mark = len(server.stderr)
    await send_json(bob.ws, "leave_room", {})
    await recv_type(alice.ws, "user_left")
    server.wait_for_line(code, 5, start=mark)

    mark = len(server.stderr)
    await bob.close()
    server.wait_for_line(".", 5, start=mark)  # connection closed
    await alice.close()

    assert server.terminate()[0] == 0
    leaked = [line for line in server.log if marker in line]
    assert not leaked, f"payload in the log: {leaked}"


def events_since(server, mark: int) -> list[dict]:
    return [json.loads(line) for line in server.stderr[mark:]]


async def wait_for_event(server, mark: int, event: str, **fields) -> dict:
    """The first JSON log record after line `mark` with this event and these field values."""
    deadline = time.monotonic() + 5 * SLOWDOWN
    while time.monotonic() < deadline:
        for record in events_since(server, mark):
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {event} {fields} in the log: {events_since(server, mark)}")


async def test_json_log_has_one_record_per_documented_event(relay):
    # Event names and fields as documented in docs/operations.md "Logs".
    server = relay("--log-format", "json")
    mark = len(server.stderr)
    alice = await member(server, "alice", "Alice Secret-Name-1b2c")
    await wait_for_event(server, mark, "connected")

    mark = len(server.stderr)
    payload = await alice.create(features=["resume"])
    code, resume_token = payload["room_code"], payload["resume_token"]
    await wait_for_event(server, mark, "room_created", room=code, user="alice")

    bob = await member(server, "bob")
    mark = len(server.stderr)
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    await wait_for_event(server, mark, "user_joined", room=code, user="bob")

    mark = len(server.stderr)
    await send_json(bob.ws, "leave_room", {})
    await recv_type(alice.ws, "user_left")
    await wait_for_event(server, mark, "user_left", room=code, user="bob")

    mark = len(server.stderr)
    await bob.close()
    await wait_for_event(server, mark, "disconnected")

    mark = len(server.stderr)
    await send_json(alice.ws, "leave_room", {})
    await wait_for_event(server, mark, "room_deleted", room=code)
    await alice.close()

    assert server.terminate()[0] == 0
    records = [json.loads(line) for line in server.stderr]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "event"} <= set(record), record
    assert [r["event"] for r in records].count("room_created") == 1
    assert [r["event"] for r in records].count("user_joined") == 1
    log = "\n".join(server.log)
    assert "Secret-Name-1b2c" not in log, "display name in the log"
    assert resume_token not in log, "resume token in the log"
