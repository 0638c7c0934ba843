"""Private rooms through SyncClient on a real relay (docs/security.md): FedAvg rounds with the
full code, a wrong secret part refused in words, 3 failures closing the room, what the relay and
a `websockets` member that joined by the routing code get to see, and a global model from a
non-host refused.

Every connection goes through a recording TCP forwarder (tests/helpers/loopback_forwarder.py)
that keeps all the relay sends to each client and, unmasked, all each client sends the relay;
the relay logs at debug level.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from test_api_rooms import make_client

from helpers.loopback_forwarder import LoopbackForwarder
from helpers.relay_process import SLOWDOWN
from helpers.wire_probe import Probe, leaked_windows
from segmentation_suite.network import serialize_weights, transport
from segmentation_suite.network.private_code import parse_room_code
from segmentation_suite.network.private_room import CLOSED, MISMATCH

TIMEOUT = 30.0 * SLOWDOWN


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "enc.weight": rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
        "enc.bias": rng.standard_normal(64).astype(np.float32),
        "dec.weight": rng.standard_normal((32, 64, 3, 3)).astype(np.float32),
    }


def run_rounds(recorder, host, alice, rounds: int) -> list[np.ndarray]:
    """FedAvg rounds of the host and alice (both push, the host averages and sends the global),
    each global checked against the float16 average weighted by the samples; every array of
    them (both parties' weights, the globals), for the leak checks."""
    host_weights, made = model(1), []
    already = len(recorder.of("alice", "global"))  # globals of rounds before these
    for round_number in range(1, rounds + 1):
        alice_weights = model(10 + round_number)
        host.send_weights(host_weights, epoch=round_number, loss=0.5, num_samples=10)
        alice.send_weights(alice_weights, epoch=round_number, loss=0.4, num_samples=30)
        recorder.wait_for(
            lambda r=round_number: len(recorder.of("alice", "global")) >= already + r,
            TIMEOUT,
            f"round {round_number}'s global at alice",
        )
        (got,) = recorder.of("alice", "global")[-1]
        for name in host_weights:
            on_wire = (
                10 * host_weights[name].astype(np.float16).astype(np.float64)
                + 30 * alice_weights[name].astype(np.float16).astype(np.float64)
            ) / 40
            np.testing.assert_allclose(np.asarray(got[name]), on_wire, rtol=1e-3, atol=1e-3)
        global_weights = {n: np.asarray(v) for n, v in got.items()}
        made += [*alice_weights.values(), *host_weights.values(), *global_weights.values()]
        host_weights = {n: v + 0.25 for n, v in global_weights.items()}
    return made


@pytest.fixture
def wire(relay):
    server = relay("--log-level", "debug")
    forwarder = LoopbackForwarder(server.port)
    yield server, forwarder, f"ws://127.0.0.1:{forwarder.port}/ws"
    forwarder.close()


def create(recorder, url, private=True, **options):
    host = make_client(recorder, "host", aggregation_timeout=TIMEOUT, compression=None, **options)
    host.verification_code.connect(recorder.record("host", "verification"))
    host.create_relay_room("host", url, private=private, secret_length=12)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), TIMEOUT, "room")[0]
    return host, code


def join(recorder, name, url, code, **options):
    client = make_client(recorder, name, compression=None, **options)
    client.verification_code.connect(recorder.record(name, "verification"))
    client.join_relay_room(code, name, url)
    return client


