"""The session state machine (room_session.py) without sockets: events in, actions out.

Each test feeds a RoomSession what a relay, a member or a timer would, and checks the actions
it returns (messages to send and to whom, signals, timers, connections to open) and its state.
Expected values come from the protocol (docs/protocol.md) and from numpy, never from the code
under test. The same session runs under SyncClient on real relays in tests/api.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from segmentation_suite.network.codec import serialize_weights
from segmentation_suite.network.host import HostRounds
from segmentation_suite.network.mixed_room import MixedRoomPart
from segmentation_suite.network.protocol import FrameKind, Message, MessageType
from segmentation_suite.network.reconnect import ReconnectPolicy
from segmentation_suite.network.room_session import (
    LAN_HOST_LEFT,
    RECONNECT_TIMER,
    REJOIN_TIMER,
    ROUND_TIMER,
    RoomSession,
)
from segmentation_suite.network.server import AggregationServer, LanHub
from segmentation_suite.network.session_actions import (
    CloseConnection,
    Deliver,
    Emit,
    OpenConnection,
    Report,
    SendGlobalData,
    SendGlobalModel,
    SendJson,
    StartTimer,
)

RELAY = {
    "version": "test",
    "protocol": 2,
    "features": ["frame_header", "resume", "directed", "host_id", "member_features"],
    "limits": {"chunk_size": 1 << 20},
}
URL = "ws://relay.test/ws"


def user(user_id: str, name: str | None = None) -> dict:
    return {"user_id": user_id, "display_name": name or user_id, "features": ["frame_header"]}


def msg(kind: str, payload: dict, **top) -> Message:
    return Message(MessageType(kind), payload, **top)


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def emitted(actions: list, signal: str) -> list[tuple]:
    return [a.args for a in actions if isinstance(a, Emit) and a.signal == signal]


def sent(actions: list, kind: str) -> list[SendJson]:
    return [a for a in of(actions, SendJson) if a.message.type.value == kind]


def session_for(user_id: str, **parts) -> RoomSession:
    parts.setdefault("reconnect", ReconnectPolicy(3, 0.5, 4.0, rng=random.Random(7)))
    return RoomSession(user_id, **parts)


def host_in_room(members: list[str], **parts) -> RoomSession:
    """The creator of room ABCDEF on our relay, with `members` joined after it."""
    host = session_for("host", **parts)
    host.begin("relay", URL, "Host", None)
    host.connection_opened()
    host.message(msg("room_created", {"room_code": "ABCDEF", "relay": RELAY, "resume_token": "t"}))
    users = [user("host")]
    for member in members:
        users.append(user(member))
        host.message(
            msg("user_joined", {"user_id": member, "users": list(users), "host_id": "host"})
        )
    return host


def member_in_room(user_id: str = "mia", others: tuple[str, ...] = ()) -> RoomSession:
    member = session_for(user_id)
    member.begin("relay", URL, user_id, "ABCDEF")
    member.connection_opened()
    users = [user("host"), *(user(o) for o in others), user(user_id)]
    member.message(room_joined(users, resume_token="tok"))
    return member


def room_joined(users: list[dict], **extra) -> Message:
    """The relay's room_joined for room ABCDEF, whose attested host is "host"."""
    payload = {"room_code": "ABCDEF", "users": users, "host_id": "host", "relay": RELAY}
    return msg("room_joined", {**payload, **extra})


def weights(value: float) -> dict:
    return {"w": np.full((3, 2), value, np.float32), "b": np.array([value, -value], np.float32)}


def push(host: RoomSession, sender: str, value: float, samples: int, transfer_id: int) -> list:
    data = serialize_weights(weights(value), epoch=1, loss=0.5, num_samples=samples)
    return host.transfer_received(sender, transfer_id, FrameKind.WEIGHTS, data)


# --- creating and joining -------------------------------------------------------------------


def test_create_opens_a_connection_then_asks_for_a_room_and_becomes_its_host():
    host = session_for("host")
    actions = host.begin("relay", URL, "Host", None)
    assert of(actions, OpenConnection) and not of(actions, SendJson)
    (create,) = host.connection_opened()
    assert create.message.type is MessageType.CREATE_ROOM and create.now
    assert create.message.payload["user_id"] == "host"
    actions = host.message(msg("room_created", {"room_code": "ABCDEF", "relay": RELAY}))
    assert emitted(actions, "room_created") == [("ABCDEF",)]
    assert emitted(actions, "connected") == [()]
    assert host.is_host and host.in_room and host.capabilities.chunk_size == 1 << 20


def test_join_sends_the_code_and_takes_the_attested_host():
    member = session_for("mia")
    member.begin("relay", URL, "Mia", "abcdef")
    (join,) = member.connection_opened()
    assert join.message.type is MessageType.JOIN_ROOM
    assert join.message.payload["room_code"] == "ABCDEF"
    users = [user("zed"), user("host"), user("mia")]  # list order never names the host
    actions = member.message(
        msg(
            "room_joined",
            {"room_code": "ABCDEF", "users": users, "host_id": "host", "relay": RELAY},
        )
    )
    assert emitted(actions, "room_joined") == [("ABCDEF",)]
    assert member.host_id == "host" and not member.is_host
    assert member.recipients() == ["host"]


def test_a_refused_join_is_reported_and_the_connection_closed():
    member = session_for("mia")
    member.begin("relay", URL, "Mia", "ABCDEF")
    member.connection_opened()
    actions = member.message(msg("error", {"error": "no such room", "code": "ROOM_NOT_FOUND"}))
    (report,) = of(actions, Report)
    assert "Room ABCDEF not found" in report.text
    assert of(actions, CloseConnection) and member.closing
    assert member.closed(1000, "") == []  # closing on purpose: nothing more to say


