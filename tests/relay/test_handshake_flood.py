"""Handshakes under attack (docs/operations.md "Abuse limits"): silent TCP sockets from one
address, held open or re-opened as fast as the relay closes them, must not keep clients from
other addresses from connecting, and one address cannot hold more than its share of sockets.

The attacker's sockets come from 127.0.0.2, the clients from 127.0.0.1 (both loopback). The
tests assert that every client completes and what the relay counted; the time each client took
is printed (pytest -s) as a figure, not asserted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest

from helpers.http_metrics import scrape
from helpers.relay_process import SLOWDOWN
from helpers.ws_client import open_ws, recv_type, send_json

pytestmark = pytest.mark.asyncio

ATTACKER = "127.0.0.2"
SILENT_SOCKETS = 300
CLIENTS = 20
# Far beyond what a client needs (milliseconds); only a safety net against hanging.
CLIENT_TIMEOUT = 10 * SLOWDOWN


def silent_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((ATTACKER, 0))
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.connect(("127.0.0.1", port))
    return sock


async def clients_create_and_join(server) -> list[float]:
    """CLIENTS clients connect one after the other, in pairs: the first creates a room, the
    second joins it. Returns how long each took from connecting to the relay's answer."""
    durations = []
    for i in range(0, CLIENTS, 2):
        started = time.monotonic()
        creator = await open_ws(server, open_timeout=CLIENT_TIMEOUT)
        await send_json(creator, "create_room", {"user_id": f"c{i}", "display_name": ""})
        created = await recv_type(creator, "room_created", CLIENT_TIMEOUT)
        durations.append(time.monotonic() - started)
        started = time.monotonic()
        joiner = await open_ws(server, open_timeout=CLIENT_TIMEOUT)
        payload = {"room_code": created["payload"]["room_code"], "user_id": f"c{i + 1}"}
        await send_json(joiner, "join_room", payload)
        await recv_type(joiner, "room_joined", CLIENT_TIMEOUT)
        durations.append(time.monotonic() - started)
        await asyncio.gather(creator.close(), joiner.close())
    return durations


def report(name: str, durations: list[float]) -> None:
    ordered = sorted(durations)
    print(
        f"\n{name}: {len(durations)} clients, median {ordered[len(ordered) // 2] * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


async def test_clients_connect_while_300_silent_sockets_are_open(relay):
    server = relay(per_address=False)
    rss_before = server.memory_kib()
    sockets = [silent_socket(server.port) for _ in range(SILENT_SOCKETS)]
    try:
        # Every silent socket has reached the relay: admitted or refused.
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while time.monotonic() < deadline:
            metrics = scrape(server)
            seen = metrics["relay_sockets_accepted_total"] + metrics.get(
                "relay_rejects_total{reason=handshakes_per_address}", 0
            )
            if seen >= SILENT_SOCKETS:
                break
            await asyncio.sleep(0.05)
        durations = await clients_create_and_join(server)
        metrics = scrape(server)
    finally:
        for sock in sockets:
            sock.close()
    report("300 silent sockets", durations)
    assert len(durations) == CLIENTS
    # All but the per-address handshake allowance (8) were refused at once, not queued. The
    # scrapes above are handshakes from 127.0.0.1 of their own.
    assert metrics["relay_rejects_total{reason=handshakes_per_address}"] == SILENT_SOCKETS - 8
    assert metrics["relay_connections_total"] == CLIENTS
    assert server.memory_kib() - rss_before < 32 * 1024, "the relay's memory grew by > 32 MiB"


async def test_clients_connect_while_silent_sockets_are_reopened(relay):
    server = relay(per_address=False)
    rss_before = server.memory_kib()
    stop = threading.Event()
    opened = []

    def keep_reopening():
        # An attacker re-opening its sockets at ~30/s, up to 300 at once, for at most 60 s.
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            opened.append(silent_socket(server.port))
            while len(opened) > SILENT_SOCKETS:
                opened.pop(0).close()
            stop.wait(1 / 30)

    attacker = threading.Thread(target=keep_reopening, daemon=True)
    initial = [silent_socket(server.port) for _ in range(SILENT_SOCKETS)]
    attacker.start()
    try:
        await asyncio.sleep(0.5)
        durations = await clients_create_and_join(server)
    finally:
        stop.set()
        attacker.join(5)
        for sock in initial + opened:
            sock.close()
    report("silent sockets re-opened at ~30/s", durations)
    assert len(durations) == CLIENTS
    metrics = scrape(server)
    assert metrics["relay_rejects_total{reason=handshakes_per_address}"] >= SILENT_SOCKETS - 8
    assert server.memory_kib() - rss_before < 32 * 1024, "the relay's memory grew by > 32 MiB"


async def test_one_address_cannot_hold_more_than_its_connections(relay):
    server = relay("--max-connections-per-address", "5", "--max-handshakes-per-address", "5")
    held = [await open_ws(server) for _ in range(5)]
    # The sixth connection from the same address is closed before any HTTP answer.
    refused = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    refused.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    with contextlib.suppress(ConnectionResetError):
        assert refused.recv(4096) == b""
    refused.close()
    # Another address is not affected.
    other = socket.socket()
    other.bind(("127.0.0.3", 0))
    other.settimeout(CLIENT_TIMEOUT)
    other.connect(("127.0.0.1", server.port))
    other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert other.recv(4096).startswith(b"HTTP/1.1 200")
    other.close()
    # A slot frees up when one closes.
    await held.pop().close()
    for _ in range(50):  # the relay may see the TCP close a moment after the closing handshake
        try:
            held.append(await open_ws(server))
            break
        except Exception:  # refused at once (the old socket still counted): try again
            await asyncio.sleep(0.05)
    assert len(held) == 5
    await send_json(held[-1], "create_room", {"user_id": "u", "display_name": ""})
    await recv_type(held[-1], "room_created")
    await asyncio.gather(*(ws.close() for ws in held))
    await asyncio.sleep(0.2)
    assert scrape(server)["relay_rejects_total{reason=connections_per_address}"] >= 1
