"""The relay benchmark's own checks: the peer relays and the floor relay (bench/floor) speak
docs/protocol.md part 1, the floor streams and bounds its queues as it claims, and the harness,
run with tiny parameters against the Python peer and the floor, produces every figure.

No timing is asserted: these tests check that the benchmark measures something real (exact
byte counts, positive figures), not how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "peers"
FLOOR = ROOT / "build" / "bench" / "floor_relay"
VECTORS = json.loads((ROOT / "tests" / "vectors" / "protocol.json").read_text())
ALPHABET = VECTORS["room_code_alphabet"]


def node_missing_reason() -> str | None:
    if not shutil.which("node"):
        return "node is not installed (./dev.sh test installs it)"
    if not (PEERS / "node_modules" / "ws").exists():
        return "bench/peers/node_modules is missing (./dev.sh test runs npm install there)"
    return None


PEER_COMMANDS = {
    "py-websockets": [sys.executable, str(PEERS / "relay_websockets.py"), "--port", "0"],
    "node-ws": ["node", str(PEERS / "relay_ws.js"), "--port", "0"],
}


def floor_build_error() -> str | None:
    """Build the floor relay as relay_bench.py does; the reason when this machine cannot."""
    built = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "bench" / "floor")], capture_output=True, text=True
    )
    if built.returncode != 0:
        return f"bench/floor does not build (libjansson-dev, libssl-dev?): {built.stderr}"
    return None


def relay_command(name: str) -> list[str]:
    if name == "floor":
        if reason := floor_build_error():
            pytest.skip(reason)
        return [str(FLOOR), "--port", "0"]
    if name == "node-ws" and (reason := node_missing_reason()):
        pytest.skip(reason)
    return PEER_COMMANDS[name]


@contextlib.contextmanager
def running(name: str):
    """Run one relay; yields (process, port) once it says where it listens."""
    process = subprocess.Popen(
        relay_command(name), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield process, int(line.rsplit(":", 1)[1])
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=sorted(PEER_COMMANDS))
def peer_port(request):
    with running(request.param) as (_, port):
        yield port


@pytest.fixture(params=[*sorted(PEER_COMMANDS), "floor"])
def relay_port(request):
    """Every relay in the table that speaks the room protocol: the peers and the floor."""
    with running(request.param) as (_, port):
        yield port


def http_request(port: int, method: str, path: str, headers=None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def test_peer_http_endpoints(peer_port):
    status, content_type, body = http_request(peer_port, "GET", "/health")
    assert (status, content_type) == (200, "application/json")
    health = json.loads(body)
    assert {k: health[k] for k in VECTORS["health"]} == VECTORS["health"]
    assert health["version"].count(".") == 2
    assert http_request(peer_port, "GET", "/")[0] == 200
    assert http_request(peer_port, "GET", "/nowhere")[::2] == (404, "Not Found")
    assert http_request(peer_port, "GET", "/ws")[::2] == (426, "Expected WebSocket")
    assert http_request(peer_port, "GET", "/room/ABCDEF")[::2] == (426, "Expected WebSocket")
    status, _, body = http_request(peer_port, "POST", "/api/create-room")
    code = json.loads(body)["room_code"]
    assert status == 200 and len(code) == 6 and set(code) <= set(ALPHABET)

    async def join_reserved():
        async with connect(f"ws://127.0.0.1:{peer_port}/room/{code}") as ws:
            await ws.send(join_message(code.lower(), "carol"))
            return json.loads(await ws.recv())

    answer = asyncio.run(join_reserved())
    assert answer["type"] == "room_joined" and answer["payload"]["room_code"] == code


def join_message(code: str, user: str) -> str:
    payload = {"room_code": code, "user_id": user, "display_name": user.title()}
    return json.dumps({"type": "join_room", "payload": payload})


def test_rooms_forwarding_and_errors(relay_port):
    async def scenario():
        url = f"ws://127.0.0.1:{relay_port}/ws"
        async with connect(url, max_size=None) as alice, connect(url, max_size=None) as bob:
            create = {"type": "create_room", "payload": {"user_id": "alice", "display_name": "Al"}}
            await alice.send(json.dumps(create))
            created = json.loads(await alice.recv())
            code = created["payload"]["room_code"]
            assert created["type"] == "room_created" and set(code) <= set(ALPHABET)

            await bob.send(join_message("NOPE23", "bob"))
            error = json.loads(await bob.recv())["payload"]
            assert error == {"error": "Room not found", "code": "ROOM_NOT_FOUND"}

            await bob.send(join_message(code.lower(), "bob"))
            joined = json.loads(await bob.recv())
            users = [
                {"user_id": "alice", "display_name": "Al"},
                {"user_id": "bob", "display_name": "Bob"},
            ]
            assert joined == {"type": "room_joined", "payload": {"room_code": code, "users": users}}
            user_joined = json.loads(await alice.recv())
            assert user_joined["type"] == "user_joined"
            assert user_joined["payload"] == {
                "user_id": "bob",
                "display_name": "Bob",
                "users": users,
            }

            chat = {"type": "weights_push", "payload": {"epoch": 3}, "timestamp": 12.5}
            await bob.send(json.dumps(chat))
            forwarded = json.loads(await alice.recv())
            assert forwarded == {**chat, "sender_id": "bob", "sender_name": "Bob"}

            blob = bytes(range(256)) * 4096 + b"\x00tail"
            await bob.send(blob)
            assert await alice.recv() == blob

            await bob.send("{not json")
            error = json.loads(await bob.recv())["payload"]
            assert error["code"] == "INVALID_JSON" and error["error"] == "Invalid message format"
            await bob.send("[1, 2]")
            assert json.loads(await bob.recv())["payload"]["code"] == "INVALID_MESSAGE"

    async def user_left():
        url = f"ws://127.0.0.1:{relay_port}/ws"
        async with connect(url) as alice:
            create = {"type": "create_room", "payload": {"user_id": "alice", "display_name": "Al"}}
            await alice.send(json.dumps(create))
            code = json.loads(await alice.recv())["payload"]["room_code"]
            async with connect(url) as bob:
                await bob.send(join_message(code, "bob"))
                await bob.recv()
                await alice.recv()  # user_joined
            left = json.loads(await asyncio.wait_for(alice.recv(), 10))
            assert left["type"] == "user_left"
            assert left["payload"] == {
                "user_id": "bob",
                "display_name": "Bob",
                "users": [{"user_id": "alice", "display_name": "Al"}],
            }

    asyncio.run(scenario())
    asyncio.run(user_left())


def test_bench_harness_quick_against_python_peer_and_floor(tmp_path):
    out = tmp_path / "bench.json"
    fanout_counts = (2, 8)
    # Without the floor (it does not build here) the harness still runs, without its column.
    relays = ["py-websockets"] if floor_build_error() else ["py-websockets", "floor"]
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "relay_bench.py"),
            "--relays",
            ",".join(relays),
            "--runs",
            "1",
            "--idle-runs",
            "1",
            "--fanout-count",
            *map(str, fanout_counts),
            "--latency-samples",
            "50",
            "--busy-rooms",
            "5",
            "--idle-counts",
            "200",
            "--loopback-mbps",
            "4100",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 300
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    expected = {
        "fanout_16MiB_mbps",
        "fanout_16MiB_cpu",
        "fanout_1MiB_mbps",
        "fanout_1MiB_cpu",
        "rtt_idle_p50",
        "rtt_idle_p99",
        "rtt_busy_p50",
        "rtt_busy_p99",
        "busy_rate",
        "idle_200",
    }
    assert expected <= set(metrics)
    for relay in relays:
        for name in expected:
            value = metrics[name][relay]
            # CPU time comes from /proc in 10 ms ticks: a run this small may use less than one.
            smallest = 0 if name.endswith("_cpu") else 1e-12
            assert math.isfinite(value) and value >= smallest, (relay, name, value)
        # Every byte sent reached all four receivers, counted exactly by the load generator
        # (the floor forwards fragments as they arrive: the receivers still count whole messages).
        for label, size, count in (("16MiB", 16 << 20, fanout_counts[0]), ("1MiB", 1 << 20, 8)):
            (run,) = report["raw"][f"fanout_{label}_mbps"][relay]
            assert run["delivered_bytes"] == 4 * size * count, relay
            assert run["delivered_messages"] == 4 * count, relay
        assert metrics["rtt_idle_p99"][relay] >= metrics["rtt_idle_p50"][relay]
    assert "py-websockets" in proc.stdout and "RSS per idle connection @200" in proc.stdout
    if "floor" in relays:
        assert report["floor"] == "floor"
        assert "floor (bare epoll)" in proc.stdout and "a lower bound, not a peer" in proc.stdout


def load_relay_bench():
    spec = importlib.util.spec_from_file_location("relay_bench", ROOT / "bench" / "relay_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_row(table: str, label: str) -> list[str]:
    (line,) = [line for line in table.splitlines() if line.startswith(label)]
    return [cell.strip() for cell in line[len(label) :].split("  ") if cell.strip()]


def test_table_keeps_the_floor_out_of_best_peer_and_targets():
    bench = load_relay_bench()
    plan = bench.Plan(
        runs=1,
        latency_runs=1,
        fanout=[("16MiB", 16 << 20, 1)],
        receivers=4,
        latency_samples=1,
        busy_samples=1,
        latency_size=100,
        busy_rooms=0,
        idle_counts=[],
        idle_runs=1,
        idle_per_process=1,
    )
    # The floor beats everyone on every row: were it taken as a peer, every ratio would change.
    results = bench.Results(
        relays=["relay_server", "node-ws", "floor"],
        ours="relay_server",
        floor="floor",
        headings={"floor": "floor (bare epoll)"},
        metrics={
            "fanout_16MiB_mbps": {"relay_server": 3000.0, "node-ws": 1500.0, "floor": 4000.0},
            "fanout_16MiB_cpu": {"relay_server": 0.3, "node-ws": 0.6, "floor": 0.1},
            "rtt_idle_p50": {"relay_server": 40.0, "node-ws": 80.0, "floor": 20.0},
        },
    )
    table = bench.format_table(results, plan)
    header = table.splitlines()[0]
    assert "floor (bare epoll)" in header and header.rstrip().endswith("ours/floor")
    # metric cells: ours, node-ws, floor, ours/best peer, target, met, ours/floor
    mbps = table_row(table, "fan-out 1->4 16MiB: MB/s")
    assert mbps[3] == "2.00x" and mbps[-1] == "0.75x"
    cpu = table_row(table, "fan-out 1->4 16MiB: CPU-s/GB")
    assert cpu[3] == "0.50x" and cpu[-1] == "3.00x"
    p50 = table_row(table, "round trip idle: p50 us")
    assert p50[3:] == ["0.50x", "<=0.5x", "yes", "2.00x"]
    assert "a lower bound, not a peer" in table


def test_floor_streams_in_order_and_bounds_its_queues():
    with running("floor") as (process, port):
        asyncio.run(floor_scenario(process.pid, port))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def floor_scenario(pid: int, port: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws"

    async def member(ws, user: str, code: str | None = None) -> str:
        if code is None:
            payload = {"user_id": user, "display_name": user}
            await ws.send(json.dumps({"type": "create_room", "payload": payload}))
            return json.loads(await ws.recv())["payload"]["room_code"]
        await ws.send(join_message(code, user))
        assert json.loads(await ws.recv())["type"] == "room_joined"
        return code

    async with (
        connect(url, max_size=None) as alice,
        connect(url, max_size=None) as bob,
        connect(url, max_size=None) as carol,
    ):
        code = await member(alice, "alice")
        await member(bob, "bob", code)
        await member(carol, "carol", code)
        for ws, joins in ((alice, 2), (bob, 1)):
            for _ in range(joins):
                assert json.loads(await ws.recv())["type"] == "user_joined"
        # dave (a bare client) sends the first part of a message several reads long; the floor
        # streams it on as fragments. alice's message, sent meanwhile, must wait for its end: a
        # receiver must never see frames of two messages interleaved (websockets would fail
        # the connection), nor a masked server frame.
        reader, writer = await raw_client(port)
        writer.write(client_frame(1, join_message(code, "dave").encode()))
        for ws in (alice, bob, carol):
            assert json.loads(await ws.recv())["type"] == "user_joined"
        blob_d, blob_a = os.urandom(3_000_000), os.urandom(2_000_000)
        frame = client_frame(2, blob_d)
        writer.write(frame[:1_000_000])
        await writer.drain()
        await asyncio.sleep(0.2)
        await alice.send(blob_a)
        await asyncio.sleep(0.2)
        writer.write(frame[1_000_000:])
        for ws in (bob, carol):
            assert await asyncio.wait_for(ws.recv(), 10) == blob_d
            assert await asyncio.wait_for(ws.recv(), 10) == blob_a
        assert await alice.recv() == blob_d
        await asyncio.wait_for(await carol.ping(b"still there"), 5)

        # A sender that vanishes in the middle of a message: the others get what was sent of
        # it (the floor ends it with an empty final fragment), then user_left.
        part = os.urandom(300_000)
        writer.write(client_frame(2, part, announced=1_000_000))
        await writer.drain()
        writer.close()
        for ws in (alice, bob, carol):
            assert await asyncio.wait_for(ws.recv(), 10) == part
            assert json.loads(await ws.recv())["type"] == "user_left"

    # Backpressure: a receiver that reads nothing holds at most ~16 MiB of queue in the relay;
    # the sender waits instead, and goes on once that receiver is gone.
    async with connect(url, max_size=None) as sender:
        code = await member(sender, "sender")
        reader, writer = await raw_client(port)
        writer.write(client_frame(1, join_message(code, "stuck").encode()))
        assert json.loads(await sender.recv())["type"] == "user_joined"
        blob = os.urandom(16 << 20)
        pump = asyncio.create_task(send_many(sender, blob, 12))
        await asyncio.sleep(2.0)
        assert not pump.done(), "192 MiB went through a receiver that reads nothing"
        assert rss_mib(pid) < 80, rss_mib(pid)
        writer.close()
        await asyncio.wait_for(pump, 30)


async def raw_client(port: int):
    """A bare WebSocket connection (asyncio streams) after checking the upgrade answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer  # RFC 6455 1.3
    return reader, writer


def client_frame(opcode: int, payload: bytes, announced: int | None = None) -> bytes:
    """One final client frame, masked; `announced` claims a longer payload than is sent."""
    length = len(payload) if announced is None else announced
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    key = os.urandom(4)
    mask = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
        len(payload), "big"
    )
    return head + key + masked


async def send_many(ws, blob: bytes, count: int) -> None:
    for _ in range(count):
        await ws.send(blob)