def test_a_message_directed_to_others_is_ignored():
    member = member_in_room()
    info = msg("session_info", {"architecture": "unet"}, to=["someone-else"])
    assert member.message(info) == []
    assert member.architecture == ""


def test_host_tells_a_newcomer_the_architecture_directly():
    host = host_in_room([])
    host.set_architecture("unet-4")
    actions = host.message(
        msg(
            "user_joined",
            {"user_id": "ann", "users": [user("host"), user("ann")], "host_id": "host"},
        )
    )
    (info,) = sent(actions, "session_info")
    assert info.to == ["ann"] and info.message.payload["architecture"] == "unet-4"
    assert emitted(actions, "user_joined_room") == [("ann",)]


def test_when_the_attested_host_leaves_nobody_takes_its_place():
    member = member_in_room(others=("zed",))
    actions = member.message(
        msg("user_left", {"user_id": "host", "users": [user("zed"), user("mia")], "host_id": None})
    )
    assert member.host_id is None
    assert emitted(actions, "user_left_room") == [("host",)]
    # a member with no host may not push to "everyone" instead
    assert "host is not in the room" in member.host_missing("send weights")[0].text
    # and a global model from another member is refused
    data = serialize_weights(weights(1.0))
    refused = member.transfer_received("zed", 5, FrameKind.GLOBAL_MODEL, data)
    assert "Refused a global model" in of(refused, Report)[0].text
    assert member.global_weights is None


# --- the host's rounds ------------------------------------------------------------------------


def test_a_round_closes_when_every_member_pushed_with_the_samples_weighted_mean():
    host = host_in_room(["ann", "bob"])
    first = push(host, "ann", 1.0, 10, transfer_id=1)
    assert emitted(first, "weights_received")[0][0] == "ann"
    (timer,) = of(first, StartTimer)
    assert timer.name == ROUND_TIMER and timer.delay == host.rounds.timeout
    assert not emitted(first, "round_complete")
    second = push(host, "bob", 4.0, 30, transfer_id=1)  # transfer ids are per sender
    assert emitted(second, "round_complete") == [(1, ["ann", "bob"])]
    (model,) = emitted(second, "global_model_received")
    expected = (1.0 * 10 + 4.0 * 30) / 40  # FedAvg by num_samples
    np.testing.assert_allclose(model[0]["w"], np.full((3, 2), expected), rtol=1e-3)
    sends = of(second, SendGlobalData)
    assert sends and sorted(r for s in sends for r in (s.to or ["ann", "bob"])) == ["ann", "bob"]
    assert host.aggregation_round == 1 and host.global_contributors == 2


def signals(actions: list) -> list[str]:
    return [a.signal for a in actions if isinstance(a, Emit)]


def test_the_push_that_closes_a_round_is_told_before_the_round():
    # A listener that reads who pushed when the global model arrives (the app's table, the
    # mixed-room test) must already have heard of every contributor.
    host = host_in_room(["ann", "bob"])
    push(host, "ann", 1.0, 1, transfer_id=1)
    order = signals(push(host, "bob", 2.0, 1, transfer_id=1))
    assert "weights_received" in order and "round_complete" in order
    assert order.index("weights_received") < order.index("round_complete")
    assert order.index("weights_received") < order.index("global_model_received")


def test_the_lan_hub_acknowledges_the_closing_push_before_reporting_the_round():
    hub, server = lan_hub()
    hub.connection_opened()
    hub.message(msg("room_created", {"room_code": "LANLAN", "relay": RELAY}))
    users = [user("hub"), user("ann", "Ann")]
    hub.message(msg("user_joined", {"user_id": "ann", "users": users, "host_id": "hub"}))
    delivered = [a.callback for a in of(push(hub, "ann", 1.5, 3, transfer_id=1), Deliver)]
    pushed = delivered.index(server.weights_received.emit)
    assert pushed < delivered.index(server.aggregation_complete.emit)


def test_a_transfer_sent_again_after_a_drop_is_taken_once():
    host = host_in_room(["ann", "bob"])
    push(host, "ann", 1.0, 10, transfer_id=9)
    assert push(host, "ann", 1.0, 10, transfer_id=9) == []
    assert host.rounds.started


def test_a_round_times_out_with_enough_pushes_and_ignores_a_stale_timer():
    host = host_in_room(["ann", "bob"])
    (timer,) = of(push(host, "ann", 2.0, 5, transfer_id=1), StartTimer)
    assert host.timer_fired(ROUND_TIMER, timer.token + 1) == []  # not this round's
    actions = host.timer_fired(ROUND_TIMER, timer.token)
    assert emitted(actions, "round_complete") == [(1, ["ann"])]
    assert host.timer_fired(ROUND_TIMER, timer.token) == []  # fired once


def test_a_timeout_with_too_few_pushes_waits_another_period():
    host = host_in_room(["ann", "bob", "cy"], rounds=HostRounds(timeout=5, min_contributors=2))
    (timer,) = of(push(host, "ann", 2.0, 5, transfer_id=1), StartTimer)
    actions = host.timer_fired(ROUND_TIMER, timer.token)
    assert not emitted(actions, "round_complete")
    (again,) = of(actions, StartTimer)
    assert again.delay == 5 and again.token != timer.token
    push(host, "bob", 2.0, 5, transfer_id=1)
    assert emitted(host.timer_fired(ROUND_TIMER, again.token), "round_complete") == [
        (1, ["ann", "bob"])
    ]


