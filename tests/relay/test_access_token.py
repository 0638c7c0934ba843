"""The optional shared access token (docs/protocol.md "HTTP"): every request but GET / and
GET /health must carry it, as `Authorization: Bearer` or `?token=`, or is answered 401 before
any WebSocket upgrade; the token is never written to the log."""

from __future__ import annotations

import contextlib
import http.client
import secrets

import pytest
from websockets.exceptions import InvalidHandshake, InvalidStatus

from helpers.ws_client import open_ws, recv_type, send_json

pytestmark = pytest.mark.asyncio


@pytest.fixture
def token():
    return "tok-" + secrets.token_hex(16)


def status_of(relay, method: str, path: str, headers: dict | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


async def round_trip(ws) -> None:
    await send_json(ws, "create_room", {"user_id": "u", "display_name": "U"})
    await recv_type(ws, "room_created")
    await ws.close()


async def refused(relay, path: str, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as caught:
        await open_ws(relay, path, **kwargs)
    return caught.value.response.status_code


async def test_websocket_needs_the_token(relay, token):
    server = relay(env={"RELAY_TOKEN": token})
    assert await refused(server, "/ws") == 401
    assert await refused(server, "/ws?token=wrong") == 401
    assert await refused(server, "/ws?token=" + token[:-1]) == 401
    assert await refused(server, "/ws", additional_headers={"Authorization": "Bearer x"}) == 401
    assert await refused(server, "/ws", additional_headers={"Authorization": token}) == 401
    assert await refused(server, "/room/ABCDEF") == 401

    await round_trip(await open_ws(server, additional_headers={"Authorization": f"Bearer {token}"}))
    await round_trip(await open_ws(server, f"/ws?token={token}"))
    await round_trip(await open_ws(server, f"/room/ABCDEF?token={token}"))


async def test_http_endpoints_need_the_token_except_health(relay, token):
    server = relay(env={"RELAY_TOKEN": token})
    bearer = {"Authorization": f"Bearer {token}"}
    assert status_of(server, "GET", "/") == 200
    assert status_of(server, "GET", "/health") == 200
    assert status_of(server, "POST", "/api/create-room") == 401
    assert status_of(server, "POST", "/api/create-room", bearer) == 200
    assert status_of(server, "POST", f"/api/create-room?token={token}") == 200
    assert status_of(server, "GET", "/metrics") == 401
    assert status_of(server, "GET", "/metrics", bearer) == 200


async def test_token_from_a_file(relay, token, tmp_path):
    path = tmp_path / "token"
    path.write_text(token)
    server = relay("--token-file", str(path))
    assert await refused(server, "/ws") == 401
    await round_trip(await open_ws(server, f"/ws?token={token}"))


async def test_the_token_is_never_logged(relay, token):
    server = relay("--log-level", "debug", env={"RELAY_TOKEN": token})
    # Only the log matters here; how the refusal looks is tested above.
    with contextlib.suppress(InvalidHandshake):
        await open_ws(server, "/ws?token=wrong")
    await round_trip(await open_ws(server, f"/ws?token={token}"))
    await round_trip(await open_ws(server, additional_headers={"Authorization": f"Bearer {token}"}))
    status_of(server, "GET", f"/metrics?token={token}")
    code, _ = server.terminate()
    assert code == 0
    assert server.stderr, "the relay logged nothing at debug level"
    leaked = [line for line in server.log if token in line]
    assert not leaked, f"token in the log: {leaked}"
