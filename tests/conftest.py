"""Fixtures shared by the whole test suite.

`relay` starts the real relay binary (RELAY_SERVER_BIN, default
relay_server/build/relay_server) on an ephemeral loopback port and stops it after the test,
checking that it exits 0 within 3 s of SIGTERM (and, under SANITIZED_BUILD=1, that it reported
no sanitizer error). Tests are skipped, with the reason, only when the binary does not exist.
"""

from __future__ import annotations

import pytest

from helpers.relay_process import SANITIZED, RelayProcess, relay_binary

# Join attempts per address per minute for tests that are not about the rate limit: every test
# connects from 127.0.0.1, and the default (30) would make unrelated tests flaky.
GENEROUS_JOIN_RATE = "100000"
# Likewise the other per-address limits (rooms, room creations, concurrent handshakes), which
# a test opening many connections or rooms at once from 127.0.0.1 would run into. A flag given
# again later wins, so a test can still set any of them; per_address=False keeps the defaults.
GENEROUS_PER_ADDRESS = (
    "--max-rooms-per-address", "100000", "--create-rate", "100000",
    "--max-handshakes-per-address", "1000",
)  # fmt: skip


@pytest.fixture
def relay():
    """Factory: relay(*args, env=None, tls=False, join_rate=GENEROUS_JOIN_RATE,
    per_address=True) -> RelayProcess.

    Pass join_rate=None to run with the relay's default join rate, per_address=False for its
    default per-address limits (GENEROUS_PER_ADDRESS).
    """
    binary = relay_binary()
    if not binary.exists():
        pytest.skip(f"relay binary {binary} not built (make -C relay_server; or RELAY_SERVER_BIN)")
    started: list[RelayProcess] = []

    def start(
        *args: str, env=None, tls=False, join_rate=GENEROUS_JOIN_RATE, per_address=True
    ) -> RelayProcess:
        extra = ["--join-rate", join_rate] if join_rate is not None else []
        if per_address:
            extra += GENEROUS_PER_ADDRESS
        process = RelayProcess([*extra, *args], env=env, tls=tls)
        started.append(process)
        return process

    yield start

    problems = []
    for process in started:
        if process.exit_code is None:
            code, seconds = process.terminate(timeout=3.0)
            if code is None:
                process.kill()
                problems.append(f"relay pid {process.pid} still running 3 s after SIGTERM")
            elif code != 0:
                problems.append(f"relay pid {process.pid} exited with {code} after SIGTERM")
        if SANITIZED and process.sanitizer_reports():
            problems.append(
                f"relay pid {process.pid} sanitizer reports:\n" + "\n".join(process.stderr)
            )
    assert not problems, "\n".join(problems)
