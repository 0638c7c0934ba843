"""Bad input from a client gets a clear, stable answer (docs/protocol.md "Errors" and "Close
codes"): an `error` with a machine-readable code, or a close code, never silence or a crash."""

from __future__ import annotations

import asyncio
import json

import pytest

from helpers.sansio_client import BlockingClient
from helpers.vectors import CLOSE
from helpers.ws_client import (
    close_all,
    open_ws,
    recv_error,
    recv_json,
    recv_type,
    room_of,
    send_json,
)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("text", ["{", "not json", '{"type": "x",}', "", '{"a":1} trailing'])
async def test_invalid_json_is_invalid_json_error(relay, text):
    server = relay()
    ws = await open_ws(server)
    await ws.send(text)
    message = await recv_json(ws)
    assert message["type"] == "error"
    assert message["payload"]["code"] == "INVALID_JSON"
    assert message["payload"]["error"] == "Invalid message format"
    assert isinstance(message["payload"]["details"], str) and message["payload"]["details"]
    # The connection stays usable.
    await send_json(ws, "create_room", {"user_id": "u", "display_name": "U"})
    await recv_type(ws, "room_created")
    await ws.close()


@pytest.mark.parametrize("text", ["[]", '[{"type": "create_room"}]', "42", '"create_room"', "null"])
async def test_json_that_is_not_an_object_is_invalid_message(relay, text):
    server = relay()
    ws = await open_ws(server)
    await ws.send(text)
    await recv_error(ws, "INVALID_MESSAGE")
    await ws.close()


@pytest.mark.parametrize(
    "message",
    [
        {"payload": {}},
        {"type": 5, "payload": {}},
        {"type": None, "payload": {}},
        {"type": ["join_room"], "payload": {}},
        {"type": "create_room", "payload": "not an object"},
        {"type": "create_room", "payload": [1]},
    ],
    ids=["no-type", "type-number", "type-null", "type-list", "payload-string", "payload-list"],
)
async def test_bad_envelope_is_invalid_message(relay, message):
    server = relay()
    ws = await open_ws(server)
    await ws.send(json.dumps(message))
    await recv_error(ws, "INVALID_MESSAGE")
    await ws.close()


@pytest.mark.parametrize(
    ("message_type", "payload", "field"),
    [
        ("join_room", {"user_id": "u", "display_name": "U"}, "room_code"),
        ("join_room", {"room_code": 123456, "user_id": "u", "display_name": "U"}, "room_code"),
        ("join_room", {"room_code": "ABCDEF", "display_name": "U"}, "user_id"),
        ("join_room", {"room_code": "ABCDEF", "user_id": 7, "display_name": "U"}, "user_id"),
        ("join_room", {"room_code": "ABCDEF", "user_id": "", "display_name": "U"}, "user_id"),
        ("create_room", {"display_name": "U"}, "user_id"),
        ("create_room", {"user_id": "u" * 129, "display_name": "U"}, "user_id"),
        ("create_room", {"user_id": "é" * 65, "display_name": "U"}, "user_id"),
        ("create_room", {"user_id": "u", "display_name": 3}, "display_name"),
        ("create_room", {"user_id": "u", "display_name": "d" * 257}, "display_name"),
    ],
    ids=[
        "join-no-code",
        "join-code-number",
        "join-no-user",
        "join-user-number",
        "join-user-empty",
        "create-no-user",
        "create-user-too-long",
        "create-user-130-utf8-bytes",
        "create-name-number",
        "create-name-too-long",
    ],
)
async def test_bad_field_is_invalid_field_naming_it(relay, message_type, payload, field):
    server = relay()
    ws = await open_ws(server)
    await send_json(ws, message_type, payload)
    error = await recv_error(ws, "INVALID_FIELD")
    assert error["field"] == field
    await ws.close()


@pytest.mark.parametrize(
    ("user_id", "name"), [("u" * 128, "d" * 256), ("é" * 64, "ü" * 128), ("x", "")]
)
async def test_longest_and_shortest_allowed_ids_are_accepted(relay, user_id, name):
    # Limits are in UTF-8 bytes: "é" * 64 is 128 bytes.
    server = relay()
    ws = await open_ws(server)
    await send_json(ws, "create_room", {"user_id": user_id, "display_name": name})
    await recv_type(ws, "room_created")
    await ws.close()


async def test_text_that_is_not_utf8_is_closed_1007(relay):
    server = relay()
    client = BlockingClient(server.port)
    client.send_text(b'{"type": "chat", "payload": {"x": "\xff\xfe"}}')
    code, _ = await asyncio.to_thread(client.read_until_closed)
    assert code == CLOSE["invalid_utf8"] == 1007
    client.close()


async def test_utf8_character_split_across_fragments_is_accepted(relay):
    server = relay()
    alice, bob = await room_of(server, "alice", "bob")
    text = json.dumps({"type": "chat", "payload": {"word": "Grüße ✓"}}, ensure_ascii=False)
    encoded = text.encode()
    cut = encoded.index("✓".encode()) + 1  # in the middle of a 3-byte character
    await alice.ws.send([encoded[:cut], encoded[cut:]], text=True)
    message = await recv_type(bob.ws, "chat")
    assert message["payload"] == {"word": "Grüße ✓"}
    await close_all([alice, bob])
