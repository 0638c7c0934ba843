"""Fault drill (issue 9, must-show 5): the relay is killed with SIGKILL while a member's push is
half way through it, and started again with the same command line, which has no secret option:
the relay's state directory keeps the resume secret. Everyone is back in the same room code,
the push arrives exactly once and the round completes."""

from __future__ import annotations

import hashlib
import time

import numpy as np
from members import big_layout, layout_state
from test_api_resume import WAIT, free_port
from test_api_rooms import last_users, make_client
from test_api_rounds import check_weighted_mean

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
    # 1 MB chunks and a small receiver buffer: the push is many messages, so the relay can be
    # killed while the host holds part of it.
    command = ["--port", str(free_port()), "--state-dir", str(tmp_path / "state")]
    command += ["--max-message-size", "1M", "--receiver-buffer", "2M"]
    first = relay(*command)
    host = make_client(recorder, "host", aggregation_timeout=600)
    host.round_complete.connect(recorder.record("host", "round_complete"))
    host.create_relay_room("host", first.url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), WAIT, "room")[0]
    mia = make_client(recorder, "mia")
    ned = make_client(recorder, "ned")
    for client, name in ((mia, "mia"), (ned, "ned")):
        client.connect_relay(code, name, first.url)
    everyone = ["host", "mia", "ned"]
    for name in everyone:
        recorder.wait_for(lambda n=name: last_users(recorder, n) == everyone, WAIT, name)

    layout = big_layout(32)  # 16 MB as float16 on the wire: 16 messages of 1 MB
    assert ned.send_weights(layout_state(3, layout), epoch=1, loss=0.5).result(WAIT) > 0
    recorder.wait_for(lambda: recorder.of("host", "weights_received"), WAIT, "ned's push")

    future = mia.send_weights(layout_state(7, layout), epoch=1, loss=0.5, num_samples=2)
    deadline = time.monotonic() + WAIT
    while not host.is_receiving_chunks and time.monotonic() < deadline:
        time.sleep(0.001)
    # Cut mid-way: the host holds part of it. The sender may have written its tail into the
    # socket already (then the relay's death loses it all the same, and it goes again).
    assert host.is_receiving_chunks, "the push must be cut mid-way"
    first.kill()  # SIGKILL: nothing is closed cleanly
    mark = len(recorder.events)
    relay(*command)

    def back_in_the_room():
        clients = (host, mia, ned)
        return all(c.is_connected and c.room_code == code for c in clients) and all(
            sorted(u["display_name"] for u in c.users) == everyone for c in clients
        )

    recorder.wait_for(back_in_the_room, 15 * SLOWDOWN, "everyone back in room within 15 s")
    # Handed to the relay whole: by the resend, or (when it was written out before the kill)
    # the Future was done already and the resend of the newest transfer did it.
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
