"""Fault drill: a member's network stalls past the relay's ping timeout, then comes back.

The member reaches the relay through a TCP forwarder process (tcp_forwarder.py) that the test
freezes with SIGSTOP: the connection stays open but nothing moves, as on a dead link. The
relay (pings every 1 s, closes after 3 s of silence, keeps a place for 2 s) drops the member,
and the others see it leave. After SIGCONT the member notices its connection is gone,
reconnects and resumes with its token, and the others see it back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from test_api_rooms import last_users, make_client

from helpers.http_metrics import scrape

FORWARDER = Path(__file__).with_name("tcp_forwarder.py")


class Forwarder:
    """tcp_forwarder.py as a subprocess in front of the relay at `target_port`."""

    def __init__(self, target_port: int):
        self.process = subprocess.Popen(
            [sys.executable, str(FORWARDER), "--target", f"127.0.0.1:{target_port}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.stop()
            raise AssertionError(f"forwarder did not start: {line!r}")
        self.url = f"ws://127.0.0.1:{match.group(1)}"

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()  # a stopped process would not act on SIGTERM
            self.process.terminate()
            self.process.wait(5)
        self.process.stdout.close()


def test_member_stalled_past_ping_timeout_leaves_and_comes_back(relay, recorder, members):
    server = relay("--ping-interval", "1", "--idle-timeout", "3", "--resume-grace", "2")
    forwarder = Forwarder(server.port)
    try:
        host = make_client(recorder, "host")
        host.create_relay_room("host", server.url, private=False)
        (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
        members.start(server.url, code, "steady")
        members.start(forwarder.url, code, "stalled")
        everyone = ["host", "stalled", "steady"]
        for name in everyone:
            recorder.wait_for(lambda n=name: last_users(recorder, n) == everyone, 30, name)
        mark = len(recorder.events)

        forwarder.pause()
        for name in ("host", "steady"):
            recorder.wait_for(
                lambda n=name: last_users(recorder, n) == ["host", "steady"], 20, f"{name}: left"
            )
            assert recorder.of(name, "user_left_room") == [("stalled",)]
        # The relay closed the silent connection for its idle timeout, kept the member's
        # place (away) for the resume grace, and only then let it leave.
        assert scrape(server)["relay_rejects_total{reason=idle_timeout}"] == 1
        events = [line for line in server.log if re.search(r"\b(user_away|user_left)\b", line)]
        assert len(events) == 2 and "user_away" in events[0] and "user_left" in events[1], events
        gone_at = len(recorder.events)

        forwarder.resume()
        for name in everyone:
            recorder.wait_for(
                lambda n=name: any(
                    what == "users" and sorted(args[0]) == everyone
                    for who, what, args in recorder.events[gone_at:]
                    if who == n
                ),
                30,
                f"{name}: stalled is back",
            )
        # Having seen it leave, the others see it join again (by resume, so no new identity).
        for name in ("host", "steady"):
            recorder.wait_for(
                lambda n=name: recorder.of(n, "user_joined_room")[-1:] == [("stalled",)],
                5,
                f"{name}: user_joined_room",
            )
        later = recorder.events[mark:]
        assert not [e for e in later if e[1] in ("error", "disconnected")]
        # It came back as the same member, by resume: no second room_joined.
        assert recorder.of("stalled", "room_joined") == [(code,)]
        assert host.is_connected and host.room_code == code
    finally:
        forwarder.stop()