def test_a_member_leaving_closes_the_round_it_held_up():
    host = host_in_room(["ann", "bob"])
    push(host, "ann", 1.0, 1, transfer_id=1)
    actions = host.message(
        msg(
            "user_left", {"user_id": "bob", "users": [user("host"), user("ann")], "host_id": "host"}
        )
    )
    assert emitted(actions, "round_complete") == [(1, ["ann"])]


def test_an_excluded_member_is_neither_awaited_nor_taken():
    host = host_in_room(["ann", "bob"])
    host.exclude_member("bob", True)
    assert push(host, "bob", 9.0, 1, transfer_id=1) == []
    assert emitted(push(host, "ann", 1.0, 1, transfer_id=1), "round_complete") == [(1, ["ann"])]


def test_a_training_host_waits_for_its_own_push():
    host = host_in_room(["ann"])
    host.set_host_trains(True)
    assert not emitted(push(host, "ann", 1.0, 1, transfer_id=1), "round_complete")
    actions = host.own_push(weights(3.0), num_samples=1, epoch=1)
    assert emitted(actions, "round_complete") == [(1, ["ann", "host"])]


def test_the_host_answers_request_model_with_its_global_model_to_the_asker_only():
    host = host_in_room(["ann"])
    assert host.message(msg("request_model", {"user_id": "ann"}, sender_id="ann")) == [
        Emit("model_requested", ("ann",))
    ]  # nothing to send yet
    host.set_global_weights(weights(0.5))
    actions = host.message(msg("request_model", {"user_id": "ann"}, sender_id="ann"))
    assert emitted(actions, "model_requested") == [("ann",)]
    (answer,) = of(actions, SendGlobalModel)
    assert answer.to == ["ann"]
    np.testing.assert_array_equal(answer.weights["w"], weights(0.5)["w"])


def test_a_member_requests_the_global_model_from_the_host():
    member = member_in_room()
    (request,) = member.request_global_model()
    assert request.message.type is MessageType.REQUEST_MODEL and request.to == ["host"]


def test_a_member_takes_the_hosts_global_model():
    member = member_in_room()
    data = serialize_weights(
        weights(2.0), metadata={"aggregation_round": 4, "contributor_count": 3}
    )
    actions = member.transfer_received("host", 1, FrameKind.GLOBAL_MODEL, data)
    (model,) = emitted(actions, "global_model_received")
    np.testing.assert_array_equal(model[0]["b"], np.array([2.0, -2.0], np.float32))
    assert member.aggregation_round == 4 and member.global_contributors == 3


# --- losing and regaining the connection ---------------------------------------------------------


def test_a_drop_schedules_reconnects_with_growing_jittered_waits_then_gives_up():
    member = member_in_room()
    actions = member.closed(1006, "")
    assert emitted(actions, "sync_status") and member.reconnecting and not member.in_room
    waits = []
    for attempt in range(3):
        (timer,) = of(actions, StartTimer)
        assert timer.name == RECONNECT_TIMER
        assert 0 <= timer.delay <= min(4.0, 0.5 * 2**attempt)
        waits.append(timer.delay)
        assert member.timer_fired(RECONNECT_TIMER, timer.token) == [OpenConnection()]
        actions = member.connection_failed("refused")
    assert "after 3 tries" in of(actions, Report)[0].text
    assert emitted(actions, "disconnected") == [()]
    assert member.closing and not member.reconnecting


def test_a_relay_that_accepts_and_closes_at_once_spends_the_tries_too():
    # Each reconnect opens, asks to resume, and is closed before the room answers: a close
    # while still reconnecting is a failed try, not a fresh drop (or it would retry forever).
    member = member_in_room()
    actions = member.closed(1006, "")
    for _ in range(3):
        (timer,) = of(actions, StartTimer)
        assert member.timer_fired(RECONNECT_TIMER, timer.token) == [OpenConnection()]
        (resume,) = member.connection_opened()
        assert resume.message.type is MessageType.RESUME
        actions = member.closed(1011, "going away at once")
    assert "after 3 tries" in of(actions, Report)[0].text
    assert emitted(actions, "disconnected") == [()]
    assert not of(actions, StartTimer) and not member.reconnecting


def test_reconnecting_resumes_with_the_token_and_says_nothing_new_to_the_app():
    member = member_in_room()
    (timer,) = of(member.closed(1006, ""), StartTimer)
    member.timer_fired(RECONNECT_TIMER, timer.token)
    (resume,) = member.connection_opened()
    assert resume.message.type is MessageType.RESUME and resume.now
    assert resume.message.payload["resume_token"] == "tok"
    users = [user("host"), user("mia")]
    actions = member.message(room_joined(users, resumed=True))
    assert not emitted(actions, "room_joined") and not emitted(actions, "connected")
    assert member.in_room and not member.reconnecting


def test_after_a_resume_members_not_back_yet_hold_the_round_up():
    host = host_in_room(["ann", "bob"])
    (timer,) = of(host.closed(1006, ""), StartTimer)
    host.timer_fired(RECONNECT_TIMER, timer.token)
    host.connection_opened()
    host.message(
        msg(
            "room_joined",
            {
                "room_code": "ABCDEF",
                "users": [user("host"), user("ann")],
                "host_id": "host",
                "relay": RELAY,
                "resumed": True,
            },
        )
    )
    assert host.away_members == {"bob"}
    assert not emitted(push(host, "ann", 1.0, 1, transfer_id=1), "round_complete")


