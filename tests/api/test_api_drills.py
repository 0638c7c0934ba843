"""Fault drill: a member is killed (SIGKILL) while pushing; the others are unaffected and the
host closes the round by its timeout with the pushes it has."""

from __future__ import annotations

import logging
import time

import numpy as np
from conftest import kill_member
from members import big_layout, layout_state
from test_api_rounds import start_room


def test_member_killed_mid_transfer_round_closes_by_timeout(relay, recorder, members, caplog):
    caplog.set_level(logging.INFO, logger="segmentation_suite.network.host")
    # 1 MB chunks and little buffering in the relay: a push is many messages, most of them
    # still with the sender when the host holds the first.
    url = relay("--max-message-size", "1M", "--receiver-buffer", "1M").url
    host = start_room(recorder, url, members, ["steady", "doomed"], timeout=4.0)
    layout = big_layout(128)  # 64 MB on the wire: long enough to be cut in the middle
    members.send("doomed", "push", 7, 1, 7, layout, None)
    # Killed once the host holds part of the push (a state, not a moment).
    deadline = time.monotonic() + 60
    while not host.is_receiving_chunks and time.monotonic() < deadline:
        time.sleep(0.001)
    assert host.is_receiving_chunks, "doomed's push never started"
    kill_member(members, "doomed")
    members.send("steady", "push", 5, 2, 5, big_layout(4), None)
    recorder.wait_for(lambda: recorder.of("host", "global"), 30, "the round to close")
    steady_id = recorder.of("steady", "pushed")[0][0]
    assert [user for user, _ in recorder.of("host", "weights_received")] == [steady_id]
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
