"""A private room's member that comes back by resume after the group key was rotated while it
was away (another member left, and the new key could not reach it) holds the current key again
without re-joining by hand: on resume it runs the key exchange again over the relay and the host
answers with the current epoch's key (private_room.py, PrivateRoomMember.resume). Then a FedAvg
round completes with values checked. A resume with nothing rotated keeps the key, silently.

Alice reaches the relay through a loopback forwarder the test can cut (both sockets closed, as
a dropped link) and keep shut for a while (new connections refused), so her session is away.
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
    recorder.wait_for(lambda: member._previous_wrap_key is None, TIMEOUT, "the host's answer")
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

    # A round in the new epoch: both push, alice gets the average, values checked.
    run_rounds(recorder, host, alice, rounds=1)
    errors = [e for e in recorder.events if e[1] == "error" and e[0] in ("host", "alice")]
    assert not errors, errors