def test_a_timer_after_disconnect_does_nothing():
    member = member_in_room()
    (timer,) = of(member.closed(1006, ""), StartTimer)
    member.leave()
    assert member.timer_fired(RECONNECT_TIMER, timer.token) == []


def test_a_member_waits_for_the_host_to_reopen_a_room_the_relay_forgot():
    member = member_in_room()
    (timer,) = of(member.closed(1006, ""), StartTimer)
    member.timer_fired(RECONNECT_TIMER, timer.token)
    member.connection_opened()
    actions = member.message(msg("error", {"error": "x", "code": "INVALID_RESUME_TOKEN"}))
    assert not of(actions, Report)  # "not now", not a failure
    (rejoin_timer,) = of(actions, StartTimer)
    assert rejoin_timer.name == REJOIN_TIMER and member.resume_token is None
    (join,) = member.timer_fired(REJOIN_TIMER, rejoin_timer.token)
    assert join.message.type is MessageType.JOIN_ROOM  # no token left: a plain join
    actions = member.message(
        msg("error", {"error": "x", "code": "RATE_LIMITED", "retry_after": 42})
    )
    (later,) = of(actions, StartTimer)
    assert later.delay >= 42
    member.message(msg("error", {"error": "x", "code": "ROOM_NOT_FOUND"}))
    actions = member.message(msg("error", {"error": "x", "code": "ROOM_NOT_FOUND"}))
    assert "did not come back after 3 tries" in of(actions, Report)[0].text
    assert of(actions, CloseConnection) and emitted(actions, "disconnected")


def test_a_host_the_relay_forgot_opens_a_new_room_at_once():
    host = host_in_room(["ann"])
    (timer,) = of(host.closed(1006, ""), StartTimer)
    host.timer_fired(RECONNECT_TIMER, timer.token)
    host.connection_opened()
    # the relay lost the secret that signed the resume token: a new room, not a resume
    actions = host.message(msg("error", {"error": "x", "code": "INVALID_RESUME_TOKEN"}))
    (create,) = sent(actions, "create_room")
    assert create.now
    actions = host.message(msg("room_created", {"room_code": "QWERTY", "relay": RELAY}))
    assert emitted(actions, "room_created") == [("QWERTY",)]


def test_a_close_before_the_session_began_is_reported_never_retried():
    member = session_for("mia")
    member.begin("relay", URL, "Mia", "ABCDEF")
    member.connection_opened()
    actions = member.closed(1006, "")
    assert "closed before the session began" in of(actions, Report)[0].text
    assert not of(actions, StartTimer)


# --- LAN roles ---------------------------------------------------------------------------


def test_a_lan_member_says_hello_and_follows_the_servers_user_list():
    member = session_for("mia")
    member.begin("direct", "ws://10.0.0.2:8765/ws", "Mia", None)
    (hello,) = member.connection_opened()
    assert hello.message.type is MessageType.HELLO
    actions = member.message(
        msg(
            "welcome",
            {
                "session_id": "S",
                "user_list": [user("mia")],
                "host_id": "hub",
                "architecture": "unet",
            },
        )
    )
    assert emitted(actions, "connected") == [()]
    assert emitted(actions, "architecture_received") == [("unet",)]
    assert member.host_id == "hub" and member.recipients() == ["hub"]
    actions = member.message(msg("user_list", {"users": [user("mia"), user("ann", "Ann")]}))
    assert emitted(actions, "user_joined_room") == [("Ann",)]
    actions = member.message(msg("user_list", {"users": [user("mia")]}))
    assert emitted(actions, "user_left_room") == [("Ann",)]


def test_a_lan_member_whose_host_ended_the_session_does_not_reconnect():
    member = session_for("mia")
    member.begin("direct", "ws://10.0.0.2:8765/ws", "Mia", None)
    member.connection_opened()
    member.message(
        msg("welcome", {"session_id": "S", "user_list": [user("mia")], "host_id": "hub"})
    )
    actions = member.closed(1001, LAN_HOST_LEFT)
    assert "ended the session" in of(actions, Report)[0].text
    assert emitted(actions, "disconnected") == [()] and not of(actions, StartTimer)


def lan_hub() -> tuple[RoomSession, AggregationServer]:
    server = AggregationServer(min_contributors=1, aggregation_timeout=30)
    server.architecture = "unet"
    hub = session_for("hub", role=LanHub(server, "secret-token"))
    hub.begin("direct", "ws://127.0.0.1:1/ws", "LAN host", None)
    return hub, server


def test_the_lan_hub_claims_the_session_with_its_token():
    hub, _ = lan_hub()
    (claim,) = hub.connection_opened()
    assert claim.message.type is MessageType.CREATE_ROOM
    assert claim.message.payload["host_token"] == "secret-token"
    assert claim.message.payload["features"] == ["frame_header"]


def test_the_lan_hub_welcomes_members_acks_pushes_and_reports_rounds():
    hub, server = lan_hub()
    hub.connection_opened()
    hub.message(msg("room_created", {"room_code": "LANLAN", "relay": RELAY}))
    assert hub.is_host
    actions = hub.message(
        msg(
            "user_joined",
            {
                "user_id": "ann",
                "display_name": "Ann",
                "users": [user("hub"), user("ann", "Ann")],
                "host_id": "hub",
            },
        )
    )
    (welcome,) = sent(actions, "welcome")
    assert welcome.to == ["ann"] and welcome.message.payload["host_id"] == "hub"
    assert welcome.message.payload["user_list"] == [user("ann", "Ann")]
    assert welcome.message.payload["architecture"] == "unet"
    (listing,) = sent(actions, "user_list")
    assert listing.to is None
    assert Deliver(server.user_connected.emit, ("Ann",)) in actions
    actions = push(hub, "ann", 1.5, 3, transfer_id=1)
    (ack,) = sent(actions, "weights_ack")
    assert ack.to == ["ann"] and ack.message.payload["received"] is True
    assert emitted(actions, "round_complete") == [(1, ["ann"])]
    delivered = [a.callback for a in of(actions, Deliver)]
    assert server.weights_received.emit in delivered
    assert server.aggregation_complete.emit in delivered


