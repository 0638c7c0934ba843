"""Fault drill (issue 9, must-show 5): the relay is killed with SIGKILL while a member's push is
half way through it, and started again with the same command line, which has no secret option:
the relay's state directory keeps the resume secret. Everyone is back in the same room code,
the push arrives exactly once and the round completes."""

from __future__ import annotations

import hashlib

import numpy as np
from members import big_layout, layout_state
from test_api_resume import WAIT, free_port
from test_api_rooms import last_users, make_client
from test_api_rounds import check_weighted_mean
from test_api_stall import Forwarder

from helpers.http_metrics import scrape
from helpers.relay_process import SLOWDOWN


def digest(weights: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    hasher = hashlib.sha256()
    for name in sorted(weights):
        value = np.ascontiguousarray(weights[name])
        hasher.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        hasher.update(value.tobytes())
    return hasher.hexdigest()


def test_relay_killed_mid_push_everyone_back_and_the_push_arrives_once(relay, recorder, tmp_path):
    """Issue 9, must-show 5: SIGKILL while a member's push is half way through the relay, then
    the same command line again (no secret option: the state directory keeps the secret)."""
    # A small receiver buffer, and the host behind a forwarder that the test freezes: the
    # relay then throttles the pushing member, so the push is stuck half way, whatever the
    # machine's speed, when the relay is killed.
    command = ["--port", str(free_port()), "--state-dir", str(tmp_path / "state")]
    command += ["--max-message-size", "1M", "--receiver-buffer", "1M"]
    first = relay(*command)
    forwarder = Forwarder(first.port)
    try:
        _killed_mid_push(relay, recorder, command, first, forwarder)
    finally:
        forwarder.stop()


def _killed_mid_push(relay, recorder, command, first, forwarder):
    host = make_client(recorder, "host", aggregation_timeout=600)
    host.round_complete.connect(recorder.record("host", "round_complete"))
    host.create_relay_room("host", forwarder.url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), WAIT, "room")[0]
    mia = make_client(recorder, "mia")
    ned = make_client(recorder, "ned")
    for client, name in ((mia, "mia"), (ned, "ned")):
        client.connect_relay(code, name, first.url)
    everyone = ["host", "mia", "ned"]
    for name in everyone:
        recorder.wait_for(lambda n=name: last_users(recorder, n) == everyone, WAIT, name)

    layout = big_layout(64)  # 32 MB as float16 on the wire: 32 messages of 1 MB
    assert ned.send_weights(layout_state(3, layout), epoch=1, loss=0.5).result(WAIT) > 0
    recorder.wait_for(lambda: recorder.of("host", "weights_received"), WAIT, "ned's push")

    forwarder.pause()
    future = mia.send_weights(layout_state(7, layout), epoch=1, loss=0.5, num_samples=2)
    recorder.wait_for(
        lambda: scrape(first)["relay_senders_throttled_total"] >= 1, WAIT, "mia throttled"
    )
    # 32 MB is more than a throttled sender's socket buffers and the relay's 1 MB hold.
    assert not future.done(), "the push must still be under way when the relay dies"
    first.kill()  # SIGKILL mid-push: nothing is closed cleanly
    mark = len(recorder.events)
    relay(*command)
    forwarder.resume()

    def back_in_the_room():
        clients = (host, mia, ned)
        return all(c.is_connected and c.room_code == code for c in clients) and all(
            sorted(u["display_name"] for u in c.users) == everyone for c in clients
        )

    recorder.wait_for(back_in_the_room, 15 * SLOWDOWN, "everyone back in room within 15 s")
    # The Future completes once the resend handed the whole push to the new relay.
    assert future.result(WAIT) > 0

    recorder.wait_for(lambda: recorder.of("host", "round_complete"), WAIT, "the round")
    for name in ("mia", "ned"):
        recorder.wait_for(lambda n=name: recorder.of(n, "global"), WAIT, f"{name}: global")
    pushers = [user for user, _ in recorder.of("host", "weights_received")]
    assert sorted(pushers) == sorted([mia.user_id, ned.user_id]), "each push exactly once"
    ((round_number, contributors),) = recorder.of("host", "round_complete")
    assert round_number == 1 and sorted(contributors) == sorted(pushers)
    # The round is the weighted mean of both pushes, so mia's arrived whole; everyone holds
    # the same bytes of it.
    check_weighted_mean(host.global_weights, layout, [3, 7], [1, 2])
    on_wire = {
        k: np.asarray(v).astype(np.float16).astype(np.float32)
        for k, v in host.global_weights.items()
    }
    expected = digest(on_wire)  # the host's mean as float16, the wire format
    assert digest(mia.global_weights) == expected and digest(ned.global_weights) == expected
    later = recorder.events[mark:]
    assert not [e for e in later if e[1] == "error"], later
    assert host.room_code == code
