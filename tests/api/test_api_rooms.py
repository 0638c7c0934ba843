"""Rooms through the app API: create, join by a lower-case code, user lists, leaving, errors.

The creator is a SyncClient in the test process; the others are SyncClients in their own
processes (tests/api/members.py). Runs against our relay and against the v1 fixture.
"""

from __future__ import annotations

import threading

from segmentation_suite.network import SyncClient


def make_client(recorder, name: str, client_class=SyncClient, **options) -> SyncClient:
    client = client_class(**options)
    recorder.clients.append(client)
    for what in ("room_created", "room_joined", "user_joined_room", "user_left_room", "error"):
        getattr(client, what).connect(recorder.record(name, what))
    client.connected.connect(recorder.record(name, "connected"))
    client.user_list_updated.connect(
        lambda users: recorder.add((name, "users", ([u["display_name"] for u in users],)))
    )
    client.global_model_received.connect(recorder.record(name, "global"))
    client.weights_received.connect(recorder.record(name, "weights_received"))
    return client


def last_users(recorder, name):
    lists = recorder.of(name, "users")
    return sorted(lists[-1][0]) if lists else None


def test_three_clients_join_see_each_other_and_one_leaves(any_relay, recorder, members):
    kind, url, _ = any_relay
    threads: list[str] = []
    creator = make_client(recorder, "carol")
    creator.user_joined_room.connect(lambda _: threads.append(threading.current_thread().name))
    creator.create_relay_room("carol", url, private=False)
    (code,) = recorder.wait_for(lambda: recorder.of("carol", "room_created"), 10, "room")[0]
    assert creator.room_code == code and len(code) == 6
    assert creator.is_connected and creator.is_relay_mode and creator.is_host
    assert (creator.capabilities is None) == (kind == "v1")

    members.start(url, code.lower(), "alice")
    recorder.wait_for(lambda: recorder.of("alice", "room_joined"), 20, "alice joins")
    members.start(url, code.lower(), "bob")
    everyone = ["alice", "bob", "carol"]
    for name in everyone:
        recorder.wait_for(lambda n=name: last_users(recorder, n) == everyone, 20, f"{name} list")
    assert recorder.of("alice", "room_joined") == [(code,)]
    assert recorder.of("bob", "room_joined") == [(code,)]
    assert recorder.of("carol", "user_joined_room") == [("alice",), ("bob",)]
    assert recorder.of("alice", "user_joined_room") == [("bob",)]
    assert recorder.of("bob", "user_joined_room") == []
    assert code in creator.connection_info and url in creator.connection_info
    # Signals run on the client's dispatcher thread, not the caller's or the network's.
    assert threads and all(name.startswith("sync ") for name in threads)

    members.send("bob", "leave")
    for name in ("alice", "carol"):
        recorder.wait_for(lambda n=name: last_users(recorder, n) == ["alice", "carol"], 20, name)
        assert recorder.of(name, "user_left_room") == [("bob",)]
    assert not recorder.of("carol", "error") and not recorder.of("alice", "error")
    creator.disconnect()
    assert not creator.is_connected


def test_unknown_room_and_unreachable_relay_are_readable_errors(any_relay, recorder):
    _, url, _ = any_relay
    client = make_client(recorder, "dave")
    client.connect_relay("zzzzzz", "dave", url)
    (text,) = recorder.wait_for(lambda: recorder.of("dave", "error"), 10, "error")[0]
    assert "ZZZZZZ" in text and "not found" in text
    assert not client.is_connected and not recorder.of("dave", "connected")

    lost = make_client(recorder, "erin", connect_timeout=3)
    lost.create_relay_room("erin", "ws://127.0.0.1:9/ws")
    (text,) = recorder.wait_for(lambda: recorder.of("erin", "error"), 10, "error")[0]
    assert text.startswith("Cannot reach the relay at ws://127.0.0.1:9/ws")

    bad = make_client(recorder, "fred")
    bad.create_relay_room("fred", "https://relay.example.org")
    (text,) = recorder.wait_for(lambda: recorder.of("fred", "error"), 5, "error")[0]
    assert "wss://" in text