# --- original clients (legacy pairing) -----------------------------------------------------------


def png(value: int) -> bytes:
    from segmentation_suite.network.crop_png import encode_png

    return encode_png(np.full((4, 4), value, np.uint8), "crop")


def test_an_original_crop_is_paired_with_its_announcement():
    host = host_in_room(["orig"], mixed=MixedRoomPart())
    announce = msg(
        "training_data",
        {"user_id": "orig", "display_name": "O", "crop_size": 4, "slice_index": 2},
        sender_id="orig",
    )
    assert host.message(announce) == []
    assert host.unframed_binary(png(1)) == []  # the image; the mask follows
    actions = host.unframed_binary(png(2))
    ((image, mask, info),) = emitted(actions, "training_data_received")
    assert image == png(1) and mask == png(2)
    assert info["sender_id"] == "orig" and info["slice_index"] == 2


def test_an_unframed_binary_without_announcement_or_in_a_private_room_is_dropped():
    host = host_in_room(["orig"])
    assert host.unframed_binary(b"\x00" * 10) == []
    assert not host.receiving


def test_original_weights_are_refused_without_the_opt_in_and_said_once():
    host = host_in_room(["orig"])
    for _ in range(2):
        host.message(
            msg(
                "weights_push",
                {"user_id": "orig", "epoch": 1, "loss": 0.1, "num_samples": 4},
                sender_id="orig",
            )
        )
    first = host.unframed_binary(b"\x1f\x8b not read")
    second = host.unframed_binary(b"\x1f\x8b not read")
    assert "original" in of(first, Report)[0].text and of(second, Report) == []
    assert not host.rounds.started


@pytest.mark.parametrize("mode", ["relay", "direct"])
def test_leave_says_goodbye_and_leaves_the_room_on_a_relay(mode):
    member = session_for("mia")
    member.begin(mode, URL, "Mia", "ABCDEF")
    member.connection_opened()
    if mode == "relay":
        member.message(
            msg(
                "room_joined",
                {"room_code": "ABCDEF", "users": [user("mia")], "host_id": "host", "relay": RELAY},
            )
        )
    else:
        member.message(msg("welcome", {"session_id": "S", "user_list": [user("mia")]}))
    kinds = [a.message.type.value for a in member.leave()]
    assert kinds == (["goodbye", "leave_room"] if mode == "relay" else ["goodbye"])
    assert member.closed(1000, "disconnect") == [Emit("disconnected")]


# --- private rooms: two sessions wired by an in-memory relay ----------------------------------


def is_key_exchange(action: SendJson) -> bool:
    return action.message.type.value.startswith(("pake_", "group_key"))


def deliver(sessions: dict[str, RoomSession], sender: str, actions: list) -> dict[str, list]:
    """Hands `sender`'s directed key-exchange messages to their recipients as our relay would
    (with `sender_id`), and theirs back, until nobody has anything more to say; returns the
    actions each session answered with. `sessions` are who is in the room now: a message for
    anyone else is dropped, as our relay drops what is directed at nobody present."""
    answers: dict[str, list] = {name: [] for name in sessions}
    queue = [(sender, a) for a in of(actions, SendJson) if is_key_exchange(a)]
    while queue:
        origin, action = queue.pop(0)
        for recipient in action.to or []:
            if recipient not in sessions:
                continue  # nobody holds that id in the room: our relay drops it
            message = Message(action.message.type, dict(action.message.payload), sender_id=origin)
            answer = sessions[recipient].message(message)
            answers[recipient] += answer
            queue += [(recipient, a) for a in of(answer, SendJson) if is_key_exchange(a)]
    return answers


def test_a_private_room_member_proves_the_code_and_seals_its_push_to_the_host():
    from segmentation_suite.network.private_code import parse_room_code

    host = session_for("host")
    host.private.will_create(True, 4)
    host.begin("relay", URL, "Host", None)
    host.connection_opened()
    created = host.message(msg("room_created", {"room_code": "ABCDEF", "relay": RELAY}))
    ((full_code,),) = emitted(created, "room_created")
    assert full_code.startswith("ABCDEF-") and len(full_code) == 11
    member = session_for("mia")
    member.private.will_join(parse_room_code(full_code.lower()))
    member.begin("relay", URL, "Mia", "ABCDEF")
    (join,) = member.connection_opened()
    assert join.message.payload["room_code"] == "ABCDEF"  # the secret part never leaves
    users = [user("host"), user("mia")]
    host.message(msg("user_joined", {"user_id": "mia", "users": users, "host_id": "host"}))
    joined = member.message(
        msg(
            "room_joined",
            {"room_code": "ABCDEF", "users": users, "host_id": "host", "relay": RELAY},
        )
    )
    assert not emitted(joined, "room_joined")  # not before the key exchange
    (init,) = sent(joined, "pake_init")
    assert init.to == ["host"]
    answers = deliver({"host": host, "mia": member}, "mia", joined)
    assert emitted(answers["mia"], "room_joined") == [(full_code,)]
    ((peer, digits),) = emitted(answers["mia"], "verification_code")
    assert peer == "host" and emitted(answers["host"], "verification_code") == [("mia", digits)]
    assert member.private.ready and host.private.verification_codes == {"mia": digits}

    plain = serialize_weights(weights(1.25), num_samples=2)
    sealed = member.private.seal(plain, 77, FrameKind.WEIGHTS)
    assert bytes(sealed) != bytes(plain)
    actions = host.transfer_received("mia", 77, FrameKind.WEIGHTS, bytearray(sealed))
    assert emitted(actions, "round_complete") == [(1, ["mia"])]
    tampered = bytearray(member.private.seal(plain, 78, FrameKind.WEIGHTS))
    tampered[-1] ^= 1
    refused = host.transfer_received("mia", 78, FrameKind.WEIGHTS, tampered)
    assert of(refused, Report) and not emitted(refused, "weights_received")


