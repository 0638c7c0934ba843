"""Fault drill: a member is killed (SIGKILL) while pushing; the others are unaffected and the
host closes the round by its timeout with the pushes it has."""

from __future__ import annotations

import logging

import numpy as np
from conftest import kill_member
from members import big_layout, layout_state
from test_api_rooms import last_users, make_client
from test_api_stall import Forwarder

from helpers.http_metrics import scrape


def test_member_killed_mid_transfer_round_closes_by_timeout(relay, recorder, members, caplog):
    caplog.set_level(logging.INFO, logger="segmentation_suite.network.host")
    # 1 MB chunks, little buffering in the relay, and the host behind a forwarder the test
    # freezes: the relay throttles the pushing member, so its push is half way, whatever the
    # machine's speed, when it is killed.
    server = relay("--max-message-size", "1M", "--receiver-buffer", "1M")
    forwarder = Forwarder(server.port)
    try:
        _drill(server, forwarder, recorder, members, caplog)
    finally:
        forwarder.stop()


def _drill(server, forwarder, recorder, members, caplog):
    host = make_client(recorder, "host", aggregation_timeout=4.0)
    host.create_relay_room("host", forwarder.url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
    for name in ("steady", "doomed"):
        members.start(server.url, code, name)
    everyone = ["doomed", "host", "steady"]
    recorder.wait_for(lambda: last_users(recorder, "host") == everyone, 60, "everyone in")
    for name in ("steady", "doomed"):
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), 30, f"{name} in")

    forwarder.pause()
    members.send("doomed", "push", 7, 1, 7, big_layout(128), None)  # 64 MB on the wire
    recorder.wait_for(
        lambda: scrape(server)["relay_senders_throttled_total"] >= 1, 60, "doomed throttled"
    )
    kill_member(members, "doomed")
    forwarder.resume()
    members.send("steady", "push", 5, 2, 5, big_layout(4), None)
    recorder.wait_for(lambda: recorder.of("host", "global"), 30, "the round to close")
    steady_id = recorder.of("steady", "pushed")[0][0]
    assert [user for user, _ in recorder.of("host", "weights_received")] == [steady_id]
    assert not recorder.of("doomed", "pushed"), "doomed's push was cut before it finished"
    # The round waited for the (away) killed member until its timeout: it did not close
    # because everyone had pushed.
    closes = [r.getMessage() for r in caplog.records if "closing on timeout" in r.getMessage()]
    assert len(closes) == 1, closes
    assert "doomed" in [u["display_name"] for u in host.users], "doomed was still in the room"
    expected = layout_state(5, big_layout(4))
    for name, value in expected.items():
        np.testing.assert_allclose(host.global_weights[name], value, rtol=2**-10, atol=1e-3)
    recorder.wait_for(lambda: recorder.of("steady", "global"), 30, "steady gets the global")
    assert not recorder.of("host", "error") and not recorder.of("steady", "error")