def test_fedavg_in_a_private_room_probe_sees_only_ciphertext(wire, recorder) -> None:
    server, forwarder, url = wire
    host, code = create(recorder, url)
    parsed = parse_room_code(code)
    assert parsed.private and len(parsed.secret) == 12 and code == host.room_code
    assert host.routing_code == parsed.routing and host.is_private
    # typed in lower case without the dash: the same room
    alice = join(recorder, "alice", url, code.replace("-", "").lower())
    recorder.wait_for(lambda: recorder.of("alice", "room_joined"), TIMEOUT, "alice joined")
    assert recorder.of("alice", "room_joined")[0] == (code,)
    probe = Probe(url, parsed.routing, TIMEOUT)
    # both sides see the same verification string for each other
    (host_side,) = [v for peer, v in recorder.of("host", "verification") if peer == alice.user_id]
    assert recorder.of("alice", "verification") == [(host.user_id, host_side)]
    assert len(host_side.replace(" ", "")) == 6

    sent = run_rounds(recorder, host, alice, rounds=2)
    assert host.aggregation_round == alice.aggregation_round == 2
    time.sleep(0.5)  # the probe's reader takes the last frames
    probe.close()
    seen = probe.binary()
    # the host broadcasts the global model to everyone in the room: the probe got it sealed
    assert len(seen) > 2 * sum(a.nbytes // 2 for a in model(1).values())
    assert leaked_windows(seen, sent) == 0
    everything, relay_log = forwarder.everything(), "\n".join(server.log)
    assert leaked_windows(everything, sent) == 0
    assert parsed.secret.encode() not in everything
    # what the relay received from our clients: the routing code in the JSON, never the secret
    texts = [p for p in forwarder.to_relay_payloads() if p.startswith(b"{")]
    joins = [json.loads(t) for t in texts if b'"join_room"' in t]
    assert [j["payload"]["room_code"] for j in joins] == [parsed.routing, parsed.routing]
    assert any(b'"pake_init"' in t for t in texts)  # the key exchange went through the relay
    assert not any(parsed.secret.encode() in t for t in texts)
    to_relay = b"".join(forwarder.to_relay_payloads())
    assert len(to_relay) > 2 * sum(a.nbytes // 2 for a in model(1).values())  # pushes, globals
    assert leaked_windows(to_relay, sent) == 0
    assert parsed.secret not in relay_log and code not in relay_log
    assert "room=" in relay_log  # the relay logged the room (by a hash), at debug level
    assert not [e for e in recorder.events if e[1] == "error"]


def test_open_room_control_the_probe_does_see_the_weights(wire, recorder) -> None:
    _, forwarder, url = wire
    host, code = create(recorder, url, private=False)
    assert len(code) == 6 and not host.is_private
    probe = Probe(url, code, TIMEOUT)
    alice = join(recorder, "alice", url, code)
    recorder.wait_for(lambda: recorder.of("alice", "room_joined"), TIMEOUT, "alice joined")
    weights = model(3)
    host.send_weights(weights, epoch=1, loss=0.5, num_samples=10)
    alice.send_weights(model(4), epoch=1, loss=0.5, num_samples=10)
    recorder.wait_for(
        lambda: len(recorder.of("host", "weights_received")) == 2, TIMEOUT, "both pushes"
    )
    assert host.trigger_aggregation()  # the probe, a member of the open room, never pushes
    recorder.wait_for(lambda: recorder.of("alice", "global"), TIMEOUT, "the global")
    (got,) = recorder.of("alice", "global")[0]
    time.sleep(0.5)
    probe.close()
    assert leaked_windows(probe.binary(), [np.asarray(v) for v in got.values()]) > 100
    # and the unmasked client-to-relay frames hold Alice's push: the parser reads the wire
    to_relay = b"".join(forwarder.to_relay_payloads())
    assert leaked_windows(to_relay, list(model(4).values())) > 100


def test_wrong_secret_refused_in_words_three_failures_close_the_room(wire, recorder) -> None:
    _, _, url = wire
    host, code = create(recorder, url)
    parsed = parse_room_code(code)
    host.send_weights(model(1), epoch=1, loss=0.5, num_samples=1)  # a global to protect
    for attempt in range(3):
        name = f"guess{attempt}"
        wrong = parsed.routing + "-" + ("Z" * 11 + "ABC"[attempt])
        guesser = join(recorder, name, url, wrong)
        recorder.wait_for(lambda n=name: recorder.of(n, "error"), TIMEOUT, f"{name} refused")
        assert recorder.of(name, "error")[0][0].endswith(MISMATCH)
        recorder.wait_for(lambda g=guesser: not g.is_connected, TIMEOUT, f"{name} left")
        assert not recorder.of(name, "room_joined") and not recorder.of(name, "global")
        assert guesser.global_weights is None
        host_errors = [e[0] for e in recorder.of("host", "error")]
        recorder.wait_for(
            lambda a=attempt: sum(MISMATCH in t for t in host_errors_now(recorder)) > a,
            TIMEOUT,
            "the host told",
        )
    # The alert follows the third failure's own report (same batch, a moment later).
    recorder.wait_for(
        lambda: any("closed to new members" in t for t in host_errors_now(recorder)),
        TIMEOUT,
        "the host alerted that the room is closed",
    )
    host_errors = host_errors_now(recorder)
    assert host_errors.index(next(t for t in host_errors if "closed to new members" in t)) == 3
    assert host.private_room_closed
    # an honest member is refused too until the host reopens the room
    bob = join(recorder, "bob", url, code)
    recorder.wait_for(lambda: recorder.of("bob", "error"), TIMEOUT, "bob refused")
    assert recorder.of("bob", "error")[0][0].endswith(CLOSED)
    assert not recorder.of("bob", "room_joined")
    recorder.wait_for(lambda: not bob.is_connected, TIMEOUT, "bob left")
    host.reopen_private_room()
    carol = join(recorder, "carol", url, code)
    recorder.wait_for(lambda: recorder.of("carol", "room_joined"), TIMEOUT, "carol joined")
    assert carol.private_ready and not host.private_room_closed


def host_errors_now(recorder) -> list[str]:
    return [e[0] for e in recorder.of("host", "error")]


def test_a_global_model_from_a_non_host_is_refused(wire, recorder) -> None:
    _, _, url = wire
    host, code = create(recorder, url)
    alice = join(recorder, "alice", url, code)
    mallory = join(recorder, "mallory", url, code)
    for name in ("alice", "mallory"):
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), TIMEOUT, f"{name} in")
    # mallory holds the full code and the group key, and seals a "global model" with it
    forged = serialize_weights(model(5))
    sealed = mallory._session.private.member._transfers.seal(
        forged, 77, transport.FRAME_KIND_GLOBAL_MODEL, None
    )
    mallory._connection.send_chunked(
        transport.FRAME_KIND_GLOBAL_MODEL, 77, mallory.user_id, [alice.user_id], sealed, 1 << 16
    )
    recorder.wait_for(lambda: recorder.of("alice", "error"), TIMEOUT, "alice refuses it")
    (text,) = recorder.of("alice", "error")[0]
    assert "global model" in text and "mallory" in text and "host" in text, text
    assert alice.global_weights is None and not recorder.of("alice", "global")
    # a member cannot even seal one through the API
    with pytest.raises(ValueError, match="only the host"):
        mallory._session.private.member.seal_transfer(forged, 78, transport.FRAME_KIND_GLOBAL_MODEL)