def test_a_private_room_on_a_relay_without_an_attested_host_is_left_in_words():
    from segmentation_suite.network.private_code import parse_room_code
    from segmentation_suite.network.session_actions import Leave

    member = session_for("mia")
    member.private.will_join(parse_room_code("ABCDEF-WXYZ"))
    member.begin("relay", URL, "Mia", "ABCDEF")
    member.connection_opened()
    actions = member.message(
        msg("room_joined", {"room_code": "ABCDEF", "users": [user("x"), user("mia")]})
    )  # a v1 relay: no capabilities, nobody attested
    assert "Private rooms need a relay" in of(actions, Report)[0].text
    assert of(actions, Leave) and not emitted(actions, "room_joined")


# --- private rooms: resume and relay restart ------------------------------------------------


def private_room(members: tuple[str, ...]) -> tuple[RoomSession, dict[str, RoomSession]]:
    """A private room ABCDEF-xxxx: the host and `members`, each of whom proved the code."""
    from segmentation_suite.network.private_code import parse_room_code

    host = session_for("host")
    host.private.will_create(True, 4)
    host.begin("relay", URL, "Host", None)
    host.connection_opened()
    created = host.message(
        msg("room_created", {"room_code": "ABCDEF", "relay": RELAY, "resume_token": "th"})
    )
    ((full_code,),) = emitted(created, "room_created")
    sessions = {"host": host}
    users = [user("host")]
    for name in members:
        member = session_for(name)
        member.private.will_join(parse_room_code(full_code))
        member.begin("relay", URL, name, "ABCDEF")
        member.connection_opened()
        users.append(user(name))
        for other in sessions.values():
            other.message(msg("user_joined", {"user_id": name, "users": users, "host_id": "host"}))
        joined = member.message(
            msg(
                "room_joined",
                {
                    "room_code": "ABCDEF",
                    "users": list(users),
                    "host_id": "host",
                    "relay": RELAY,
                    "resume_token": f"t{name}",
                },
            )
        )
        sessions[name] = member
        deliver(sessions, name, joined)
        assert member.private.ready
    return host, sessions


def drop_and_reconnect(session: RoomSession) -> None:
    """The connection dropped; the backoff ran out and a new connection is open (the driver
    sent the resume the session asked for)."""
    (timer,) = of(session.closed(1006, ""), StartTimer)
    session.timer_fired(RECONNECT_TIMER, timer.token)
    (resume,) = session.connection_opened()
    assert resume.message.type is MessageType.RESUME


def resumed(session: RoomSession, users: list[str], host_id: str | None) -> list:
    """The relay took `session` back: `users` are in the room, `host_id` attested (None while
    the creator is not back after a restart)."""
    return session.message(
        msg(
            "room_joined",
            {
                "room_code": "ABCDEF",
                "users": [user(u) for u in users],
                "host_id": host_id,
                "relay": RELAY,
                "resumed": True,
            },
        )
    )


def host_is_back(member: RoomSession, users: list[str]) -> list:
    return member.message(
        msg(
            "user_joined",
            {
                "user_id": "host",
                "users": [user(u) for u in users],
                "host_id": "host",
                "resumed": True,
            },
        )
    )


def keys_of(session: RoomSession) -> tuple[int, bytes]:
    party = session.private.host or session.private.member
    group = party._transfers.group
    return group.epoch, group.key


