"""Deltas in the session (issue 14, must-show 5), through our relay: pushes travel as q8
deltas against the global the member holds; the host sends each global as a delta to members
that hold the previous one and whole (float16) to the others: a late joiner and a member that
missed a round while away (and resumed) get the whole model, then deltas. Values are checked:
every member holds the same global bit for bit (whichever way it arrived), close to the host's
own aggregate; the host rebuilds the pushes close to what was sent."""

from __future__ import annotations

import numpy as np
import pytest
from test_api_rooms import last_users, make_client

from segmentation_suite.network.codec import reference_id

LAYOUT = {
    "conv.weight": ((64, 32, 3, 3), np.float32),
    "conv.bias": ((64,), np.float32),
    "bn.num_batches_tracked": ((), np.int64),
}


def model(seed: int, base: dict | None = None) -> dict:
    """A model near `base` (a training step away), or a fresh one."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in LAYOUT.items():
        if dtype == np.int64:
            out[name] = np.array(seed, np.int64)
        elif base is None:
            out[name] = rng.standard_normal(shape).astype(np.float32) * 0.1
        else:
            step = rng.standard_normal(shape).astype(np.float32) * 1e-2
            out[name] = np.asarray(base[name], np.float32) + step
    return out


def spy_globals(client) -> list[tuple[int, dict]]:
    """(format version, weights) of every global model the member decodes."""
    seen: list[tuple[int, dict]] = []
    original = client._session.member_deltas.receive_global

    def receive(data):
        weights, metadata = original(data)
        seen.append((metadata["format_version"], weights))
        return weights, metadata

    client._session.member_deltas.receive_global = receive
    return seen


def spy_pushes(host) -> list[tuple[str, int, dict]]:
    """(sender, format version, rebuilt weights) of every push the host decodes."""
    seen: list[tuple[str, int, dict]] = []
    original = host._session.accept_push

    def accept(sender, weights, metadata):
        seen.append((sender, metadata["format_version"], weights))
        return original(sender, weights, metadata)

    host._session.accept_push = accept
    return seen


def wait_count(recorder, items: list, count: int, what: str) -> None:
    recorder.wait_for(lambda: len(items) >= count, 60, what)


class NoJitter:
    """The reconnect policy's random source for a member that must stay away for exactly its
    base delay."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return high


def assert_same_global(a: dict, b: dict, host_exact: dict) -> None:
    assert reference_id(a) == reference_id(b)
    for name, value in host_exact.items():
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
        if np.asarray(value).dtype == np.int64:
            assert int(a[name]) == int(value)
        else:  # float16 rounding plus half a q8 step of a 1e-2 change
            np.testing.assert_allclose(a[name], value, rtol=2**-10, atol=1e-3, err_msg=name)


