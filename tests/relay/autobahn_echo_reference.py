"""A minimal WebSocket echo server built on the `websockets` library (test-only fixture).

It stands in for the relay's `--enable-echo` endpoint when checking that the Autobahn harness
in test_autobahn.py itself works: same command-line shape, same `listening on HOST:PORT` line,
same `/echo` path, every message echoed back as received (text as text, binary as binary).
Like the relay it does not negotiate permessage-deflate, and it accepts messages up to the
relay's default `--max-message-size` (64 MiB) so the 9.* cases (up to 16 MiB) fit.

    python tests/relay/autobahn_echo_reference.py --port 0 --listen 127.0.0.1
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

MAX_MESSAGE_SIZE = 64 * 1024 * 1024


async def echo(connection: ServerConnection, text_as_binary: bool) -> None:
    try:
        while True:
            if text_as_binary:
                message = await connection.recv(decode=False)
                await connection.send(message)
                continue
            # Fragment by fragment, as the relay forwards: a message of many small fragments
            # is never reassembled here (websockets caps reassembly at 4096 fragments).
            await connection.send(connection.recv_streaming())
    except ConnectionClosed:
        pass  # the peer failed the connection; websockets already answered per RFC 6455


def only_echo_path(connection: ServerConnection, request: Request) -> Response | None:
    # The relay serves conformance only on /echo; refusing other paths keeps a harness that
    # forgot the path from passing against this fixture and then failing against the relay.
    if request.path.split("?", 1)[0] != "/echo":
        return connection.respond(404, "Not Found\n")
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument(
        "--text-as-binary",
        action="store_true",
        help="deliberately broken: echo text messages as binary (a negative control)",
    )
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))

    async with serve(
        functools.partial(echo, text_as_binary=args.text_as_binary),
        args.listen,
        args.port,
        process_request=only_echo_path,
        compression=None,
        max_size=MAX_MESSAGE_SIZE,
        # Autobahn's 9.* cases send up to 16 MiB in one go; the default 16-message receive
        # queue would otherwise hold up to 16 of those at once.
        max_queue=4,
        ping_interval=None,
    ) as server:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
