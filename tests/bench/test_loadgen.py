"""bench/loadgen against the real relay: its sockets over the extension's sans-I/O WebSocket
client (csrc/ws_client.c) count every message and byte exactly, whichever length form the
frame headers take (7-bit, 16-bit, 64-bit) and whether receivers read or discard payloads.

No timing is asserted: only that the load generator measures what was sent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = ROOT / "build" / "bench" / "loadgen"


@pytest.fixture(scope="module")
def loadgen() -> Path:
    built = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "bench" / "loadgen")], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    return LOADGEN


def run(loadgen: Path, *args: str) -> dict:
    done = subprocess.run(
        [str(loadgen), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# 125 and 126 straddle the 7-bit and 16-bit length forms, 65535 and 65536 the 16-bit and 64-bit
# ones; 1 MiB is read in many pieces, most of them discarded in the kernel.
@pytest.mark.parametrize("size", [1, 125, 126, 65535, 65536, 1 << 20])
def test_fanout_counts_every_byte_of_every_message(relay, loadgen, size):
    server = relay()
    count, receivers = 12, 3
    command = f"fanout --port {server.port} --receivers {receivers} --size {size} --count {count}"
    result = run(loadgen, *command.split(), "--seconds", "60")
    assert result["sent"] == count
    assert result["failed_receivers"] == 0
    assert result["delivered_messages"] == receivers * count
    assert result["delivered_bytes"] == receivers * count * size


def test_latency_round_trips_text_messages(relay, loadgen):
    server = relay()
    result = run(loadgen, "latency", "--port", str(server.port), "--count", "30", "--size", "300")
    assert result["samples"] == 30
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]


def test_a_refused_upgrade_is_reported(relay, loadgen):
    # A relay that wants an access token answers the load generator's upgrade with 401: the
    # handshake check of csrc/ws_client.c refuses it instead of taking it for a WebSocket.
    server = relay(env={"RELAY_TOKEN": "s3cret-token-for-this-test-only"})
    done = subprocess.run(
        [str(loadgen), "latency", "--port", str(server.port), "--count", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "upgrade refused: the server answered HTTP 401" in done.stderr
    assert done.stdout == ""
