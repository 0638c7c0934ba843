"""Fault drills: the relay restarts mid-session. With the same secret the creator re-opens its
room under the same code and the member resumes, without user_left churn. With another secret
the member's resume is refused: it waits for the host in words, with bounded backed-off
re-joins, and is back in the same code once the host re-opens it.

The relay killed in the middle of a push is in test_api_restart_push.py."""

from __future__ import annotations

import json
import socket

from test_api_rooms import last_users, make_client
from test_api_stall import Forwarder
from websockets.sync.client import connect

from helpers.http_metrics import scrape
from helpers.relay_process import SLOWDOWN

WAIT = 30.0 * SLOWDOWN  # a safety net only: every wait ends on a state


def test_relay_restart_everyone_back_in_the_same_room(relay, recorder, members, tmp_path):
    secret = tmp_path / "relay.secret"
    first = relay("--secret-file", str(secret))
    url = first.url
    host = make_client(recorder, "host")
    host.create_relay_room("host", url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
    members.start(url, code.lower(), "mia")
    both = ["host", "mia"]
    recorder.wait_for(lambda: last_users(recorder, "mia") == both, 20, "mia joined")
    recorder.wait_for(lambda: last_users(recorder, "host") == both, 20, "host sees mia")
    # In a private room mia's room_joined follows the key exchange, after the user lists.
    recorder.wait_for(lambda: recorder.of("mia", "room_joined"), 20, "mia holds the room key")
    mark = len(recorder.events)

    code_at_exit, _ = first.terminate(timeout=5)
    assert code_at_exit == 0
    relay("--secret-file", str(secret), "--port", str(first.port))

    def back_together():
        later = recorder.events[mark:]
        seen = {name for name, what, args in later if what == "users" and sorted(args[0]) == both}
        return host.is_connected and seen == {"host", "mia"}

    recorder.wait_for(back_together, 10, "both back in the room within 10 s")
    assert host.room_code == code
    later = recorder.events[mark:]
    assert not [e for e in later if e[1] in ("user_left_room", "user_joined_room", "error")]
    assert not [e for e in later if e[1] in ("room_created", "room_joined")]


def free_port() -> int:
    """A loopback port nobody listens on now, so both relay runs get one command line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_member_refused_resume_rejoins_when_the_host_reopens_and_never_spins(
    relay, recorder, tmp_path
):
    """A relay restarted with another secret refuses the member's resume; the member says it
    waits for the host and re-joins with backoff, never into the join rate limit (the relay
    runs with its default rate). When the relay runs on the first secret again and the host
    (an independent `websockets` client) resumes, the member is back in the same code."""
    port = str(free_port())
    first_secret = ["--port", port, "--secret-file", str(tmp_path / "first.secret")]
    first = relay(*first_secret, join_rate=None)
    host_id = "hostws000000"
    with connect(first.url + "/ws", open_timeout=WAIT) as ws:
        create = {"user_id": host_id, "display_name": "host", "features": ["resume"]}
        ws.send(json.dumps({"type": "create_room", "payload": create}))
        created = json.loads(ws.recv(timeout=WAIT))["payload"]
        code, token = created["room_code"], created["resume_token"]
        mia = make_client(
            recorder,
            "mia",
            reconnect_attempts=30,
            reconnect_base_delay=0.2,
            reconnect_max_delay=1.0,
        )
        mia.sync_status.connect(recorder.record("mia", "status"))
        mia.connect_relay(code, "mia", first.url)
        recorder.wait_for(lambda: last_users(recorder, "mia") == ["host", "mia"], WAIT, "joined")
        first.kill()

    def said(words):
        return lambda: [text for (text,) in recorder.of("mia", "status") if words in text]

    other = relay("--port", port, "--secret-file", str(tmp_path / "other.secret"), join_rate=None)
    recorder.wait_for(said("waiting for the host to open it again"), WAIT, "mia waits, in words")
    refused = scrape(other)
    other.kill()
    second = relay(*first_secret, join_rate=None)
    with connect(second.url + "/ws", open_timeout=WAIT) as ws:
        resume = {"room_code": code, "user_id": host_id, "display_name": "host"}
        ws.send(json.dumps({"type": "resume", "payload": dict(resume, resume_token=token)}))
        reopened = json.loads(ws.recv(timeout=WAIT))
        assert reopened["type"] == "room_joined" and reopened["payload"]["resumed"]
        recorder.wait_for(said("the host re-opened it"), WAIT, "mia back, in words")
        assert mia.is_connected and mia.room_code == code and mia.host_id == host_id
        assert sorted(u["user_id"] for u in mia.users) == sorted([host_id, mia.user_id])
    # Bounded, backed-off re-joins: never refused for the rate, on either relay.
    assert refused["relay_rejects_total{reason=invalid_resume_token}"] == 1
    for metrics in (refused, scrape(second)):
        assert metrics["relay_rejects_total{reason=rate_limited}"] == 0
    assert not [e for e in recorder.of("mia", "error")]


def test_relay_on_another_secret_host_opens_a_new_room_and_member_gives_up_in_bounds(
    relay, recorder, tmp_path
):
    """Both resumes are refused: the host says it opens a new room under a new code; the
    member waits for the old code exactly `reconnect_attempts` re-joins, then says why.

    The member reaches the relay through a forwarder that is frozen while the relay restarts,
    so none of its few tries is spent on a relay that is not up yet."""
    port = str(free_port())
    first = relay("--port", port, "--secret-file", str(tmp_path / "a.secret"), join_rate=None)
    forwarder = Forwarder(int(port))
    try:
        _another_secret(relay, recorder, tmp_path, port, first, forwarder)
    finally:
        forwarder.stop()


def _another_secret(relay, recorder, tmp_path, port, first, forwarder):
    host = make_client(recorder, "host")
    host.sync_status.connect(recorder.record("host", "status"))
    host.create_relay_room("host", first.url, private=False)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), WAIT, "room")[0]
    attempts = 3
    mia = make_client(
        recorder,
        "mia",
        reconnect_attempts=attempts,
        reconnect_base_delay=0.1,
        reconnect_max_delay=0.5,
    )
    mia.sync_status.connect(recorder.record("mia", "status"))
    mia.disconnected.connect(recorder.record("mia", "disconnected"))
    mia.connect_relay(code, "mia", forwarder.url)
    for name in ("host", "mia"):
        recorder.wait_for(lambda n=name: last_users(recorder, n) == ["host", "mia"], WAIT, name)
    forwarder.pause()
    first.kill()
    second = relay("--port", port, "--secret-file", str(tmp_path / "b.secret"), join_rate=None)
    forwarder.resume()

    recorder.wait_for(lambda: len(recorder.of("host", "room_created")) == 2, WAIT, "new room")
    (new_code,) = recorder.of("host", "room_created")[1]
    assert new_code != code and host.room_code == new_code
    assert [s for (s,) in recorder.of("host", "status") if "opening a new room" in s]

    recorder.wait_for(lambda: recorder.of("mia", "disconnected"), WAIT, "mia gives up")
    (gave_up,) = recorder.of("mia", "error")
    assert f"Room {code} did not come back after {attempts} tries" in gave_up[0]
    waits = [s for (s,) in recorder.of("mia", "status") if "waiting for the host" in s]
    assert len(waits) == attempts
    metrics = scrape(second)
    assert metrics["relay_rejects_total{reason=invalid_resume_token}"] == 2  # host and mia
    assert metrics["relay_rejects_total{reason=room_not_found}"] == attempts
    assert metrics["relay_rejects_total{reason=rate_limited}"] == 0
