"""An independent WebSocket server for the transport tests, built on the `websockets` library.

Run as a subprocess (so a test can SIGSTOP it, and so its CPU use does not compete with the
client for the test's GIL). Prints `listening on HOST:PORT`, then one line per closed
connection: `closed PATH CODE REASON` (the close code the client sent, as the server saw it).

Paths:
  /echo            every message back as received (text as text, binary as binary)
  /hash            answers each message with the text "<length> <sha256 hex>"
  /headers         sends the request's headers as one JSON text message
  /close/CODE      closes at once with CODE and reason "server says bye"
  /fragmented      sends a 3 MiB binary message in 7 fragments and a text one in 3, then echoes
  /ping            pings the client and sends the text "pong received" once the pong arrives
  /bad-utf8        sends a text message that is not UTF-8, then waits for the close
  /reject          answers the opening handshake with HTTP 403 instead of upgrading

    python tests/transport/ws_server.py [--certfile F --keyfile F]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import ssl

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def handle(connection: ServerConnection) -> None:
    path = connection.request.path
    try:
        if path == "/echo":
            async for message in connection:
                await connection.send(message)
        elif path == "/hash":
            async for message in connection:
                data = message.encode() if isinstance(message, str) else message
                await connection.send(f"{len(data)} {hashlib.sha256(data).hexdigest()}")
        elif path == "/headers":
            await connection.send(json.dumps(dict(connection.request.headers.raw_items())))
            await connection.wait_closed()
        elif path == "/fragmented":
            await connection.send(fragments_of(fragmented_payload(), 7))
            await connection.send(fragments_of("fragmented text: é ✓ 𝄞" * 1000, 3))
            async for message in connection:
                await connection.send(message)
        elif path == "/ping":
            pong = await connection.ping(b"are you there")
            await asyncio.wait_for(pong, 10)
            await connection.send("pong received")
            await connection.wait_closed()
        elif path == "/bad-utf8":
            await connection.send(b"valid start \xff\xfe not UTF-8", text=True)
            await connection.wait_closed()
        elif path.startswith("/close/"):
            await connection.close(int(path.rsplit("/", 1)[1]), "server says bye")
        else:
            await connection.close(1008, "unknown path")
    except ConnectionClosed:
        pass
    finally:
        await connection.wait_closed()
        received = connection.protocol.close_rcvd
        code = received.code if received else "none"
        reason = received.reason if received else ""
        print(f"closed {path} {code} {reason}", flush=True)


def fragmented_payload() -> bytes:
    """The binary message /fragmented sends (tests rebuild it the same way)."""
    return bytes(range(256)) * (3 * 4096)


def fragments_of(message: str | bytes, count: int):
    """An async iterator over `count` nearly equal pieces: websockets sends it fragmented."""
    step = -(-len(message) // count)

    async def pieces():
        for start in range(0, len(message), step):
            yield message[start : start + step]

    return pieces()


def reject(connection, request):
    if request.path == "/reject":
        return connection.respond(403, "no WebSocket here\n")
    return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    context = None
    if args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)

    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        handle,
        "127.0.0.1",
        0,
        ssl=context,
        max_size=None,
        compression=None,
        ping_interval=None,
        max_queue=4,
        process_request=reject,
    ) as server:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
