"""SyncClient.send_control / control_received and exclude_member, through a real relay: what
the app's host uses to run a session (the plan, "removed", a member opting out)."""

from __future__ import annotations

import numpy as np
from test_api_rooms import make_client


def weights(value: float) -> dict:
    return {"layer.weight": np.full((4, 3), value, dtype=np.float32)}


def room_of_three(relay, recorder):
    url = relay().url
    host = make_client(recorder, "host", aggregation_timeout=60.0)
    host.create_relay_room("host", url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
    members = {}
    for name in ("bob", "carol"):
        client = make_client(recorder, name)
        client.control_received.connect(recorder.record(name, "control"))
        client.architecture_received.connect(recorder.record(name, "architecture"))
        client.connect_relay(code, name, url)
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), 10, f"{name} joined")
        members[name] = client
    recorder.wait_for(
        lambda: len(host.users) == 3 and all(len(m.users) == 3 for m in members.values()),
        10,
        "everyone sees everyone",
    )
    host.round_complete.connect(recorder.record("host", "round"))
    return host, members


def test_control_messages_reach_the_room_or_the_named_member(relay, recorder):
    host, members = room_of_three(relay, recorder)
    bob, carol = members["bob"], members["carol"]
    host.send_architecture("unet2d-v1:base=8:depth=2")
    host.send_control({"kind": "removed"}, [bob.user_id])  # directed: Bob only
    host.send_control({"kind": "plan", "plan": {"first_round": 1, "last_round": 5}})
    for name in ("bob", "carol"):
        recorder.wait_for(
            lambda n=name: any(c[1].get("kind") == "plan" for c in recorder.of(n, "control")),
            10,
            f"{name} got the plan",
        )
    # Sends keep their order, so Carol, who got the later plan, would have the earlier one.
    assert [c[1]["kind"] for c in recorder.of("bob", "control")] == ["removed", "plan"]
    assert [c[1]["kind"] for c in recorder.of("carol", "control")] == ["plan"]
    sender, plan = recorder.of("carol", "control")[0]
    assert sender == host.user_id and plan["plan"] == {"first_round": 1, "last_round": 5}
    # A control message is no architecture announcement: only the real one was reported.
    assert recorder.of("carol", "architecture") == [("unet2d-v1:base=8:depth=2",)]
    # Members to the host (opting out) arrive the same way.
    host.control_received.connect(recorder.record("host", "control"))
    carol.send_control({"kind": "opt_out"}, [host.host_id])
    recorder.wait_for(lambda: recorder.of("host", "control"), 10, "the host got it")
    assert recorder.of("host", "control") == [(carol.user_id, {"kind": "opt_out"})]


def test_an_excluded_member_is_neither_awaited_nor_averaged(relay, recorder):
    host, members = room_of_three(relay, recorder)
    bob, carol = members["bob"], members["carol"]
    host.exclude_member(carol.user_id)
    carol.send_weights(weights(100.0), epoch=1, loss=0.5, num_samples=10).result(10)
    bob.send_weights(weights(1.0), epoch=1, loss=0.5, num_samples=10).result(10)
    # Bob's push alone closes the round (Carol is not awaited), and hers is not in it.
    (round_number, contributors) = recorder.wait_for(
        lambda: recorder.of("host", "round"), 20, "the round"
    )[0]
    assert round_number == 1 and contributors == [bob.user_id]
    np.testing.assert_array_equal(host.global_weights["layer.weight"], weights(1.0)["layer.weight"])
    # Taken back, she counts again: the next round waits for both.
    host.exclude_member(carol.user_id, excluded=False)
    bob.send_weights(weights(2.0), epoch=2, loss=0.5, num_samples=10).result(10)
    carol.send_weights(weights(4.0), epoch=2, loss=0.5, num_samples=10).result(10)
    recorder.wait_for(lambda: len(recorder.of("host", "round")) == 2, 20, "round 2")
    assert sorted(recorder.of("host", "round")[1][1]) == sorted([bob.user_id, carol.user_id])
    # Round 2's pushes travel as q8 deltas against round 1's global (docs/weights-format.md):
    # each value within one int8 step of its delta (at most 3.0 / 127) of the exact mean.
    np.testing.assert_allclose(host.global_weights["layer.weight"], 3.0, atol=3.0 / 127)
