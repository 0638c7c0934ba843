"""The `segmentation-suite` command as a real subprocess, for the CLI and demo tests.

`CliProcess` runs `python -m segmentation_suite ARGS` with its output piped (so not a
terminal: rich prints plain lines, as in a log) and collects stdout and stderr lines on
threads, so a test can wait for a line while the command keeps running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# The row a session command prints after each round (`who`: "2 contributors", "1 contributor").
ROUND_LINE = r"^round {n}/{last}: loss [0-9.]+, local Dice [0-9.]+, global Dice [0-9.]+, {who}"


def cli_env(config_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no relay configured (a fresh config dir, and a fresh
    data dir beside it for session folders), one torch thread per process (the machine is
    shared)."""
    env = dict(os.environ)
    env.pop("SEGMENTATION_SUITE_RELAY_URL", None)
    env.update(
        XDG_CONFIG_HOME=str(config_home),
        XDG_DATA_HOME=str(config_home.parent / "data"),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class CliProcess:
    def __init__(self, args: list[str], env: dict[str, str]):
        self.args = args
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segmentation_suite", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # Ctrl-C as a person's terminal delivers it, even when the test run itself was
            # started with SIGINT ignored (a shell's background job): Python then would not
            # install its KeyboardInterrupt handler in the command.
            preexec_fn=_default_sigint,
        )
        self._condition = threading.Condition()
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._condition:
                lines.append(line.rstrip("\n"))
                self._condition.notify_all()

    @property
    def stdout(self) -> str:
        with self._condition:
            return "\n".join(self._out)

    @property
    def stderr(self) -> str:
        with self._condition:
            return "\n".join(self._err)

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """The first stdout line (from line `start`) matching `pattern`; fails the test with
        everything the command printed if none comes in time or the command ends first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for line in self._out[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                ended = self.process.poll() is not None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (ended and not any(r.is_alive() for r in self._readers)):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout} s from "
                        f"{self.args} (exit {self.process.poll()}); stdout:\n"
                        + "\n".join(self._out)
                        + "\nstderr:\n"
                        + "\n".join(self._err)
                    )
                self._condition.wait(min(remaining, 0.2))

    def line_count(self) -> int:
        with self._condition:
            return len(self._out)

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def ctrl_c(self, room_code: str | None = None) -> None:
        """Ctrl-C: the command ends with 130 and no traceback, having left `room_code` (when
        given)."""
        self.interrupt()
        assert self.wait(30) == 130, self.stdout + self.stderr
        if room_code is not None:
            assert f"Left room {room_code}" in self.stdout, self.stdout
        assert "Traceback" not in self.stderr, self.stderr

    def finishes_rounds(self, last: int, who: str, timeout: float) -> None:
        """The command ends with 0 and no traceback within `timeout`, having printed the row of
        every round from 1 to `last`, each with `who`."""
        assert self.wait(timeout) == 0, self.stdout + self.stderr
        for n in range(1, last + 1):
            self.wait_for(ROUND_LINE.format(n=n, last=last, who=who), 1)
        assert "Traceback" not in self.stderr, self.stderr

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self) -> None:
        """Kills it if still running (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
