"""LAN mode: an AggregationServer (the relay binary in LAN mode plus the host's connection), the
host's own HostClient, and members in their own processes complete FedAvg rounds.

Also checked with an independent client (the `websockets` library) that the session speaks the
direct-mode messages of the original protocol (hello -> welcome, user_list), and that every
failure reaches the user as a readable `error`.
"""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest
import websockets
from members import big_layout, layout_state
from test_api_rooms import make_client
from test_api_rounds import check_weighted_mean

from segmentation_suite.network import AggregationServer, HostClient, SyncClient


@pytest.fixture
def lan_server(recorder):
    server = AggregationServer(aggregation_timeout=60)
    for what in ("user_connected", "user_disconnected", "weights_received", "error"):
        getattr(server, what).connect(recorder.record("server", what))
    server.aggregation_complete.connect(recorder.record("server", "aggregated"))
    address = server.start(port=0, architecture="unet2d-test")
    assert address is not None, recorder.events
    yield server
    server.stop()


def start_session(recorder, members, server, names):
    """The host's HostClient in this process, `names` in their own processes; returns the
    HostClient once everyone sees everyone."""
    host = make_client(recorder, "host", HostClient, aggregation_timeout=60)
    host.connect_to_local_server(server.port, "host")
    recorder.wait_for(lambda: recorder.of("host", "connected"), 10, "host connected")
    for name in names:
        members.start(f"lan://127.0.0.1:{server.port}", "", name)
    everyone = sorted(["host", *names])
    for name in ["host", *names]:
        recorder.wait_for(
            lambda n=name: any(sorted(users) == everyone for (users,) in recorder.of(n, "users")),
            60,
            f"{name} sees everyone",
        )
    return host


def test_lan_round_with_host_client_and_two_members(lan_server, recorder, members):
    host = start_session(recorder, members, lan_server, ["ann", "ben"])
    assert lan_server.is_running and lan_server.client_count == 3
    assert sorted(n for (n,) in recorder.of("server", "user_connected")) == ["ann", "ben", "host"]
    layout = big_layout(1)
    seeds, samples = {"host": 1, "ann": 2, "ben": 3}, {"host": 10, "ann": 30, "ben": 60}
    host.send_weights(layout_state(seeds["host"], layout), epoch=1, loss=0.5, num_samples=10)
    for name in ("ann", "ben"):
        members.send(name, "push", seeds[name], samples[name], 1, layout, None)

    recorder.wait_for(lambda: recorder.of("server", "aggregated"), 60, "the round to close")
    for name in ("ann", "ben"):
        recorder.wait_for(lambda n=name: recorder.of(n, "global"), 30, f"{name} gets the model")
    recorder.wait_for(lambda: recorder.of("host", "global"), 30, "host gets the model")
    names = ["host", "ann", "ben"]
    (server_model,) = recorder.of("server", "aggregated")[0]
    check_weighted_mean(
        server_model, layout, [seeds[n] for n in names], [samples[n] for n in names]
    )
    # Members get it as sent on the wire: float16.
    (received,) = recorder.of("host", "global")[0]
    for key, value in server_model.items():
        expected = np.asarray(value).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(received[key]), expected, err_msg=key)
    assert sorted(n for (n,) in recorder.of("server", "weights_received")) == sorted(names)
    assert not recorder.of("server", "error") and not recorder.of("host", "error")


def test_member_leaving_is_seen_and_round_closes_without_it(lan_server, recorder, members):
    host = start_session(recorder, members, lan_server, ["ann", "ben"])
    members.send("ben", "leave")
    recorder.wait_for(lambda: recorder.of("server", "user_disconnected"), 20, "server sees ben go")
    recorder.wait_for(
        lambda: ("ben",) in recorder.of("ann", "user_left_room"), 20, "ann sees ben leave"
    )
    recorder.wait_for(
        lambda: recorder.of("host", "users")[-1] == (["host", "ann"],), 20, "host's list"
    )
    layout = big_layout(1)
    host.send_weights(layout_state(1, layout), epoch=1, loss=0.5, num_samples=1)
    members.send("ann", "push", 2, 1, 1, layout, None)
    recorder.wait_for(lambda: recorder.of("server", "aggregated"), 30, "round without ben")
    recorder.wait_for(lambda: recorder.of("ann", "global"), 30, "ann gets the model")


def test_websockets_client_speaks_direct_mode(lan_server):
    """An independent client: hello -> welcome (user list, architecture), then user_list."""

    async def session():
        url = f"ws://127.0.0.1:{lan_server.port}/ws"
        async with websockets.connect(url) as ws:
            hello = {"type": "hello", "payload": {"user_id": "indie", "display_name": "Indie"}}
            await ws.send(json.dumps(hello))
            received = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
            # A relay-mode join is refused in words: this is a LAN session.
            join = {"type": "join_room", "payload": {"room_code": "ABCDEF", "user_id": "indie"}}
            await ws.send(json.dumps(join))
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return received

    welcome, user_list, refusal = asyncio.run(session())
    assert welcome["type"] == "welcome"
    assert welcome["payload"]["architecture"] == "unet2d-test"
    assert welcome["payload"]["user_list"] == [{"user_id": "indie", "display_name": "Indie"}]
    assert user_list["type"] == "user_list"
    assert [u["user_id"] for u in user_list["payload"]["users"]] == ["indie"]
    assert refusal["type"] == "error" and refusal["payload"]["code"] == "LAN_SESSION"


def test_stopping_the_server_ends_the_session_for_members(recorder):
    server = AggregationServer()
    assert server.start(port=0) is not None
    member = make_client(recorder, "ann")
    member.disconnected.connect(recorder.record("ann", "disconnected"))
    member.connect_direct("127.0.0.1", server.port, "ann")
    recorder.wait_for(lambda: recorder.of("ann", "connected"), 10, "ann connected")
    server.stop()
    recorder.wait_for(lambda: recorder.of("ann", "disconnected"), 10, "ann disconnected")
    assert ("The LAN host ended the session",) in recorder.of("ann", "error")
    assert not server.is_running and server.client_count == 0


def test_errors_in_plain_words(recorder):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AggregationServer()
        server.error.connect(recorder.record("server", "error"))
        assert server.start(port=port) is None
        assert not server.is_running
        ((text,),) = recorder.of("server", "error")
        assert f"port {port} is in use" in text

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    lost = make_client(recorder, "lost", connect_timeout=3)
    lost.connect_direct("127.0.0.1", free_port, "lost")
    recorder.wait_for(lambda: recorder.of("lost", "error"), 10, "unreachable host")
    assert "Cannot reach" in recorder.of("lost", "error")[0][0]

    bad = SyncClient()
    bad.error.connect(recorder.record("bad", "error"))
    bad.connect_direct("127.0.0.1", 70000, "bad")
    assert "port must be 1 to 65535" in recorder.of("bad", "error")[0][0]
