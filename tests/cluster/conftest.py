"""Fixtures for the cluster tests: a real nats-server with JetStream (its store in a temporary
directory, on a free loopback port) and relay processes joined to it with --nats.

Tests are skipped, with the reason, when nats-server is not installed (Debian: nats-server).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

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
