"""Fixtures of the transport tests: an independent `websockets` server and an HTTP CONNECT proxy
(proxy.py), each a real subprocess on an ephemeral loopback port, stopped after the test."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


class ServerProcess:
    """tests/transport/ws_server.py as a subprocess; keeps its stdout lines."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "ws_server.py"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.lines.get(timeout=20)
        assert first.startswith("listening on "), first
        self.port = int(first.rsplit(":", 1)[1])

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def next_close(self, timeout: float = 10.0) -> str:
        """The next `closed PATH CODE REASON` line the server printed."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith("closed "):
                return line

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def ws_server():
    """Factory: ws_server(*args) -> ServerProcess (args as for ws_server.py)."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def echo_server(ws_server) -> ServerProcess:
    return ws_server()


@pytest.fixture
def connect_proxy(tmp_path):
    """An HTTP CONNECT proxy (the proxy.py package) on an ephemeral port: yields its port and
    the path of its log file (one line per proxied request)."""
    port_file = tmp_path / "proxy.port"
    log_file = tmp_path / "proxy.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--num-workers",
            "1",
            "--num-acceptors",
            "1",
            "--log-file",
            str(log_file),
            "--log-level",
            "INFO",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, "proxy.py exited at start-up"
            assert time.monotonic() < deadline, "proxy.py did not write its port file"
            time.sleep(0.05)
        yield int(port_file.read_text().split()[0]), log_file
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(params=["raw", "lws"])
def engine(request, monkeypatch):
    """Runs the test once per WebSocket engine: connections that either engine can run (no
    proxy) use this one instead of transport.default_engine's choice."""
    from segmentation_suite.network import transport

    chosen = transport.default_engine

    def forced(url: str, proxy: str | None) -> str:
        fallback = chosen(url, proxy)
        return request.param if fallback == "raw" else fallback

    monkeypatch.setattr(transport, "default_engine", forced)
    return request.param