def test_a_member_back_before_its_host_after_a_relay_restart_gets_the_rotated_key():
    host, sessions = private_room(("mia", "bob"))
    mia = sessions["mia"]
    assert keys_of(mia) == keys_of(host) and keys_of(host)[0] == 0
    # mia's link drops; while she is away bob leaves and the host rotates the key. The new
    # key is directed at mia, who is not connected: the relay drops it.
    drop_and_reconnect(mia)
    left = host.message(
        msg(
            "user_left", {"user_id": "bob", "users": [user("host"), user("mia")], "host_id": "host"}
        )
    )
    (rotation,) = sent(left, "group_key")
    assert rotation.to == ["mia"] and keys_of(host)[0] == 1
    assert keys_of(mia)[0] == 0
    # The relay restarts. mia resumes first: the room is back, its host is not (host_id null).
    drop_and_reconnect(host)
    back = resumed(mia, ["mia"], None)
    assert not sent(back, "pake_init")  # nobody to run it with: it would be dropped
    assert any("waiting for the host" in text for (text,) in emitted(back, "sync_status"))
    assert not of(back, Report) and mia.private.ready and keys_of(mia)[0] == 0
    # The host resumes: mia runs the exchange again, directed at it, and gets epoch 1.
    resumed(host, ["mia", "host"], "host")
    again = host_is_back(mia, ["mia", "host"])
    (init,) = sent(again, "pake_init")
    assert init.to == ["host"]
    answers = deliver({"host": host, "mia": mia}, "mia", again)
    assert keys_of(mia) == keys_of(host) and keys_of(mia)[0] == 1
    assert not mia.private.member.rekeying
    assert not of(answers["mia"], Report) and not of(answers["host"], Report)
    assert not emitted(answers["mia"], "room_joined")  # back, not joined anew
    assert host.private.host.failed_attempts == 0  # an honest return is no failed attempt
    # A round under the new key: mia's sealed push opens at the host, values checked.
    data = serialize_weights(weights(2.5), num_samples=3)
    sealed = mia.private.seal(data, 5, FrameKind.WEIGHTS)
    host.set_host_trains(False)
    actions = host.transfer_received("mia", 5, FrameKind.WEIGHTS, bytearray(sealed))
    assert emitted(actions, "round_complete") == [(1, ["mia"])]
    (global_model,) = emitted(actions, "global_model_received")
    np.testing.assert_array_equal(global_model[0]["w"], np.full((3, 2), 2.5, np.float32))


def test_a_member_back_while_its_host_is_there_re_keys_at_once_and_not_again():
    host, sessions = private_room(("mia",))
    mia = sessions["mia"]
    drop_and_reconnect(mia)
    back = resumed(mia, ["host", "mia"], "host")
    (init,) = sent(back, "pake_init")
    assert init.to == ["host"]
    deliver({"host": host, "mia": mia}, "mia", back)
    assert not mia.private.member.rekeying and keys_of(mia) == keys_of(host)
    # The host's own link drops and it resumes: mia's key is current, nothing runs again.
    assert not sent(host_is_back(mia, ["host", "mia"]), "pake_init")


def test_a_host_gone_mid_exchange_is_asked_again_and_a_rotation_crossing_it_unwraps():
    host, sessions = private_room(("mia", "bob", "cy"))
    mia, cy = sessions["mia"], sessions["cy"]
    drop_and_reconnect(mia)
    back = resumed(mia, ["host", "bob", "cy", "mia"], "host")
    # The host answers mia's exchange, but her confirmation is lost: the host's link dropped.
    answers = deliver({"host": host}, "mia", back)
    (reply,) = sent(answers["host"], "pake_reply")
    confirm = mia.message(
        Message(reply.message.type, dict(reply.message.payload), sender_id="host")
    )
    assert sent(confirm, "pake_confirm") and mia.private.member.rekeying
    # Back after its own drop, the host still wraps for mia under the key it holds, her
    # first exchange's: bob leaving now rotates the key under that one.
    room = [user("host"), user("cy"), user("mia")]
    left = host.message(msg("user_left", {"user_id": "bob", "users": room, "host_id": "host"}))
    again = host_is_back(mia, ["host", "cy", "mia"])
    (init,) = sent(again, "pake_init")  # asked again: the host never confirmed the exchange
    present = {"host": host, "mia": mia, "cy": cy}
    deliver(present, "host", left)
    assert keys_of(mia) == keys_of(host) == keys_of(cy) and keys_of(mia)[0] == 1
    assert mia.private.member.rekeying  # the rotation came under the old key: still waiting
    deliver(present, "mia", again)
    assert keys_of(mia) == keys_of(host) and not mia.private.member.rekeying
    # The abandoned exchange counts as one failed attempt: each answered pake_init is a guess
    # for whoever sent it (private_room.py), the relay's word for who that was included.
    assert host.private.host.failed_attempts == 1
    # The next rotation comes under the newest exchange's key and unwraps.
    room = [user("host"), user("mia")]
    left = host.message(msg("user_left", {"user_id": "cy", "users": room, "host_id": "host"}))
    answers = deliver(present, "host", left)
    assert keys_of(mia) == keys_of(host) and keys_of(mia)[0] == 2
    assert not of(answers["mia"], Report)


def test_a_member_gone_while_the_host_was_away_is_off_the_key_after_the_round():
    host, sessions = private_room(("mia", "bob"))
    mia, bob = sessions["mia"], sessions["bob"]
    # The host's link drops; bob leaves meanwhile, and the relay tells only who is there.
    drop_and_reconnect(host)
    resumed(host, ["host", "mia"], "host")
    assert host.away_members == {"bob"} and keys_of(host)[0] == 0
    assert not sent(host_is_back(mia, ["host", "mia"]), "pake_init")  # mia's key is current
    # A round closes without bob: before its model goes out, bob is off the key.
    host.set_host_trains(False)
    sealed = mia.private.seal(serialize_weights(weights(1.5), num_samples=2), 9, FrameKind.WEIGHTS)
    host.transfer_received("mia", 9, FrameKind.WEIGHTS, bytearray(sealed))
    closed = host.trigger_aggregation()[1]
    assert emitted(closed, "round_complete") == [(1, ["mia"])]
    (rotation,) = sent(closed, "group_key")
    assert rotation.to == ["mia"] and keys_of(host)[0] == 1
    kinds = [type(a) for a in closed if isinstance(a, (SendJson, SendGlobalData))]
    assert kinds.index(SendJson) < kinds.index(SendGlobalData)  # the key before the model
    assert host.private.host.members == ["mia"] and not host.away_members
    deliver({"host": host, "mia": mia}, "host", closed)
    assert keys_of(mia) == keys_of(host) and keys_of(bob) != keys_of(host)

    # bob was only late: back by resume, he is answered as a holder even in a closed room.
    host.private.host.failed_attempts = 3  # three wrong codes closed the room to newcomers
    assert host.private.closed
    drop_and_reconnect(bob)
    users = ["host", "mia", "bob"]
    host.message(
        msg(
            "user_joined",
            {
                "user_id": "bob",
                "users": [user(u) for u in users],
                "host_id": "host",
                "resumed": True,
            },
        )
    )
    back = resumed(bob, users, "host")
    answers = deliver({"host": host, "mia": mia, "bob": bob}, "bob", back)
    assert not sent(answers["host"], "pake_refused")
    assert keys_of(bob) == keys_of(host) and not bob.private.member.rekeying
    # ...while a newcomer in a closed room is refused, and told so in words.
    newcomer_refused = host.private.host.handle(
        {"type": "pake_init", "sender_id": "eve", "payload": {"cpace": "AA=="}}
    )
    assert newcomer_refused[0].message["type"] == "pake_refused"


