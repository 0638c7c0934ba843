"""Operations: SIGTERM/SIGINT close every connection with 1001 and exit 0 within 2 s; the log
has one line per connection or room event and never a payload or a secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import signal
import socket
import time

import pytest

from helpers.relay_process import SLOWDOWN
from helpers.sansio_client import BlockingClient
from helpers.vectors import CLOSE
from helpers.ws_client import (
    expect_close,
    member,
    open_ws,
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


async def test_one_log_line_per_event_without_payloads(relay, tmp_path):
    marker = "MARKER-7f3a9c-payload"
    secret_file = tmp_path / "secret"
    server = relay("--secret-file", str(secret_file))

    mark = len(server.stderr)
    alice = await member(server, "alice")
    server.wait_for_line(".", 5, start=mark)  # connection opened

    mark = len(server.stderr)
    code = (await alice.create())["room_code"]
    tag = log_tag(secret_file.read_bytes(), code)
    server.wait_for_line(f"room_created room={tag}", 5, start=mark)

    bob = await member(server, "bob")
    mark = len(server.stderr)
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    server.wait_for_line(f"user_joined room={tag}", 5, start=mark)

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
    server.wait_for_line(f"user_left room={tag}", 5, start=mark)

    mark = len(server.stderr)
    await bob.close()
    server.wait_for_line(".", 5, start=mark)  # connection closed
    await alice.close()

    assert server.terminate()[0] == 0
    leaked = [line for line in server.log if marker in line or code in line]
    assert not leaked, f"payload or room code in the log: {leaked}"


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


def log_tag(secret: bytes, code: str) -> str:
    """docs/operations.md "Logs": a room appears as the first 8 hex digits of
    HMAC-SHA256(relay secret, "log\\n" + code), never as its code."""
    return hmac.new(secret, f"log\n{code}".encode(), hashlib.sha256).hexdigest()[:8]


async def test_json_log_has_one_record_per_documented_event(relay, tmp_path):
    # Event names and fields as documented in docs/operations.md "Logs".
    secret_file = tmp_path / "secret"
    server = relay("--log-format", "json", "--secret-file", str(secret_file))
    mark = len(server.stderr)
    alice = await member(server, "alice", "Alice Secret-Name-1b2c")
    await wait_for_event(server, mark, "connected")

    mark = len(server.stderr)
    payload = await alice.create(features=["resume"])
    code, resume_token = payload["room_code"], payload["resume_token"]
    tag = log_tag(secret_file.read_bytes(), code)
    await wait_for_event(server, mark, "room_created", room=tag, user="alice")

    bob = await member(server, "bob")
    mark = len(server.stderr)
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    await wait_for_event(server, mark, "user_joined", room=tag, user="bob")

    mark = len(server.stderr)
    await send_json(bob.ws, "leave_room", {})
    await recv_type(alice.ws, "user_left")
    await wait_for_event(server, mark, "user_left", room=tag, user="bob")

    mark = len(server.stderr)
    await bob.close()
    await wait_for_event(server, mark, "disconnected")

    mark = len(server.stderr)
    await send_json(alice.ws, "leave_room", {})
    await wait_for_event(server, mark, "room_deleted", room=tag)
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
    assert code not in log, "a room code in the log"


async def test_no_room_code_in_any_log_line_of_a_session(relay):
    server = relay("--log-level", "debug")
    codes = set()
    host = await member(server, "host")
    created = await host.create(features=["resume"])
    codes.add(created["room_code"])
    bob = await member(server, "bob")
    joined = await bob.join(created["room_code"], features=["resume"])
    await recv_type(host.ws, "user_joined")
    # A drop and a resume, a wrong code, a second room, a reservation, a leave.
    bob.ws.transport.abort()
    again = await open_ws(server)
    resume = {
        "room_code": created["room_code"],
        "user_id": "bob",
        "display_name": "Bob",
        "resume_token": joined["resume_token"],
    }
    await send_json(again, "resume", resume)
    await recv_type(again, "room_joined")
    await send_json(again, "join_room", {"room_code": "ZZZZZZ", "user_id": "x"})
    await recv_type(again, "error")
    other = await member(server, "carol")
    codes.add((await other.create())["room_code"])
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5 * SLOWDOWN)
    connection.request("POST", "/api/create-room")
    codes.add(json.loads(connection.getresponse().read())["room_code"])
    connection.close()
    await send_json(host.ws, "leave_room", {})
    await asyncio.gather(host.close(), again.close(), other.close())
    assert server.terminate()[0] == 0
    assert len(codes) == 3
    lines = [line for line in server.log if any(code in line for code in codes)]
    assert lines == [], f"room codes in the log: {lines}"
    assert sum("room=" in line for line in server.log) >= 6  # rooms are still named, by tag


async def test_a_flood_of_refusals_is_summarised(relay, tmp_path):
    token = tmp_path / "token"
    token.write_text("flood-test-token\n")
    server = relay("--token-file", str(token))
    for _ in range(200):
        await asyncio.to_thread(refused_upgrade, server.port)
    assert server.terminate()[0] == 0  # stopping writes the summary still pending
    lines = [
        line
        for line in server.stderr
        if "peer=127.0.0.1" in line and ("upgrade_refused" in line or "refusals" in line)
    ]
    # One line at the first refusal, then one summary per 10 s interval (and at the stop): a
    # handful, whatever the machine's speed, and together they account for every refusal.
    assert 2 <= len(lines) <= 10, lines
    assert lines[0].split(" ", 2)[2].startswith("upgrade_refused peer=127.0.0.1 status=401")
    counted = 1 + sum(
        int(field.split("=")[1])
        for line in lines[1:]
        for field in line.split()
        if field.startswith("count=")
    )
    assert counted == 200, lines
    assert "flood-test-token" not in "\n".join(server.log)


def refused_upgrade(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOWDOWN)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 401")
    sock.close()
