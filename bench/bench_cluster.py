"""Relay cluster benchmark: relay nodes joined through NATS (docs/operations.md, "Running a
cluster") against a single relay, side by side in one run, on loopback.

Figures (medians of --runs runs):
- fan-out 1→4, 16 MiB, all members on one node: a cluster node vs a single relay (the load
  generator and method of relay_bench.py); the target is cluster ≥ 0.95 × single.
- fan-out 1→4, 16 MiB, members on 4 different nodes (sender and one receiver on node 1, one
  receiver on each other node): MB/s delivered, and CPU-s/GB of all relays plus nats-server.
- round trip of a 100-byte text, p50/p99: both members on one node vs on two nodes.
- idle connections held across 4 nodes (--idle-per-node each): RSS per connection per node, and
  nats-server's RSS.
- room creation rate: create_room one after another on one connection, cluster vs single.

    .venv/bin/python bench/bench_cluster.py            # about 2 minutes
    .venv/bin/python bench/bench_cluster.py --runs 1 --idle-per-node 15000

Needs nats-server (Debian package) and the relay and load generator builds (relay_bench.py
builds the latter). Every wait is bounded; progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import relay_bench as rb  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

MIB = 1024 * 1024
TARGET_LOCAL_VS_SINGLE = 0.95


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nats:
    def __init__(self, directory: Path):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / rb.CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- a receiver that counts binary bytes without holding them (raw socket, frame headers) ---


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    if b" 101 " not in response.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"upgrade refused: {response[:100]!r}")
    return sock, response.split(b"\r\n\r\n", 1)[1]


def raw_send_text(sock: socket.socket, text: str) -> None:
    """A masked text frame; a zero mask key leaves the payload as is (RFC 6455 allows any key)."""
    payload = text.encode()
    assert len(payload) < 126
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)


class CountingReceiver(threading.Thread):
    """Reads frames, counting the payload bytes of binary messages, until `expected` ended."""

    def __init__(self, sock: socket.socket, leftover: bytes, expected: int):
        super().__init__(daemon=True)
        self.sock, self.leftover, self.expected = sock, leftover, expected
        self.binary_bytes = self.messages = 0
        self.texts: list[bytes] = []
        self.finished_at = 0.0
        self._header = bytearray()
        self._remaining = 0
        self._binary = self._final = self._control = False
        self._text = bytearray()

    def run(self) -> None:
        buffer = bytearray(4 * MIB)
        view = memoryview(buffer)
        self.sock.settimeout(120)
        self.feed(self.leftover)
        while self.messages < self.expected:
            n = self.sock.recv_into(buffer)
            if n == 0:
                return
            self.feed(view[:n])
        self.finished_at = time.monotonic()

    def feed(self, chunk) -> None:
        pos, n = 0, len(chunk)
        while pos < n:
            if self._remaining:
                take = min(self._remaining, n - pos)
                if self._control:
                    pass
                elif self._binary:
                    self.binary_bytes += take
                else:
                    self._text += chunk[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._frame_done()
                continue
            # Headers are a few bytes per frame of up to 1 MiB: byte by byte is cheap enough.
            self._header += chunk[pos : pos + 1]
            pos += 1
            if len(self._header) < 2:
                continue
            short = self._header[1] & 0x7F
            need = 2 + {126: 2, 127: 8}.get(short, 0)
            if len(self._header) < need:
                continue
            opcode = self._header[0] & 0x0F
            self._final = bool(self._header[0] & 0x80)
            length = short if need == 2 else int.from_bytes(self._header[2:need], "big")
            self._header.clear()
            self._control = opcode >= 8  # a ping between fragments: not part of the message
            if opcode in (1, 2):
                self._binary = opcode == 2
                self._text = bytearray()
            self._remaining = length
            if length == 0:
                self._frame_done()

    def _frame_done(self) -> None:
        if not self._final or self._control:
            return
        if self._binary:
            self.messages += 1
        else:
            self.texts.append(bytes(self._text))


# --- measurements ------------------------------------------------------------------------------


async def fanout_across(nodes: list, nats: Nats, size: int, count: int) -> dict:
    """Sender and a receiver on nodes[0], one receiver on each other node."""
    sender = await connect(f"ws://127.0.0.1:{nodes[0].port}/ws", max_size=None)
    await sender.send(json.dumps({"type": "create_room", "payload": {"user_id": "sender"}}))
    code = json.loads(await sender.recv())["payload"]["room_code"]
    receivers = []
    for i, node in enumerate([nodes[0], *nodes[1:]]):
        sock, leftover = raw_connect(node.port)
        raw_send_text(
            sock,
            json.dumps({"type": "join_room", "payload": {"room_code": code, "user_id": f"r{i}"}}),
        )
        receivers.append(CountingReceiver(sock, leftover, count))
    for receiver in receivers:
        receiver.start()
    for _ in receivers:  # the sender sees every join before it sends
        while json.loads(await asyncio.wait_for(sender.recv(), 30))["type"] != "user_joined":
            pass
    payload = os.urandom(size)
    cpu_before = sum(n.cpu_seconds() for n in nodes) + nats.cpu_seconds()
    started = time.monotonic()
    for _ in range(count):
        await sender.send(payload)
    for receiver in receivers:
        await asyncio.to_thread(receiver.join, 300)
    ended = max(r.finished_at for r in receivers)
    cpu = sum(n.cpu_seconds() for n in nodes) + nats.cpu_seconds() - cpu_before
    await sender.close()
    for receiver in receivers:
        receiver.sock.close()
    delivered = sum(r.binary_bytes for r in receivers)
    if delivered != len(receivers) * size * count:
        raise RuntimeError(f"delivered {delivered} of {len(receivers) * size * count} bytes")
    return {"mbps": delivered / (ended - started) / 1e6, "cpu_s_per_gb": cpu / (delivered / 1e9)}


async def round_trips(port_a: int, port_b: int, samples: int) -> dict:
    a = await connect(f"ws://127.0.0.1:{port_a}/ws")
    b = await connect(f"ws://127.0.0.1:{port_b}/ws")
    await a.send(json.dumps({"type": "create_room", "payload": {"user_id": "a"}}))
    code = json.loads(await a.recv())["payload"]["room_code"]
    await b.send(json.dumps({"type": "join_room", "payload": {"room_code": code, "user_id": "b"}}))
    await b.recv()
    await a.recv()
    text = json.dumps({"type": "ping", "payload": {"pad": "x" * 60}})
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        await a.send(text)
        await asyncio.wait_for(b.recv(), 10)
        await b.send(text)
        await asyncio.wait_for(a.recv(), 10)
        times.append((time.perf_counter() - started) * 1000)
    await a.close()
    await b.close()
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)]}


async def creation_rate(port: int, rooms: int) -> float:
    ws = await connect(f"ws://127.0.0.1:{port}/ws")
    started = time.monotonic()
    for _ in range(rooms):
        await ws.send(json.dumps({"type": "create_room", "payload": {"user_id": "c"}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply["type"] != "room_created":
            raise RuntimeError(f"create_room refused: {reply}")
    elapsed = time.monotonic() - started
    await ws.close()
    return rooms / elapsed


def idle_across(nodes: list, nats: Nats, per_node: int) -> dict:
    for node in nodes:  # warm up each node's code paths so that the baseline includes them
        rb.run_loadgen(["latency", "--port", str(node.port), "--count", "20"], timeout=60)
    time.sleep(1.0)
    baselines = [n.rss_bytes() for n in nodes]
    loadgens = []
    try:
        for i, node in enumerate(nodes):
            share, source = per_node, 0
            while share > 0:  # at most 5,000 connections per load generator and source address
                part = min(share, 5000)
                loadgens.append(
                    rb.Loadgen(
                        [
                            "idle",
                            "--port",
                            str(node.port),
                            "--connections",
                            str(part),
                            "--source",
                            f"127.0.{1 + i}.{2 + source}",
                            "--seconds",
                            "240",
                        ]
                    )
                )
                share -= part
                source += 1
        for loadgen in loadgens:
            if not loadgen.readline(240).startswith("ready"):
                raise RuntimeError("idle connections failed")
        time.sleep(2.0)
        per_connection = [
            (n.rss_bytes() - b) / per_node / 1000 for n, b in zip(nodes, baselines, strict=True)
        ]
        nats_rss = nats.rss_bytes()
        closed = 0
        for loadgen in loadgens:
            loadgen.say("stop")
            closed += loadgen.result(60)["closed_by_relay"]
        if closed:
            raise RuntimeError(f"the relays closed {closed} idle connections")
    finally:
        for loadgen in loadgens:
            loadgen.finish()
    return {
        "connections": per_node * len(nodes),
        "kb_per_connection": per_connection,
        "nats_rss_mb": nats_rss / 1e6,
    }


# --- the run -------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per fan-out figure")
    parser.add_argument("--count", type=int, default=32, help="16 MiB messages per fan-out run")
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--rooms", type=int, default=300, help="rooms per creation-rate run")
    parser.add_argument("--idle-per-node", type=int, default=2000, help="0 skips the idle figure")
    parser.add_argument("--only-idle", action="store_true", help="just the idle figure")
    args = parser.parse_args(argv)
    if shutil.which("nats-server") is None:
        say("nats-server is not installed (apt-get install nats-server)")
        return 1
    rb.build_loadgen()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    secret = work / "resume.key"
    base = rb.relay_specs(sys.executable)["relay_server"].command + ["--secret-file", str(secret)]
    nats = Nats(work / "nats")
    single = rb.Relay(rb.RelaySpec("single", base), work)
    nodes = [
        rb.Relay(rb.RelaySpec(f"node{i}", [*base, "--nats", f"nats://127.0.0.1:{nats.port}"]), work)
        for i in range(4)
    ]
    figures: dict[str, float | str] = {}
    try:
        # First, on fresh nodes: memory freed by the transfers below would be reused by new
        # connections and hide their cost.
        if args.idle_per_node:
            say(f"idle: {args.idle_per_node} connections on each of 4 nodes")
            idle = idle_across(nodes, nats, args.idle_per_node)
            figures[f"idle connections over 4 nodes ({idle['connections']})"] = ""
            figures["  relay RSS per connection, kB (each node)"] = " ".join(
                f"{v:.2f}" for v in idle["kb_per_connection"]
            )
            figures["  nats-server RSS, MB"] = idle["nats_rss_mb"]
        if args.only_idle:
            args.runs = 0
        if args.runs:
            single_runs, local_runs = [], []
            for run in range(args.runs):
                say(f"fan-out 1→4 16 MiB, run {run + 1}: single relay, then one cluster node")
                single_runs.append(rb.measure_fanout(single, 16 * MIB, args.count, 4))
                local_runs.append(rb.measure_fanout(nodes[0], 16 * MIB, args.count, 4))
            figures["fan-out 1→4 one node: single relay MB/s"] = median(
                [r["mbps"] for r in single_runs]
            )
            local_mbps = median([r["mbps"] for r in local_runs])
            figures["fan-out 1→4 one node: cluster node MB/s"] = local_mbps
            figures["  cluster/single (target ≥ 0.95)"] = (
                figures["fan-out 1→4 one node: cluster node MB/s"]
                / figures["fan-out 1→4 one node: single relay MB/s"]
            )
            figures["fan-out 1→4 one node: single relay CPU-s/GB"] = median(
                [r["cpu_s_per_gb"] for r in single_runs]
            )
            figures["fan-out 1→4 one node: cluster node CPU-s/GB"] = median(
                [r["cpu_s_per_gb"] for r in local_runs]
            )
            across = []
            for run in range(args.runs):
                say(f"fan-out 1→4 16 MiB over 4 nodes, run {run + 1}")
                across.append(asyncio.run(fanout_across(nodes, nats, 16 * MIB, args.count // 2)))
            figures["fan-out 1→4 over 4 nodes MB/s"] = median([r["mbps"] for r in across])
            figures["  relays + NATS CPU-s/GB"] = median([r["cpu_s_per_gb"] for r in across])
            say("round trips")
            local = asyncio.run(round_trips(nodes[0].port, nodes[0].port, args.latency_samples))
            cross = asyncio.run(round_trips(nodes[0].port, nodes[1].port, args.latency_samples))
            alone = asyncio.run(round_trips(single.port, single.port, args.latency_samples))
            for name, value in (("single relay", alone), ("one node", local), ("two nodes", cross)):
                figures[f"round trip, {name}: p50 / p99 ms"] = (
                    f"{value['p50_ms']:.3f} / {value['p99_ms']:.3f}"
                )
            say("room creation")
            figures["rooms created/s: single relay"] = asyncio.run(
                creation_rate(single.port, args.rooms)
            )
            figures["rooms created/s: cluster node"] = asyncio.run(
                creation_rate(nodes[0].port, args.rooms)
            )
    finally:
        for relay in [single, *nodes]:
            relay.stop()
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.2f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    print(f"(load average {os.getloadavg()[0]:.2f}; 2 shared cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
