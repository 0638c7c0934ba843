"""Our client names the room in its relay URL (`?room=CODE`), so that HAProxy's consistent
hashing (deploy/haproxy.cfg) puts a room's members on one node; other query parameters (the
access token) stay as they were."""

from __future__ import annotations

import urllib.parse

from segmentation_suite.network.client import _with_room


def query(url: str) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)


def test_room_is_added_to_the_url():
    assert _with_room("wss://relay.example/ws", "K7QX2M") == "wss://relay.example/ws?room=K7QX2M"


def test_other_parameters_are_kept_and_a_stale_room_replaced():
    url = _with_room("ws://127.0.0.1:8080/ws?token=abc&room=OLD234", "NEW234")
    assert query(url) == [("token", "abc"), ("room", "NEW234")]
    assert urllib.parse.urlsplit(url).path == "/ws"


def test_no_room_yet_leaves_the_url_alone():
    assert _with_room("ws://127.0.0.1:8080/ws", None) == "ws://127.0.0.1:8080/ws"
