"""The v1 fixture relay (tests/fixtures/v1_relay.py: the original Worker's behaviour only) as
a subprocess on a free loopback port, for tests that need a relay without our extensions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

V1_RELAY = Path(__file__).resolve().parents[1] / "fixtures" / "v1_relay.py"


class V1Relay:
    """The v1 fixture relay as a subprocess on a free loopback port."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, str(V1_RELAY), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.process.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        if not match:
            self.stop()
            raise AssertionError(f"v1 relay did not start: {line!r}")
        self.port = int(match.group(2))
        self.url = f"ws://127.0.0.1:{self.port}"

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process.stdout.close()
