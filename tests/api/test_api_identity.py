"""Impostor drill: nobody in a room can pose as another member or as the host.

Two of our SyncClients (the host and a member, in the test process) and an independent client
(the `websockets` library) that tries what an attacker would: join under the host's or the
member's user_id, send a global model of its own, and listen for pushes meant for the host.
Frame headers are built with the spec's `struct` layout (tests/helpers/frame_header.py), not
with our transport, so the relay and the client are checked against the spec.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from members import layout_state
from test_api_rooms import last_users, make_client
from websockets.sync.client import connect

from helpers import frame_header
from helpers.relay_process import SLOWDOWN
from segmentation_suite.network.codec import serialize_weights

TIMEOUT = 10.0 * SLOWDOWN
LAYOUT = [{"name": "layer.weight", "shape": [64], "dtype": "float32"}]
GLOBAL_MODEL_KIND = 2  # FrameKind.GLOBAL_MODEL in docs/protocol.md
IMPOSTOR_ID = "mallory00000"


def send(ws, message_type: str, **payload) -> None:
    ws.send(json.dumps({"type": message_type, "payload": payload}))


def next_text(ws, message_type: str) -> dict:
    """The next text message of `message_type`, skipping others; binaries fail the test."""
    while True:
        message = ws.recv(timeout=TIMEOUT)
        assert isinstance(message, str), f"unexpected binary of {len(message)} bytes"
        decoded = json.loads(message)
        if decoded["type"] == message_type:
            return decoded


def forged_global_model(sender: str, value: float) -> tuple[dict, bytes]:
    """The announcement and the one framed binary of a global model whose every weight is
    `value`, as the impostor sends them."""
    weights = {"layer.weight": np.full(64, value, dtype=np.float32)}
    payload = bytes(serialize_weights(weights, metadata={"aggregation_round": 99}))
    header = frame_header.build(
        sender, kind=GLOBAL_MODEL_KIND, transfer_id=666, total_size=len(payload)
    )
    announcement = {
        "type": "global_model",
        "payload": {"aggregation_round": 99, "contributor_count": 1},
        "framed": True,
    }
    return announcement, header + payload


@pytest.fixture
def room(relay, recorder):
    """(relay, host, member, code): a room on our relay with a host and one member."""
    process = relay()
    host = make_client(recorder, "host", aggregation_timeout=120)
    host.create_relay_room("host", process.url, private=False)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), TIMEOUT, "room")[0]
    member = make_client(recorder, "mia")
    member.connect_relay(code, "mia", process.url)
    both = ["host", "mia"]
    recorder.wait_for(lambda: last_users(recorder, "host") == both, TIMEOUT, "mia joined")
    recorder.wait_for(lambda: last_users(recorder, "mia") == both, TIMEOUT, "mia sees the host")
    return process, host, member, code


def test_impostor_can_neither_take_an_id_nor_send_a_global_model(room, recorder):
    process, host, member, code = room
    assert member.host_id == host.user_id
    with connect(process.url + "/ws", max_size=None, open_timeout=TIMEOUT) as ws:
        # The host's id and the member's id are taken while they are in the room.
        for taken in (host.user_id, member.user_id):
            send(ws, "join_room", room_code=code, user_id=taken, display_name="host")
            refusal = next_text(ws, "error")
            assert refusal["payload"]["code"] == "USER_ID_TAKEN"
        send(ws, "join_room", room_code=code, user_id=IMPOSTOR_ID, display_name="mallory")
        joined = next_text(ws, "room_joined")
        # The relay attests who created the room, whatever the list order.
        assert joined["payload"]["host_id"] == host.user_id
        ids = [u["user_id"] for u in joined["payload"]["users"]]
        assert sorted(ids) == sorted([host.user_id, member.user_id, IMPOSTOR_ID])
        everyone = ["host", "mallory", "mia"]
        recorder.wait_for(lambda: last_users(recorder, "mia") == everyone, TIMEOUT, "mallory")

        # A global model framed under the host's id: the relay refuses the header.
        announcement, forged = forged_global_model(host.user_id, -666.0)
        ws.send(forged)
        assert next_text(ws, "error")["payload"]["code"] == "BAD_FRAME_HEADER"

        # A global model under its own id reaches the others, who refuse it in words.
        announcement, forged = forged_global_model(IMPOSTOR_ID, -666.0)
        ws.send(json.dumps(announcement))
        ws.send(forged)

        def refused(name):
            return [e for (e,) in recorder.of(name, "error") if "Refused a global model" in e]

        recorder.wait_for(lambda: refused("mia"), TIMEOUT, "mia refuses the forged model")
        recorder.wait_for(lambda: refused("host"), TIMEOUT, "the host refuses it too")
        assert "mallory" in refused("mia")[0]
        assert member.global_weights is None and not recorder.of("mia", "global")

        # A member's push goes to the host only. The relay keeps one sender's order for each
        # receiver, so the member's session_info, sent after the push, reaches the impostor
        # after the push would have: what the impostor got before it is all it got.
        pushed = layout_state(5, LAYOUT)
        assert member.send_weights(pushed, epoch=1, loss=0.5).result(TIMEOUT) > 0
        member.send_architecture("unet-after-push")
        while True:
            message = ws.recv(timeout=TIMEOUT)
            assert isinstance(message, str), "a push meant for the host reached the impostor"
            decoded = json.loads(message)
            assert decoded["type"] != "weights_push", "a push announcement reached the impostor"
            if decoded["type"] == "session_info":
                break
        recorder.wait_for(lambda: recorder.of("host", "weights_received"), TIMEOUT, "the push")
        assert [args[0] for args in recorder.of("host", "weights_received")] == [member.user_id]

        # The host's own global model is still taken: the refusal is about who sent it.
        assert host.trigger_aggregation()
        recorder.wait_for(lambda: recorder.of("mia", "global"), TIMEOUT, "the real global")
        got = member.global_weights["layer.weight"]  # float16 on the wire: within 2**-10
        np.testing.assert_allclose(got, pushed["layer.weight"], rtol=2**-10, atol=1e-3)
        assert not (member.global_weights["layer.weight"] == -666.0).any()
        assert host.host_id == host.user_id and member.host_id == host.user_id


def test_our_client_under_a_taken_id_is_told_so_in_words(room, recorder):
    process, host, member, code = room
    twin = make_client(recorder, "twin")
    twin.user_id = member.user_id  # as a copied profile, or an impostor, would
    twin.connect_relay(code, "twin", process.url)
    (text,) = recorder.wait_for(lambda: recorder.of("twin", "error"), TIMEOUT, "refusal")[0]
    assert f"Room {code} already has a member with this client's id" in text
    assert not recorder.of("twin", "room_joined") and not twin.is_connected
    assert last_users(recorder, "host") == ["host", "mia"]
