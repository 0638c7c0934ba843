"""Starting and stopping a relay_server process: for the demo, the CLI and the tests.

The binary is looked up in this order: the RELAY_SERVER_BIN environment variable, the copy
installed inside this package (segmentation_suite/bin/relay_server), and the build in a source
checkout (relay_server/build/relay_server).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CANDIDATES = (
    _PACKAGE / "bin" / "relay_server",
    _PACKAGE.parent / "relay_server" / "build" / "relay_server",
)
_LISTENING = re.compile(r"listening on (\S+):(\d+) \((wss?)\)")


def find_relay_binary() -> Path:
    """The relay_server executable; FileNotFoundError saying how to build it if there is none."""
    explicit = os.environ.get("RELAY_SERVER_BIN")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"RELAY_SERVER_BIN={explicit} is not an executable file")
        return path
    for path in _CANDIDATES:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "relay_server is not built: run ./dev.sh build (or make -C relay_server) in the source "
        "checkout, or set RELAY_SERVER_BIN"
    )


class RelayProcess:
    """A relay on a free loopback port (or `host`:`port`), stopped (SIGTERM) when the `with`
    block ends."""

    def __init__(
        self, *options: str, host: str = "127.0.0.1", port: int = 0, env: dict | None = None
    ):
        self.options = list(options)
        self.host = host
        self.env = env
        self.process: subprocess.Popen | None = None
        self.port = port
        self.scheme = "ws"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.scheme == 'wss' else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 10) -> RelayProcess:
        command = [
            str(find_relay_binary()),
            *("--listen", self.host, "--port", str(self.port)),
            *self.options,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            match = _LISTENING.search(line or "")
            if match:
                self.port, self.scheme = int(match.group(2)), match.group(3)
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"relay_server did not start: {' '.join(command)}")

    def stop(self, timeout: float = 5) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
