"""The relay binary as a real process on an ephemeral loopback port.

`RelayProcess` starts `relay_server --port 0 --listen 127.0.0.1 ...`, waits for the line
`listening on HOST:PORT` on its stdout and keeps every line it writes (stdout and stderr) so
that tests can assert on its log. Used by the `relay` fixture in tests/conftest.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = ROOT / "relay_server" / "build" / "relay_server"
SANITIZED = os.environ.get("SANITIZED_BUILD") == "1"
# Sanitized builds are several times slower; every wait in the tests scales with this.
SLOWDOWN = 4.0 if SANITIZED else 1.0
# How late a relay timer (handshake, idle, grace) may fire: scheduling on a busy machine, plus
# some room for the slower sanitized build. Timers do not run slower with the CPU, so this is
# not SLOWDOWN times the timeout.
TIMER_MARGIN = 3.0 if SANITIZED else 1.5

LISTENING = re.compile(r"listening on (\S+):(\d+)")
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:")


def relay_binary() -> Path:
    return Path(os.environ.get("RELAY_SERVER_BIN", str(DEFAULT_BINARY)))


class _LineCollector:
    """Reads a pipe on a thread (so the relay never blocks on a full pipe) and keeps its lines."""

    def __init__(self, stream, condition: threading.Condition):
        self.lines: list[str] = []
        self._stream = stream
        self._condition = condition
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            with self._condition:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._condition.notify_all()
        self._stream.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class RelayProcess:
    """One running relay. Construct through the `relay` fixture, which also stops it."""

    def __init__(
        self,
        args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        tls: bool = False,
        startup_timeout: float = 10.0,
    ):
        self.binary = relay_binary()
        # Without --state-dir or --secret-file the relay keeps its resume key in the user's
        # state directory: tests give each relay a private one instead, unless they name one
        # (a restart test passes the same --state-dir to both relays).
        self._state_dir = None
        named = {"--state-dir", "--secret-file"} & set(args) or {
            "RELAY_STATE_DIR",
            "RELAY_SECRET_FILE",
        } & set(env or {})
        if not named:
            self._state_dir = tempfile.TemporaryDirectory(prefix="relay-state-")
            args = ["--state-dir", self._state_dir.name, *args]
        self.args = ["--port", "0", "--listen", "127.0.0.1", *args]
        self.tls = tls
        full_env = dict(os.environ)
        full_env.pop("RELAY_TOKEN", None)
        if SANITIZED:
            # The Python side runs with leak checking off (the interpreter leaks by design);
            # the relay is ours, so it checks its own leaks at exit.
            full_env["ASAN_OPTIONS"] = os.environ.get(
                "RELAY_ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1"
            )
        full_env.update(env or {})
        self._condition = threading.Condition()
        self.process = subprocess.Popen(
            [str(self.binary), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self._stdout = _LineCollector(self.process.stdout, self._condition)
        self._stderr = _LineCollector(self.process.stderr, self._condition)
        self.exit_code: int | None = None
        self.host, self.port = self._wait_for_listening(startup_timeout * SLOWDOWN)

    # --- addresses ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        """Base WebSocket URL, e.g. ws://127.0.0.1:PORT (append /ws or /room/CODE)."""
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # --- output ------------------------------------------------------------------------

    @property
    def stdout(self) -> list[str]:
        with self._condition:
            return list(self._stdout.lines)

    @property
    def stderr(self) -> list[str]:
        with self._condition:
            return list(self._stderr.lines)

    @property
    def log(self) -> list[str]:
        """Everything the relay wrote, stdout then stderr (its log goes to stderr)."""
        return self.stdout + self.stderr

    def wait_for_line(self, pattern: str | re.Pattern, timeout: float, start: int = 0) -> str:
        """Blocks until a stderr line at index >= start matches; returns it or raises."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout * SLOWDOWN
        with self._condition:
            while True:
                for line in self._stderr.lines[start:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no relay log line matching {regex.pattern!r} within {timeout} s; "
                        f"log:\n" + "\n".join(self._stderr.lines[start:])
                    )
                self._condition.wait(remaining)

    def _wait_for_listening(self, timeout: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for line in self._stdout.lines:
                    match = LISTENING.search(line)
                    if match:
                        return match.group(1), int(match.group(2))
                if self.process.poll() is not None:
                    # Let the readers drain what the relay wrote before it died.
                    self._condition.wait(0.2)
                    raise AssertionError(
                        f"relay exited with {self.process.returncode} before listening; "
                        f"args {self.args}; output:\n" + "\n".join(self.log)
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise AssertionError(
                        f"relay printed no 'listening on HOST:PORT' within {timeout} s; "
                        f"output:\n" + "\n".join(self.log)
                    )
                self._condition.wait(min(remaining, 0.1))

    # --- process -----------------------------------------------------------------------

    def memory_kib(self, field: str = "VmRSS") -> int:
        """A memory figure from /proc/PID/status in KiB (VmRSS now, VmHWM the peak)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        assert match, f"{field} not in /proc/{self.pid}/status"
        return int(match.group(1))

    def terminate(self, timeout: float = 3.0) -> tuple[int | None, float]:
        """SIGTERM, then waits; returns (exit code or None if still running, seconds taken)."""
        if self.process.poll() is not None:
            self._finish()
            return self.process.returncode, 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout * SLOWDOWN)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started
        elapsed = time.monotonic() - started
        self._finish()
        return self.process.returncode, elapsed

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._finish()

    def _finish(self) -> None:
        self.exit_code = self.process.returncode
        self._stdout.join(2)
        self._stderr.join(2)
        if self._state_dir is not None:
            self._state_dir.cleanup()
            self._state_dir = None

    def sanitizer_reports(self) -> list[str]:
        return [line for line in self.stderr if SANITIZER_REPORT.search(line)]