def test_private_room_on_the_v1_relay_is_refused_with_a_clear_error(recorder) -> None:
    v1 = api_conftest().V1Relay()
    try:
        host = make_client(recorder, "host")
        host.create_relay_room("host", v1.url)
        recorder.wait_for(lambda: recorder.of("host", "error"), TIMEOUT, "the refusal")
        (text,) = recorder.of("host", "error")[0]
        assert "Private rooms need a relay with directed delivery" in text
        assert "open room" in text and not recorder.of("host", "room_created")
        recorder.wait_for(lambda: not host.is_connected, TIMEOUT, "host left")
    finally:
        v1.stop()


def test_tampered_replayed_and_foreign_pushes_are_refused_nothing_applied(wire, recorder) -> None:
    """Through the relay to a SyncClient host: a sealed push with one flipped bit, the same
    sealed bytes again under a new transfer id (a replay), and a push sealed for another room
    (its key and code) are each refused in words, and no push reaches the round."""
    _, _, url = wire
    host, code = create(recorder, url)
    other_host, other_code = create_second_room(recorder, url)
    alice = join(recorder, "alice", url, code)
    recorder.wait_for(lambda: recorder.of("alice", "room_joined"), TIMEOUT, "alice in")
    member = alice._session.private.member
    plain = serialize_weights(model(6))
    sealed = bytearray(member._transfers.seal(plain, 501, transport.FRAME_KIND_WEIGHTS, None))
    flipped = bytearray(sealed)
    flipped[len(flipped) // 2] ^= 0x01
    # the key of the other room, as a member of both would hold it
    stranger = other_host._session.private.host
    foreign = bytes(stranger.seal_transfer(plain, 503, transport.FRAME_KIND_WEIGHTS))
    conn, to = alice._connection, [host.user_id]
    for transfer_id, data in ((501, flipped), (502, sealed), (503, foreign)):
        conn.send_chunked(
            transport.FRAME_KIND_WEIGHTS, transfer_id, alice.user_id, to, data, 1 << 14
        )
    recorder.wait_for(lambda: len(host_errors_now(recorder)) >= 3, TIMEOUT, "three refusals")
    errors = host_errors_now(recorder)
    assert all(e.startswith("Refused a transfer from alice: ") for e in errors), errors
    assert [e.split(": ", 1)[1].split(":")[0] for e in errors] == [
        "transfer 501 from " + alice.user_id,
        "transfer 502 from " + alice.user_id,
        "transfer 503 from " + alice.user_id,
    ], errors
    assert not recorder.of("host", "weights_received")
    # an honest push sealed the same way does open: the refusals were the tampering
    honest = member._transfers.seal(plain, 504, transport.FRAME_KIND_WEIGHTS, None)
    conn.send_chunked(transport.FRAME_KIND_WEIGHTS, 504, alice.user_id, to, honest, 1 << 14)
    recorder.wait_for(lambda: recorder.of("host", "weights_received"), TIMEOUT, "the real push")
    assert len(host_errors_now(recorder)) == 3
    assert other_code != code


def api_conftest():
    """tests/api/conftest.py as a module (its name, `conftest`, is every test folder's)."""
    import importlib.util

    path = Path(__file__).with_name("conftest.py")
    spec = importlib.util.spec_from_file_location("api_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def create_second_room(recorder, url):
    other = make_client(recorder, "other", compression=None)
    other.create_relay_room("other", url)
    (code,) = recorder.wait_for(lambda: recorder.of("other", "room_created"), TIMEOUT, "room")[0]
    return other, code


def test_joining_a_private_room_by_its_routing_code_alone_is_explained(wire, recorder) -> None:
    _, _, url = wire
    host, code = create(recorder, url)
    alice = join(recorder, "alice", url, code)
    eve = join(recorder, "eve", url, code[:6])  # the 6 routing characters: an open-room join
    for name in ("alice", "eve"):
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), TIMEOUT, f"{name} in")
    host.send_weights(model(1), epoch=1, loss=0.5, num_samples=1)
    alice.send_weights(model(2), epoch=1, loss=0.5, num_samples=1)
    recorder.wait_for(lambda: recorder.of("alice", "global"), TIMEOUT, "alice's global")
    recorder.wait_for(lambda: recorder.of("eve", "error"), TIMEOUT, "eve told")
    assert recorder.of("eve", "error") == [
        (
            f"Room {code[:6]} is private: what its members send is encrypted. Join with the "
            "full code the host shared (the 6 characters, a dash and the secret part)",
        )
    ]
    assert eve.global_weights is None and not recorder.of("eve", "global")
    # the round waited for nobody who did not prove the code: host and alice only
    assert sorted(recorder.of("host", "weights_received")[i][0] for i in range(2)) == sorted(
        [host.user_id, alice.user_id]
    )
