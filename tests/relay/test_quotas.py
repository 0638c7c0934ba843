"""Room quotas (docs/operations.md "Abuse limits"): one address cannot fill the relay's room
table, neither with create_room over WebSocket (rooms outlive their creator in the resume
grace) nor with POST /api/create-room reservations; another address still gets rooms."""

from __future__ import annotations

import http.client
import json

import pytest
from websockets.asyncio.client import connect

from helpers.http_metrics import scrape
from helpers.relay_process import SLOWDOWN
from helpers.ws_client import TIMEOUT, recv_json, recv_type, send_json

pytestmark = pytest.mark.asyncio

ATTEMPTS = 300
QUOTA = 64  # the default --max-rooms-per-address


async def create_and_drop(server, source: str) -> str:
    """One create_room with resume from `source`, then the connection drops; the answer type."""
    ws = await connect(
        server.url + "/ws", local_addr=(source, 0), open_timeout=TIMEOUT, max_size=None
    )
    payload = {"user_id": "u", "display_name": "", "features": ["resume"]}
    await send_json(ws, "create_room", payload)
    answer = await recv_json(ws)
    ws.transport.abort()  # no goodbye: the room waits out its resume grace
    return answer["type"] if answer["type"] != "error" else answer["payload"]["code"]


def reserve(server, source: str) -> int:
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=5 * SLOWDOWN, source_address=(source, 0)
    )
    try:
        connection.request("POST", "/api/create-room")
        response = connection.getresponse()
        body = json.loads(response.read())
        assert ("room_code" in body) == (response.status == 200), body
        return response.status
    finally:
        connection.close()


async def test_300_create_and_drop_from_one_address_stay_within_the_quota(relay):
    server = relay(
        "--create-rate", "100000", per_address=False
    )  # the quota alone, not the creation rate
    answers = [await create_and_drop(server, "127.0.0.1") for _ in range(ATTEMPTS)]
    assert answers.count("room_created") == QUOTA
    assert answers.count("TOO_MANY_ROOMS") == ATTEMPTS - QUOTA
    metrics = scrape(server)
    assert metrics["relay_rooms"] == QUOTA
    assert metrics["relay_rejects_total{reason=rooms_per_address}"] == ATTEMPTS - QUOTA
    # Another address still creates.
    assert await create_and_drop(server, "127.0.0.2") == "room_created"


async def test_default_creation_rate_and_quota_hold_300_attempts(relay):
    server = relay(per_address=False)
    answers = [await create_and_drop(server, "127.0.0.1") for _ in range(ATTEMPTS)]
    created = answers.count("room_created")
    assert 0 < created <= QUOTA
    assert set(answers) <= {"room_created", "RATE_LIMITED", "TOO_MANY_ROOMS"}
    assert await create_and_drop(server, "127.0.0.2") == "room_created"


async def test_300_reservations_from_one_address_stay_within_the_quota(relay):
    server = relay("--create-rate", "100000", per_address=False)
    statuses = [reserve(server, "127.0.0.1") for _ in range(ATTEMPTS)]
    assert statuses.count(200) == QUOTA
    assert statuses.count(429) == ATTEMPTS - QUOTA
    assert reserve(server, "127.0.0.2") == 200
    # Reservations and WebSocket rooms share the quota.
    assert await create_and_drop(server, "127.0.0.1") == "TOO_MANY_ROOMS"


async def test_reservations_are_rate_limited_per_address(relay):
    server = relay("--create-rate", "10", per_address=False)
    statuses = [reserve(server, "127.0.0.1") for _ in range(30)]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20
    assert reserve(server, "127.0.0.2") == 200
    ws = await connect(server.url + "/ws", open_timeout=TIMEOUT)
    await send_json(ws, "create_room", {"user_id": "u", "display_name": ""})
    assert (await recv_type(ws, "error"))["payload"]["code"] == "RATE_LIMITED"
    await ws.close()
