"""FedAvg rounds in relay mode through the app API, with members in their own processes.

The host (room creator) is a SyncClient in the test process. Checked: the global model is the
num_samples-weighted mean of the members' pushes (to float16 precision, the wire format), each
push crosses the relay once (to the host, per the relay's /metrics), and concurrent chunked
pushes of two members are reassembled whole and attributed to the right sender. Against our
relay and the v1 fixture.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from members import big_layout, layout_state, layout_tensor, unet_layout
from test_api_rooms import make_client

from helpers.http_metrics import scrape
from segmentation_suite.network import serialize_weights


def start_room(recorder, url, members, names, timeout=60.0, private=True):
    """Private rooms need our relay (directed delivery): against v1, pass private=False."""
    host = make_client(recorder, "host", aggregation_timeout=timeout)
    host.create_relay_room("host", url, private=private)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
    for name in names:
        members.start(url, code.lower(), name)
    expected = sorted(["host", *names])
    recorder.wait_for(
        lambda: (
            recorder.of("host", "users") and sorted(recorder.of("host", "users")[-1][0]) == expected
        ),
        60,
        "everyone in the room",
    )
    for name in names:
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), 30, f"{name} joined")
    return host


def check_weighted_mean(global_weights, layout, seeds, samples):
    """Rebuilds each member's tensors from its seed, one tensor at a time, and compares."""
    total = sum(samples)
    for index, entry in enumerate(layout):
        tensors = [layout_tensor(seed, index, entry) for seed in seeds]
        got = np.asarray(global_weights[entry["name"]])
        if entry["dtype"] != "float32":
            assert got.dtype == np.dtype(entry["dtype"])
            np.testing.assert_array_equal(got, np.maximum.reduce(tensors), err_msg=entry["name"])
            continue
        assert got.dtype == np.float32 and got.shape == tuple(entry["shape"])
        on_wire = sum(
            n * t.astype(np.float16).astype(np.float64)
            for n, t in zip(samples, tensors, strict=True)
        )
        exact = sum(n * t.astype(np.float64) for n, t in zip(samples, tensors, strict=True))
        np.testing.assert_allclose(
            got, on_wire / total, rtol=1e-5, atol=1e-5, err_msg=entry["name"]
        )
        np.testing.assert_allclose(
            got, exact / total, rtol=2**-10, atol=2e-3, err_msg=entry["name"]
        )


@pytest.mark.slow
def test_fedavg_round_of_four_members_on_the_unet_layout(any_relay, recorder, members):
    kind, url, relay = any_relay
    names = ["m1", "m2", "m3", "m4"]
    host = start_room(recorder, url, members, names, private=kind == "ours")
    layout = unet_layout()
    seeds, samples = [11, 12, 13, 14], [10, 20, 30, 40]
    before = scrape(relay) if relay else None
    for name, seed, n in zip(names, seeds, samples, strict=True):
        members.send(name, "push", seed, n, 3, None, None)
    recorder.wait_for(lambda: recorder.of("host", "global"), 120, "the round to close")
    for name in names:
        recorder.wait_for(lambda n=name: recorder.of(n, "global"), 120, f"{name} gets the global")
    after = scrape(relay) if relay else None

    pushes = recorder.of("host", "weights_received")
    assert sorted(p[1]["num_samples"] for p in pushes) == samples
    assert host.aggregation_round == 1
    check_weighted_mean(host.global_weights, layout, seeds, samples)
    for name in names:
        assert recorder.of(name, "global")[0][0] == sorted(e["name"] for e in layout)

    if relay is not None:
        # Each push crosses the relay once (to the host); the global model once per member.
        push_size = len(
            serialize_weights({e["name"]: layout_tensor(0, i, e) for i, e in enumerate(layout)})
        )
        received = (
            after["relay_bytes_received_total{kind=binary}"]
            - before["relay_bytes_received_total{kind=binary}"]
        )
        sent = (
            after["relay_bytes_sent_total{kind=binary}"]
            - before["relay_bytes_sent_total{kind=binary}"]
        )
        assert received == pytest.approx(5 * push_size, rel=0.01)  # 4 pushes + 1 global
        assert sent == pytest.approx(8 * push_size, rel=0.01)  # 4 pushes + 4 copies of global
        # What gossip would have cost: every push to the 4 other members.
        assert sent < 0.6 * (16 * push_size + 4 * push_size)


@pytest.mark.slow
def test_concurrent_chunked_pushes_are_attributed_to_their_senders(any_relay, recorder, members):
    kind, url, _ = any_relay
    host = start_room(recorder, url, members, ["ann", "ben"], timeout=120, private=kind == "ours")
    layout = big_layout(64)  # 64 MB of float32 per member; 32 MB on the wire, several chunks
    start_at = time.time() + 3  # both serialize first, then send at the same moment
    members.send("ann", "push", 101, 3, 101, layout, start_at)
    members.send("ben", "push", 202, 5, 202, layout, start_at)
    recorder.wait_for(lambda: recorder.of("host", "global"), 120, "the round to close")
    received = {user_id: info for user_id, info in recorder.of("host", "weights_received")}
    ann = recorder.of("ann", "pushed")[0][0]
    ben = recorder.of("ben", "pushed")[0][0]
    # The epoch and num_samples travel inside each payload: right values mean right sender.
    assert received[ann]["epoch"] == 101 and received[ann]["num_samples"] == 3
    assert received[ben]["epoch"] == 202 and received[ben]["num_samples"] == 5
    assert not recorder.of("host", "error")
    check_weighted_mean(host.global_weights, layout, [101, 202], [3, 5])
    assert math.isclose(sum(np.asarray(v).nbytes for v in host.global_weights.values()), 64 * 2**20)


def test_training_host_is_waited_for_even_when_members_push_first(relay, recorder, members):
    """A host that trains (host_trains) is part of every round: a member's quick push does not
    close the round before the host's own."""
    host = start_room(recorder, relay().url, members, ["ann"])
    host.host_trains = True
    layout = big_layout(1)
    members.send("ann", "push", 2, 3, 1, layout, None)
    recorder.wait_for(lambda: recorder.of("host", "weights_received"), 30, "ann's push")
    time.sleep(0.5)  # a round closing on ann's push alone would show up by now
    assert not recorder.of("host", "global"), "the round closed without the host"
    host.send_weights(layout_state(1, layout), epoch=1, loss=0.5, num_samples=1)
    recorder.wait_for(lambda: recorder.of("host", "global"), 30, "the round to close")
    # the exact mean (the host's signal carries the float16-rounded global its members hold)
    check_weighted_mean(host.global_weights, layout, [1, 2], [1, 3])


def test_disconnecting_right_after_a_round_still_delivers_its_global_model(
    relay, recorder, members
):
    """disconnect() lets queued sends finish first: a host that leaves as soon as its round
    closes has still sent the round's global model."""
    host = start_room(recorder, relay().url, members, ["ann"])
    host.round_complete.connect(lambda *_: host.disconnect())
    layout = big_layout(8)
    members.send("ann", "push", 2, 1, 1, layout, None)
    recorder.wait_for(lambda: recorder.of("ann", "global"), 30, "ann gets the global model")
    recorder.wait_for(lambda: ("host",) in recorder.of("ann", "user_left_room"), 10, "host left")
