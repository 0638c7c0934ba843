"""A TCP forwarder between a client and the relay, to simulate a network that stalls.

Run as its own process: `python tcp_forwarder.py --target HOST:PORT` listens on a free
loopback port, prints `listening on 127.0.0.1:PORT`, and copies bytes both ways for each
connection. The test pauses the whole process (SIGSTOP) to stall every connection through it
without closing any, as a dead Wi-Fi link would, and lets it go on (SIGCONT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")

    async def forward(client_reader, client_writer):
        try:
            relay_reader, relay_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, relay_writer), pipe(relay_reader, client_writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
