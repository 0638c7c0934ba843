"""An independent WebSocket server for the transport tests, built on the `websockets` library.

Run as a subprocess (so a test can SIGSTOP it, and so its CPU use does not compete with the
client for the test's GIL). Prints `listening on HOST:PORT`, then one line per closed
connection: `closed PATH CODE REASON` (the close code the client sent, as the server saw it).

Paths:
  /echo            every message back as received (text as text, binary as binary)
  /hash            answers each message with the text "<length> <sha256 hex>"
  /headers         sends the request's headers as one JSON text message
  /close/CODE      closes at once with CODE and reason "server says bye"

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
    ) as server:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