def test_a_member_back_after_its_grace_into_a_closed_room_is_told_the_key_was_not_renewed():
    host, sessions = private_room(("mia", "bob"))
    mia = sessions["mia"]
    drop_and_reconnect(mia)
    # mia stayed away past the relay's grace: the host saw her leave and rotated the key.
    room = [user("host"), user("bob")]
    host.message(msg("user_left", {"user_id": "mia", "users": room, "host_id": "host"}))
    assert keys_of(host)[0] == 1
    for attempt in range(3):  # three wrong codes meanwhile: closed to newcomers
        host.private.host.handle(
            {"type": "pake_init", "sender_id": f"eve{attempt}", "payload": {"cpace": "AA=="}}
        )
    assert host.private.closed
    # Her token still opens the room; to the host she is a newcomer now.
    back = resumed(mia, ["host", "bob", "mia"], "host")
    answers = deliver({"host": host, "mia": mia, "bob": sessions["bob"]}, "mia", back)
    assert sent(answers["host"], "pake_refused")
    (said,) = of(answers["mia"], Report)
    assert "did not renew" in said.text and "closed to new members" in said.text
    assert keys_of(mia)[0] == 0 and mia.private.member.rekeying  # the old key, no pretence


def test_after_a_relay_restart_a_member_gets_the_global_it_missed_once_it_re_keyed():
    host, sessions = private_room(("mia", "ned"))
    mia, ned = sessions["mia"], sessions["ned"]
    host.set_host_trains(False)

    def push_from(member: RoomSession, transfer_id: int) -> list:
        plain = serialize_weights(weights(float(transfer_id)), num_samples=1)
        sealed = member.private.seal(plain, transfer_id, FrameKind.WEIGHTS)
        return host.transfer_received(member.user_id, transfer_id, FrameKind.WEIGHTS, sealed)

    assert emitted(push_from(ned, 1), "weights_received")
    for session in (host, mia, ned):  # the relay restarts; the host is back first
        drop_and_reconnect(session)
    resumed(host, ["host"], "host")
    users = [user("host"), user("mia")]
    host.message(
        msg("user_joined", {"user_id": "mia", "users": users, "host_id": "host", "resumed": True})
    )
    deliver({"host": host, "mia": mia}, "mia", resumed(mia, ["host", "mia"], "host"))
    # mia's push closes the round while ned is still away: ned is off the key (epoch 1).
    closed = push_from(mia, 2)
    assert emitted(closed, "round_complete") == [(1, ["ned", "mia"])]
    assert keys_of(host)[0] == 1 and host.private.host.members == ["mia"]
    # ned is back: the global it missed is not sent under a key it does not hold yet...
    users.append(user("ned"))
    joined = host.message(
        msg("user_joined", {"user_id": "ned", "users": users, "host_id": "host", "resumed": True})
    )
    assert not of(joined, SendGlobalModel)
    # ...but right after its re-run exchange, behind the key that opens it.
    answers = deliver(
        {"host": host, "mia": mia, "ned": ned}, "ned", resumed(ned, ["host", "mia", "ned"], "host")
    )
    assert keys_of(ned) == keys_of(host)
    to_ned = [a for a in answers["host"] if isinstance(a, (SendJson, SendGlobalModel))]
    kinds = [a.message.type.value if isinstance(a, SendJson) else "global" for a in to_ned]
    assert kinds[-2:] == ["group_key", "global"] and to_ned[-1].to == ["ned"]
    assert to_ned[-1].aggregation_round == 1


def test_a_missed_global_held_for_a_re_keying_is_dropped_when_a_newer_round_reaches_it():
    host, sessions = private_room(("mia",))
    mia = sessions["mia"]
    for session in (host, mia):  # the relay restarts; the host is back first
        drop_and_reconnect(session)
    resumed(host, ["host"], "host")
    host.publish_global_model(weights(1.0), 1)  # round 1, while mia is away
    users = [user("host"), user("mia")]
    joined = host.message(
        msg("user_joined", {"user_id": "mia", "users": users, "host_id": "host", "resumed": True})
    )
    assert not of(joined, SendGlobalModel)  # held until mia re-keyed
    back = resumed(mia, ["host", "mia"], "host")
    _, published = host.publish_global_model(weights(2.0), 2)  # round 2 reaches mia first
    assert [a.to for a in of(published, SendGlobalData)] == [["mia"]]
    answers = deliver({"host": host, "mia": mia}, "mia", back)
    assert sent(answers["host"], "group_key") and not of(answers["host"], SendGlobalModel)
