"""An independent client for relay tests: the `websockets` library plus small protocol helpers.

Every wait is bounded: `recv_json` and friends fail the test after `TIMEOUT` seconds instead
of hanging. `Member` bundles a connection with the identity it joined under.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from helpers.relay_process import SLOWDOWN, RelayProcess

TIMEOUT = 5.0 * SLOWDOWN

#: The features a member may announce, in the order the relay lists them in a user-list entry.
MEMBER_FEATURES = ("frame_header", "directed", "resume", "flow_control", "host_id")


async def open_ws(relay: RelayProcess, path: str = "/ws", **kwargs) -> ClientConnection:
    """Connects to the relay; no message size limit, bounded open/close handshakes."""
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", TIMEOUT)
    return await connect(relay.url + path, **kwargs)


async def send_json(ws: ClientConnection, message_type, payload=None, **top_level) -> None:
    message = {"type": message_type, "payload": {} if payload is None else payload}
    message.update(top_level)
    await ws.send(json.dumps(message))


async def recv(ws: ClientConnection, timeout: float = TIMEOUT):
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        raise AssertionError(f"no message within {timeout} s") from None


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict:
    message = await recv(ws, timeout)
    assert isinstance(message, str), f"expected a text message, got {len(message)} binary bytes"
    return json.loads(message)


async def recv_type(ws: ClientConnection, message_type: str, timeout: float = TIMEOUT) -> dict:
    """The next message, which must be a text message of this type; returns the whole message."""
    message = await recv_json(ws, timeout)
    assert message.get("type") == message_type, f"expected {message_type}, got {message}"
    return message


async def recv_binary(ws: ClientConnection, timeout: float = TIMEOUT) -> bytes:
    message = await recv(ws, timeout)
    assert isinstance(message, bytes), f"expected a binary message, got text {message[:200]!r}"
    return message


async def recv_error(ws: ClientConnection, code: str, timeout: float = TIMEOUT) -> dict:
    """The next message must be `error` with this code; returns its payload."""
    message = await recv_type(ws, "error", timeout)
    assert message["payload"].get("code") == code, f"expected error {code}, got {message}"
    assert isinstance(message["payload"].get("error"), str) and message["payload"]["error"]
    return message["payload"]


async def expect_close(ws: ClientConnection, timeout: float = TIMEOUT) -> tuple[int | None, list]:
    """Reads until the relay closes the connection; returns (close code, messages before it).

    The close code is None when the TCP connection ended without a Close frame.
    """
    messages = []

    async def drain():
        while True:
            try:
                messages.append(await ws.recv())
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd is not None else None

    try:
        code = await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        raise AssertionError(f"relay did not close the connection within {timeout} s") from None
    return code, messages


async def expect_silence(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Nothing arrives for a short while. Prefer ordering markers; use this only at the end."""
    try:
        message = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message: {str(message)[:300]}")


@dataclass
class Member:
    """A connection that is (or will be) in a room under `user_id` / `display_name`."""

    ws: ClientConnection
    user_id: str
    display_name: str
    room_code: str | None = None
    last_payload: dict = field(default_factory=dict)
    # Announce `frame_header` (protocol 2) when creating or joining, as our client does: only
    # such members are sent framed binaries. False: an original (v1) client.
    speaks_frames: bool = False
    announced: list = field(default_factory=list)

    @property
    def entry(self) -> dict:
        """This member's entry in a user list: a protocol-2 member's lists its features."""
        entry = {"user_id": self.user_id, "display_name": self.display_name}
        if "frame_header" in self.announced:
            entry["features"] = [f for f in MEMBER_FEATURES if f in self.announced]
        return entry

    def _identity(self, payload_extra: dict) -> dict:
        features = list(payload_extra.pop("features", []))
        if self.speaks_frames and "frame_header" not in features:
            features.insert(0, "frame_header")
        self.announced = features
        payload = {"user_id": self.user_id, "display_name": self.display_name, **payload_extra}
        if features:
            payload["features"] = features
        return payload

    async def create(self, **payload_extra) -> dict:
        await send_json(self.ws, "create_room", self._identity(payload_extra))
        message = await recv_type(self.ws, "room_created")
        self.room_code = message["payload"]["room_code"]
        self.last_payload = message["payload"]
        return message["payload"]

    async def join(self, code: str, **payload_extra) -> dict:
        await send_json(self.ws, "join_room", {"room_code": code, **self._identity(payload_extra)})
        message = await recv_type(self.ws, "room_joined")
        self.room_code = message["payload"]["room_code"]
        self.last_payload = message["payload"]
        return message["payload"]

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), TIMEOUT)


async def member(
    relay: RelayProcess,
    user_id: str,
    display_name: str | None = None,
    speaks_frames: bool = False,
    **kw,
):
    ws = await open_ws(relay, **kw)
    name = display_name if display_name is not None else user_id.title()
    return Member(ws, user_id, name, speaks_frames=speaks_frames)


async def room_of(
    relay: RelayProcess, *user_ids: str, speaks_frames=False, **create_extra
) -> list[Member]:
    """A room created by the first user and joined by the others, in order; every `user_joined`
    the earlier members got is consumed, so each member's next message is a fresh one.
    `speaks_frames`: True (all), False (none) or the ids of the protocol-2 members."""

    def frames(user_id: str) -> bool:
        return speaks_frames if isinstance(speaks_frames, bool) else user_id in speaks_frames

    members = [await member(relay, u, speaks_frames=frames(u)) for u in user_ids]
    code = (await members[0].create(**create_extra))["room_code"]
    for index, joiner in enumerate(members[1:], start=1):
        await joiner.join(code)
        for earlier in members[:index]:
            await recv_type(earlier.ws, "user_joined")
    return members


async def close_all(members) -> None:
    await asyncio.gather(*(m.ws.close() for m in members), return_exceptions=True)
