"""A private room's member that comes back by resume after the group key was rotated while it
was away (another member left, and the new key could not reach it) holds the current key again
without re-joining by hand: on resume it runs the key exchange again over the relay and the host
answers with the current epoch's key (private_room.py, PrivateRoomMember.resume). Then a FedAvg
round completes with values checked. A resume with nothing rotated keeps the key, silently.

Alice reaches the relay through a loopback forwarder the test can cut (both sockets closed, as
a dropped link) and keep shut for a while (new connections refused), so her session is away.

After a relay restart a member may resume before its host: the room is back, its host not
yet, and an exchange directed at the host would be dropped. The member waits and runs it when
the relay says the host is back (PrivateRoomPart.host_back); the drill below holds the host's
link shut across a real restart so the order is certain.
"""

from __future__ import annotations

from test_api_private_rooms import TIMEOUT, create, join, run_rounds

from helpers.loopback_forwarder import LoopbackForwarder


def test_member_back_after_a_rotation_gets_the_current_key(relay, recorder) -> None:
    server = relay()
    link = LoopbackForwarder(server.port)
    try:
        run_drill(server.url + "/ws", f"ws://127.0.0.1:{link.port}/ws", link, recorder)
    finally:
        link.close()


def check_round(recorder, host, alice) -> None:
    """A round in the current epoch: both push, alice gets the weighted mean (values checked
    by run_rounds), and neither side reported an error."""
    run_rounds(recorder, host, alice, rounds=1)
    errors = [e for e in recorder.events if e[1] == "error" and e[0] in ("host", "alice")]
    assert not errors, errors


def run_drill(url: str, alice_url: str, link: LoopbackForwarder, recorder) -> None:
    host, code = create(recorder, url)
    fast_retry = {"reconnect_base_delay": 0.05, "reconnect_max_delay": 0.3}
    alice = join(recorder, "alice", alice_url, code, reconnect_attempts=200, **fast_retry)
    bob = join(recorder, "bob", url, code)
    for name in ("alice", "bob"):
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), TIMEOUT, f"{name} in")
    room = host._session.private.host
    recorder.wait_for(lambda: len(room.members) == 2, TIMEOUT, "both members hold the key")
    member = alice._session.private.member
    assert member.epoch == room.epoch == 0

    # 1. Dropped and back with nothing rotated: the re-run exchange keeps the key as it was.
    first_wrap_key = member._wrap_key
    link.cut()
    link.restore()

    def exchanged_again() -> bool:
        held = member._wrap_key
        return held != first_wrap_key and held == room._wrap_keys[alice.user_id]

    recorder.wait_for(exchanged_again, TIMEOUT, "the exchange run again and confirmed")
    recorder.wait_for(lambda: not member.rekeying, TIMEOUT, "the host's answer")
    assert member.epoch == 0 and member._transfers.group.key == room._transfers.group.key

    # 2. Dropped; while away, bob leaves and the host rotates the key (epoch 1), which
    # cannot reach alice. Back by resume, she gets epoch 1 without re-joining by hand.
    link.cut()
    bob.disconnect()
    recorder.wait_for(lambda: room.epoch == 1, TIMEOUT, "the host rotated the key")
    assert member.epoch == 0  # the new key did not reach her
    link.restore()
    recorder.wait_for(lambda: member.epoch == 1, TIMEOUT, "alice holds the rotated key")
    assert member._transfers.group.key == room._transfers.group.key
    assert len(recorder.of("alice", "room_joined")) == 1  # no second join
    assert alice.private_ready and alice.room_code == code

    check_round(recorder, host, alice)


def test_member_back_before_its_host_after_a_relay_restart_gets_the_rotated_key(
    relay, recorder, tmp_path
) -> None:
    secret = ["--secret-file", str(tmp_path / "relay.secret")]
    first = relay(*secret)
    host_link, alice_link = LoopbackForwarder(first.port), LoopbackForwarder(first.port)
    try:
        restart_drill(relay, secret, first, host_link, alice_link, recorder)
    finally:
        host_link.close()
        alice_link.close()


def restart_drill(relay, secret, first, host_link, alice_link, recorder) -> None:
    fast_retry = {
        "reconnect_attempts": 200,
        "reconnect_base_delay": 0.05,
        "reconnect_max_delay": 0.3,
    }
    host, code = create(recorder, f"ws://127.0.0.1:{host_link.port}/ws", **fast_retry)
    alice = join(recorder, "alice", f"ws://127.0.0.1:{alice_link.port}/ws", code, **fast_retry)
    alice.sync_status.connect(recorder.record("alice", "status"))
    bob = join(recorder, "bob", first.url + "/ws", code)
    for name in ("alice", "bob"):
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), TIMEOUT, f"{name} in")
    room = host._session.private.host
    recorder.wait_for(lambda: len(room.members) == 2, TIMEOUT, "both members hold the key")
    member = alice._session.private.member

    # Alice is away when bob leaves: the rotated key (epoch 1) cannot reach her.
    alice_link.cut()
    bob.disconnect()
    recorder.wait_for(lambda: room.epoch == 1, TIMEOUT, "the host rotated the key")
    assert member.epoch == 0

    # The relay restarts (same secret, same port) while the host's link is down, so alice
    # is back first: the room re-opens on her resume, without its host.
    host_link.cut()
    code_at_exit, _ = first.terminate(timeout=5)
    assert code_at_exit == 0
    relay(*secret, "--port", str(first.port))
    alice_link.restore()

    def waiting_for_host() -> bool:
        said = [t for (t,) in recorder.of("alice", "status") if "waiting for the host" in t]
        return bool(said) and alice._session.in_room

    recorder.wait_for(waiting_for_host, TIMEOUT, "alice back, waiting for the host")
    assert alice._session.host_id is None and member.rekeying and member.epoch == 0

    # The host is back: alice runs the exchange with it and holds the rotated key.
    host_link.restore()
    recorder.wait_for(lambda: not member.rekeying, TIMEOUT, "alice re-keyed")
    assert member.epoch == room.epoch == 1
    assert member._transfers.group.key == room._transfers.group.key
    assert room.failed_attempts == 0 and sorted(room.members) == [alice.user_id]
    assert len(recorder.of("alice", "room_joined")) == 1  # no second join
    assert host.room_code == alice.room_code == code
    check_round(recorder, host, alice)
