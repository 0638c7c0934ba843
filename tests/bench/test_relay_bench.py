"""The relay benchmark's own checks: the peer relays speak docs/protocol.md part 1, and the
harness, run with tiny parameters against the Python peer, produces every figure.

No timing is asserted: these tests check that the benchmark measures something real (exact
byte counts, positive figures), not how fast anything is.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "peers"
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


@pytest.fixture(params=sorted(PEER_COMMANDS))
def peer_port(request):
    if request.param == "node-ws" and (reason := node_missing_reason()):
        pytest.skip(reason)
    process = subprocess.Popen(
        PEER_COMMANDS[request.param], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.terminate()
        process.wait(timeout=10)


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


def test_peer_rooms_forwarding_and_errors(peer_port):
    async def scenario():
        url = f"ws://127.0.0.1:{peer_port}/ws"
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
        url = f"ws://127.0.0.1:{peer_port}/ws"
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


def test_bench_harness_quick_against_python_peer(tmp_path):
    out = tmp_path / "bench.json"
    fanout_counts = (2, 8)
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "relay_bench.py"),
            "--relays",
            "py-websockets",
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
    for name in expected:
        value = metrics[name]["py-websockets"]
        # CPU time comes from /proc in 10 ms ticks: a run this small may use less than one.
        smallest = 0 if name.endswith("_cpu") else 1e-12
        assert math.isfinite(value) and value >= smallest, (name, value)
    # Every byte sent reached all four receivers, counted exactly by the load generator.
    for label, size, count in (("16MiB", 16 << 20, fanout_counts[0]), ("1MiB", 1 << 20, 8)):
        (run,) = report["raw"][f"fanout_{label}_mbps"]["py-websockets"]
        assert run["delivered_bytes"] == 4 * size * count
    assert metrics["rtt_idle_p99"]["py-websockets"] >= metrics["rtt_idle_p50"]["py-websockets"]
    assert "py-websockets" in proc.stdout and "RSS per idle connection @200" in proc.stdout
