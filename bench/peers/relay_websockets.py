"""Peer relay for the benchmark: docs/protocol.md part 1 on the Python `websockets` server.

Written the way a Python developer would write this relay with `websockets` (one coroutine per
connection, per-message compression off, 64 MiB message cap), so that bench/relay_bench.py can
set relay_server against a fair, idiomatic alternative that speaks exactly the same protocol.

    python bench/peers/relay_websockets.py --port 0    # prints "listening on HOST:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import secrets
import signal
import time
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

VERSION = "0.1.0"
SERVICE = "Segmentation Suite Relay"
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6
RESERVATION_SECONDS = 120.0
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_USER_ID_BYTES = 128
MAX_DISPLAY_NAME_BYTES = 256


@dataclass
class Member:
    connection: ServerConnection
    user_id: str
    display_name: str
    room: Room


@dataclass
class Room:
    code: str
    # Insertion-ordered, so that `users` lists members in joining order.
    members: dict[ServerConnection, Member] = field(default_factory=dict)

    def users(self) -> list[dict[str, str]]:
        return [
            {"user_id": m.user_id, "display_name": m.display_name} for m in self.members.values()
        ]


class FieldError(Exception):
    def __init__(self, name: str, why: str):
        super().__init__(f"{name} {why}")
        self.name = name


class Relay:
    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        # Codes handed out by POST /api/create-room, held empty until their deadline.
        self.reserved: dict[str, float] = {}
        self.members: dict[ServerConnection, Member] = {}

    # --- rooms ------------------------------------------------------------------------------

    def new_code(self) -> str:
        self.expire_reservations()
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if code not in self.rooms and code not in self.reserved:
                return code

    def expire_reservations(self) -> None:
        now = time.monotonic()
        for code in [c for c, deadline in self.reserved.items() if deadline < now]:
            del self.reserved[code]

    def enter(self, connection: ServerConnection, room: Room, user_id: str, name: str) -> Member:
        member = Member(connection, user_id, name, room)
        room.members[connection] = member
        self.members[connection] = member
        return member

    async def leave(self, connection: ServerConnection) -> None:
        member = self.members.pop(connection, None)
        if member is None:
            return
        room = member.room
        del room.members[connection]
        if not room.members:
            del self.rooms[room.code]
            return
        await send_to(
            [m.connection for m in room.members.values()],
            "user_left",
            {"user_id": member.user_id, "display_name": member.display_name, "users": room.users()},
        )

    async def forward(self, sender: Member, message: str | bytes) -> None:
        others = [c for c in sender.room.members if c is not sender.connection]
        await send_all(others, message)

    # --- messages -----------------------------------------------------------------------------

    async def on_text(self, connection: ServerConnection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            error = {"error": "Invalid message format", "details": str(exc), "code": "INVALID_JSON"}
            await send_to([connection], "error", error)
            return
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("type"), str)
            or not isinstance(message.get("payload"), dict)
        ):
            error = {
                "error": "A message must be an object with a string type and an object payload",
                "code": "INVALID_MESSAGE",
            }
            await send_to([connection], "error", error)
            return
        kind, payload = message["type"], message["payload"]
        try:
            if kind == "create_room":
                await self.create_room(connection, payload)
            elif kind == "join_room":
                await self.join_room(connection, payload)
            elif kind == "leave_room":
                await self.leave(connection)
            else:
                sender = self.members.get(connection)
                if sender is not None:
                    message["sender_id"] = sender.user_id
                    message["sender_name"] = sender.display_name
                    await self.forward(sender, json.dumps(message, separators=(",", ":")))
        except FieldError as exc:
            error = {"error": f"Invalid field: {exc}", "code": "INVALID_FIELD", "field": exc.name}
            await send_to([connection], "error", error)

    async def create_room(self, connection: ServerConnection, payload: dict) -> None:
        user_id, name = identity(payload)
        await self.leave(connection)
        room = Room(self.new_code())
        self.rooms[room.code] = room
        self.enter(connection, room, user_id, name)
        await send_to([connection], "room_created", {"room_code": room.code})

    async def join_room(self, connection: ServerConnection, payload: dict) -> None:
        code = payload.get("room_code")
        if not isinstance(code, str):
            raise FieldError("room_code", "must be a string")
        user_id, name = identity(payload)
        code = code.upper()
        self.expire_reservations()
        room = self.rooms.get(code)
        if room is None and code in self.reserved:
            del self.reserved[code]
            room = self.rooms[code] = Room(code)
        if room is None:
            error = {"error": "Room not found", "code": "ROOM_NOT_FOUND"}
            await send_to([connection], "error", error)
            return
        await self.leave(connection)
        if code not in self.rooms:  # leaving deleted the room we were already in
            self.rooms[code] = room
        others = list(room.members)
        self.enter(connection, room, user_id, name)
        users = room.users()
        await send_to([connection], "room_joined", {"room_code": code, "users": users})
        await send_to(
            others, "user_joined", {"user_id": user_id, "display_name": name, "users": users}
        )

    # --- connections and HTTP -----------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        try:
            async for message in connection:
                if isinstance(message, str):
                    await self.on_text(connection, message)
                else:
                    sender = self.members.get(connection)
                    if sender is not None:
                        await self.forward(sender, message)
        finally:
            await self.leave(connection)

    def http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        method = getattr(request, "method", "GET")
        if path in ("/", "/health") and method == "GET":
            body = {"status": "ok", "service": SERVICE, "version": VERSION}
            return json_response(connection, body)
        if path == "/api/create-room" and method == "POST":
            code = self.new_code()
            self.reserved[code] = time.monotonic() + RESERVATION_SECONDS
            return json_response(connection, {"room_code": code})
        if path == "/ws" or path.startswith("/room/"):
            upgrade = request.headers.get("Upgrade", "")
            if "websocket" in upgrade.lower():
                return None
            return connection.respond(http.HTTPStatus.UPGRADE_REQUIRED, "Expected WebSocket")
        return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found")


def identity(payload: dict) -> tuple[str, str]:
    user_id = payload.get("user_id")
    name = payload.get("display_name")
    if not isinstance(user_id, str) or not 1 <= len(user_id.encode()) <= MAX_USER_ID_BYTES:
        raise FieldError("user_id", f"must be a string of 1 to {MAX_USER_ID_BYTES} bytes")
    if not isinstance(name, str) or len(name.encode()) > MAX_DISPLAY_NAME_BYTES:
        raise FieldError(
            "display_name", f"must be a string of at most {MAX_DISPLAY_NAME_BYTES} bytes"
        )
    return user_id, name


def json_response(connection: ServerConnection, body: dict) -> Response:
    response = connection.respond(http.HTTPStatus.OK, json.dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


async def send_to(connections: list[ServerConnection], message_type: str, payload: dict) -> None:
    text = json.dumps({"type": message_type, "payload": payload}, separators=(",", ":"))
    await send_all(connections, text)


async def send_all(connections: list[ServerConnection], message: str | bytes) -> None:
    if len(connections) == 1:
        await quiet_send(connections[0], message)
    elif connections:
        # Awaiting every send keeps websockets' write-buffer backpressure on the sender.
        await asyncio.gather(*(quiet_send(c, message) for c in connections))


async def quiet_send(connection: ServerConnection, message: str | bytes) -> None:
    # A member that went away while we forwarded is cleaned up by its own handler.
    with contextlib.suppress(Exception):
        await connection.send(message)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8787, help="port; 0 picks a free one")
    args = parser.parse_args()
    relay = Relay()
    async with serve(
        relay.handle,
        args.listen,
        args.port,
        process_request=relay.http,
        compression=None,
        max_size=MAX_MESSAGE_SIZE,
        backlog=1024,
    ) as server:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