def test_late_joiner_and_resumed_member_get_the_whole_model_then_deltas(
    relay, recorder, monkeypatch
):
    url = relay().url
    host = make_client(recorder, "host", aggregation_timeout=120)
    pushes = spy_pushes(host)
    host.create_relay_room("host", url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
    ann = make_client(recorder, "ann", reconnect_base_delay=3.0, reconnect_max_delay=3.0)
    ann_globals = spy_globals(ann)
    ann.connect_relay(code.lower(), "ann", url)
    recorder.wait_for(lambda: last_users(recorder, "host") == ["ann", "host"], 20, "ann in")
    recorder.wait_for(lambda: recorder.of("ann", "room_joined"), 20, "ann joined")

    def host_global(round_number):
        recorder.wait_for(lambda: host.aggregation_round >= round_number, 60, "the round")
        return host.global_weights

    # Round 1: nobody holds a global yet, so the push and the global travel whole.
    ann.send_weights(model(1), epoch=1, loss=0.5, num_samples=10)
    exact = host_global(1)
    wait_count(recorder, ann_globals, 1, "ann gets global 1")
    assert ann_globals[0][0] == 1 and pushes[0][1] == 1
    as_float16 = exact["conv.weight"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ann_globals[0][1]["conv.weight"], as_float16)

    # A late joiner asks for the global model and gets it whole, bit for bit what ann holds.
    lee = make_client(recorder, "lee")
    lee_globals = spy_globals(lee)
    lee.connect_relay(code.lower(), "lee", url)
    recorder.wait_for(lambda: last_users(recorder, "host") == ["ann", "host", "lee"], 20, "lee")
    recorder.wait_for(lambda: recorder.of("lee", "room_joined"), 20, "lee joined")
    lee.request_global_model()
    wait_count(recorder, lee_globals, 1, "lee gets the global on request")
    assert lee_globals[0][0] == 1
    assert_same_global(lee_globals[0][1], ann_globals[0][1], exact)

    # Round 2: both push deltas against global 1; both hold it, so both get a delta.
    held = ann_globals[-1][1]
    sent = {"ann": model(2, held), "lee": model(3, held)}
    ann.send_weights(sent["ann"], epoch=2, loss=0.4, num_samples=10)
    lee.send_weights(sent["lee"], epoch=2, loss=0.4, num_samples=10)
    exact = host_global(2)
    wait_count(recorder, ann_globals, 2, "ann gets global 2")
    wait_count(recorder, lee_globals, 2, "lee gets global 2")
    round_pushes = pushes[1:3]
    assert sorted(version for _, version, _ in round_pushes) == [2, 2]
    for sender, _, rebuilt in round_pushes:
        name = "ann" if sender == ann.user_id else "lee"
        for tensor in ("conv.weight", "conv.bias"):
            change = sent[name][tensor] - held[tensor]
            error = np.linalg.norm(rebuilt[tensor] - sent[name][tensor]) / np.linalg.norm(change)
            assert error <= 0.01, (name, tensor, error)
    assert ann_globals[1][0] == 2 and lee_globals[1][0] == 2
    assert_same_global(ann_globals[1][1], lee_globals[1][1], exact)

    # Round 3: ann's connection drops and it stays away (3 s) while the round closes without
    # it; lee gets the global as a delta, ann misses it and resumes holding global 2.
    monkeypatch.setattr(ann._session.reconnect, "rng", NoJitter)
    ann._connection.close(code=4000, reason="test: the link drops", timeout=2)
    lee.send_weights(model(4, lee_globals[-1][1]), epoch=3, loss=0.3, num_samples=10)
    recorder.wait_for(lambda: len(pushes) >= 4, 30, "lee's push")
    assert host.trigger_aggregation()
    exact = host_global(3)
    wait_count(recorder, lee_globals, 3, "lee gets global 3")
    assert lee_globals[2][0] == 2
    recorder.wait_for(lambda: ann.is_connected, 30, "ann back")
    assert len(ann_globals) == 2, "ann was away and must have missed global 3"

    # Round 4: ann (holding global 2) gets the whole model, lee (holding 3) a delta.
    ann.send_weights(model(5, ann_globals[-1][1]), epoch=4, loss=0.2, num_samples=10)
    lee.send_weights(model(6, lee_globals[-1][1]), epoch=4, loss=0.2, num_samples=10)
    exact = host_global(4)
    wait_count(recorder, ann_globals, 3, "ann gets global 4")
    wait_count(recorder, lee_globals, 4, "lee gets global 4")
    assert ann_globals[2][0] == 1 and lee_globals[3][0] == 2
    assert_same_global(ann_globals[2][1], lee_globals[3][1], exact)

    # Round 5: both hold global 4 again: deltas for both.
    ann.send_weights(model(7, ann_globals[-1][1]), epoch=5, loss=0.1, num_samples=10)
    lee.send_weights(model(8, lee_globals[-1][1]), epoch=5, loss=0.1, num_samples=10)
    exact = host_global(5)
    wait_count(recorder, ann_globals, 4, "ann gets global 5")
    wait_count(recorder, lee_globals, 5, "lee gets global 5")
    assert ann_globals[3][0] == 2 and lee_globals[4][0] == 2
    assert_same_global(ann_globals[3][1], lee_globals[4][1], exact)
    assert not recorder.of("ann", "error") and not recorder.of("lee", "error")
    assert not recorder.of("host", "error")


@pytest.mark.parametrize("compression", [None, "topk"])
def test_compression_setting_of_a_member(relay, recorder, compression):
    """compression=None: pushes and globals always whole; "topk": pushes as topk deltas."""
    url = relay().url
    host = make_client(recorder, "host", aggregation_timeout=120)
    pushes = spy_pushes(host)
    host.create_relay_room("host", url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
    member = make_client(recorder, "mo", compression=compression)
    seen = spy_globals(member)
    member.connect_relay(code.lower(), "mo", url)
    recorder.wait_for(lambda: last_users(recorder, "host") == ["host", "mo"], 20, "mo in")
    recorder.wait_for(lambda: recorder.of("mo", "room_joined"), 20, "mo joined")
    member.send_weights(model(1), epoch=1, loss=0.5, num_samples=1)
    wait_count(recorder, seen, 1, "global 1")
    member.send_weights(model(2, seen[-1][1]), epoch=2, loss=0.5, num_samples=1)
    wait_count(recorder, seen, 2, "global 2")
    expected = 1 if compression is None else 2
    assert [version for _, version, _ in pushes] == [1, expected]
    # the host's broadcast uses its own setting ("auto"), but only to members that hold the
    # previous global and said so: a compression=None member never says
    assert [version for version, _ in seen] == [1, expected]
    assert not recorder.of("mo", "error") and not recorder.of("host", "error")
