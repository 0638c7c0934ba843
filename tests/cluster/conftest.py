"""Fixtures for the cluster tests: a real nats-server with JetStream (its store in a temporary
directory, on a free loopback port) and relay processes joined to it with --nats.

Tests are skipped, with the reason, when nats-server is not installed (Debian: nats-server).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.relay_process import SLOWDOWN

NATS_STARTUP_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NatsServer:
    """One nats-server process with JetStream, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.skip("nats-server not installed (apt-get install nats-server)")
        self._store = tempfile.TemporaryDirectory(prefix="nats-store-")
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self._store.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + NATS_STARTUP_SECONDS * SLOWDOWN
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if probe.recv(4096).startswith(b"INFO"):
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"nats-server did not start on port {self.port}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._store.cleanup()


@pytest.fixture
def nats_server():
    server = NatsServer()
    yield server
    server.stop()


@pytest.fixture
def cluster(nats_server, relay):
    """Factory: cluster(n, *args) -> [RelayProcess] joined to one nats-server. The relays are
    stopped (and checked to exit 0) by the `relay` fixture, before nats-server (fixtures are
    torn down in reverse order); a test may SIGKILL one."""

    def start(count: int, *args: str):
        return [relay("--nats", nats_server.url, *args) for _ in range(count)]

    return start


ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_config(relay_ports: list[int], front_port: int) -> str:
    """deploy/haproxy.cfg for these relays and front port, as deploy/local-cluster.sh makes it."""
    servers = [f"    server relay{i + 1} 127.0.0.1:{p} check" for i, p in enumerate(relay_ports)]
    out, skipping = [], False
    for line in HAPROXY_CFG.read_text().splitlines():
        if "# BEGIN relays" in line:
            out += [line, *servers]
            skipping = True
        elif "# END relays" in line:
            skipping = False
            out.append(line)
        elif not skipping:
            out.append(f"    bind 127.0.0.1:{front_port}" if line.startswith("    bind ") else line)
    return "\n".join(out) + "\n"


class HAProxy:
    def __init__(self, relay_ports: list[int]):
        binary = shutil.which("haproxy")
        if binary is None:
            pytest.skip("haproxy not installed (apt-get install haproxy)")
        self._directory = tempfile.TemporaryDirectory(prefix="haproxy-")
        self.port = free_port()
        config = Path(self._directory.name) / "haproxy.cfg"
        config.write_text(haproxy_config(relay_ports, self.port))
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + NATS_STARTUP_SECONDS * SLOWDOWN
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("haproxy did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def node_for_room(self, code: str) -> str:
        """The id of the relay node HAProxy sends /...?room=CODE to (its /health says)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/health?room={code}", timeout=10
        ) as response:
            return json.load(response)["node"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._directory.cleanup()


@pytest.fixture
def haproxy():
    """Factory: haproxy(relays) -> HAProxy in front of these RelayProcesses (deploy/haproxy.cfg)."""
    started = []

    def start(relays) -> HAProxy:
        started.append(HAProxy([r.port for r in relays]))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()
