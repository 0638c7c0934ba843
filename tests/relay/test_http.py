"""The relay's HTTP endpoints (docs/protocol.md §1 "HTTP"): health, metrics, the 426 answer to a
plain request on a WebSocket path, room reservation over HTTP, and 404 for everything else."""

from __future__ import annotations

import json
import re

import pytest

from helpers.http_metrics import request, scrape
from helpers.vectors import PROTOCOL, is_room_code
from helpers.ws_client import Member, open_ws, recv_binary, recv_type, room_of, send_json

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("path", ["/", "/health"])
def test_health(relay, path):
    server = relay()
    status, headers, body = request(server, "GET", path)
    assert status == 200
    assert headers["Content-Type"].split(";")[0].strip() == "application/json"
    document = json.loads(body)
    assert set(document) == {"status", "service", "version"}
    assert document["status"] == PROTOCOL["health"]["status"] == "ok"
    assert document["service"] == PROTOCOL["health"]["service"] == "Segmentation Suite Relay"
    assert re.fullmatch(r"\d+\.\d+\.\d+", document["version"]), document["version"]


@pytest.mark.parametrize("path", ["/ws", "/room/ABC", "/room/K7QX2M"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_websocket_path_without_upgrade_is_426(relay, path, method):
    server = relay()
    status, _, body = request(server, method, path)
    assert (status, body) == (426, b"Expected WebSocket")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/api/create-room"), ("GET", "/wsx"), ("DELETE", "/x/y")],
)
def test_anything_else_is_404(relay, method, path):
    server = relay()
    status, _, body = request(server, method, path)
    assert (status, body) == (404, b"Not Found")


async def test_create_room_over_http_reserves_a_joinable_room(relay):
    server = relay()
    status, headers, body = request(server, "POST", "/api/create-room")
    assert status == 200
    assert headers["Content-Type"].split(";")[0].strip() == "application/json"
    document = json.loads(body)
    assert set(document) == {"room_code"}
    code = document["room_code"]
    assert is_room_code(code), code

    joiner = Member(await open_ws(server), "u1", "First")
    payload = await joiner.join(code)
    assert payload["room_code"] == code
    assert payload["users"] == [joiner.entry]
    await joiner.close()


def test_create_room_over_http_gives_distinct_codes(relay):
    server = relay()
    codes = [
        json.loads(request(server, "POST", "/api/create-room")[2])["room_code"] for _ in range(20)
    ]
    assert len(set(codes)) == 20


# The metric names an operator's dashboard relies on (docs/operations.md).
GAUGES = ["relay_connections", "relay_rooms"]
COUNTERS = [
    f"relay_{what}_total{{kind={kind}}}"
    for what in ("messages_received", "messages_sent", "bytes_received", "bytes_sent")
    for kind in ("text", "binary")
]


async def test_metrics_count_connections_rooms_and_traffic(relay):
    server = relay()
    before = scrape(server)
    for name in [*GAUGES, *COUNTERS, "relay_connections_total", "relay_rooms_created_total"]:
        assert name in before, f"{name} missing from /metrics: {sorted(before)}"
    assert before["relay_rooms"] == 0

    alice, bob = await room_of(server, "alice", "bob")
    await alice.ws.send(b"\x01" * 1000)
    assert await recv_binary(bob.ws) == b"\x01" * 1000
    await send_json(alice.ws, "chat", {"text": "hi"})
    await recv_type(bob.ws, "chat")

    during = scrape(server)
    assert during["relay_connections"] == before["relay_connections"] + 2
    assert during["relay_rooms"] == 1
    assert during["relay_connections_total"] >= before["relay_connections_total"] + 2
    assert during["relay_rooms_created_total"] == before["relay_rooms_created_total"] + 1
    binary_in = "relay_bytes_received_total{kind=binary}"
    binary_out = "relay_bytes_sent_total{kind=binary}"
    assert during[binary_in] == before[binary_in] + 1000
    assert during[binary_out] == before[binary_out] + 1000
    for name in ("relay_messages_received_total", "relay_messages_sent_total"):
        assert during[f"{name}{{kind=binary}}"] == before[f"{name}{{kind=binary}}"] + 1
        # create, join, chat in; created, joined, user_joined, chat out (at least)
        assert during[f"{name}{{kind=text}}"] >= before[f"{name}{{kind=text}}"] + 3

    await alice.close()
    await bob.close()
    # close() returned when the relay closed the TCP connections, after it dropped them.
    after = scrape(server)
    assert after["relay_connections"] == before["relay_connections"]
    assert after["relay_rooms"] == 0


async def test_metrics_count_rejects_and_drops_by_reason(relay):
    server = relay()
    before = scrape(server)
    ws = await open_ws(server)
    await send_json(ws, "join_room", {"room_code": "ZZZZZZ", "user_id": "u", "display_name": "U"})
    await recv_type(ws, "error")
    await send_json(ws, "chat", {})  # not in a room: dropped
    await ws.send(b"bytes")  # likewise
    await send_json(ws, "join_room", {"room_code": "ZZZZZZ", "user_id": "u", "display_name": "U"})
    await recv_type(ws, "error")  # the drops above were processed before this answer
    after = scrape(server)
    name = "relay_rejects_total{reason=room_not_found}"
    assert after[name] == before[name] + 2
    name = "relay_messages_dropped_total{reason=not_in_room}"
    assert after[name] == before[name] + 2
    await ws.close()
