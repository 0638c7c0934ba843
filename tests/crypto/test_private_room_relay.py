"""Private rooms through a real relay process: host and member on our C transport, with the
session layer of segmentation_suite/network/private_room.py, and an independent `websockets`
client that joined by the routing code as a probe.

Every connection goes through a recording TCP forwarder on loopback
(tests/helpers/loopback_forwarder.py), which keeps what the relay sends to each client
(server-to-client frames are not masked, so this is what the relay forwards, byte for byte).
The checks: the probe never receives a 256-byte window of the model's float32 or float16 bytes
(and does in an open room: the control); FedAvg rounds complete with values checked; a wrong
secret part is refused in words and 3 failures close the room; neither the relay's log nor its
forwarded frames hold the secret part, a key, or plaintext weights.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from helpers.loopback_forwarder import LoopbackForwarder
from helpers.relay_process import SLOWDOWN
from helpers.wire_probe import Probe, leaked_windows
from segmentation_suite.network import _relayclient as crypto
from segmentation_suite.network import transport
from segmentation_suite.network.codec import decode_weights, serialize_weights
from segmentation_suite.network.private_code import RoomCode, new_secret
from segmentation_suite.network.private_room import (
    CLOSED,
    CONTROL_TYPES,
    MISMATCH,
    PrivateRoomHost,
    PrivateRoomMember,
)

TIMEOUT = 10.0 * SLOWDOWN
CHUNK = 256 * 1024  # several chunks per transfer, so reassembly and per-chunk framing are used


def send_control(conn, message: dict, to: list[str] | None = None) -> None:
    if to is not None:
        message = dict(message, to=to)
    conn.send_text(json.dumps(message))


def next_control(conn, types) -> dict:
    """The next text message of one of `types`; other text messages are skipped."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        is_binary, data = conn.recv(timeout=max(0.1, deadline - time.monotonic()))
        if not is_binary:
            message = json.loads(data)
            if message.get("type") in types:
                return message


def next_transfer(conn, open_as=None) -> tuple[transport.FrameHeader, bytearray, object]:
    """The next whole chunked transfer (text messages in between are skipped). With `open_as`
    (a private-room party), the transfer is opened while it arrives, chunk by chunk."""
    buffer, received, header, opener = None, 0, None, None
    deadline = time.monotonic() + TIMEOUT
    while True:
        is_binary, data = conn.recv(timeout=max(0.1, deadline - time.monotonic()))
        if not is_binary:
            continue
        header = transport.parse_frame_header(data)
        if buffer is None:
            buffer = bytearray(header.total_size)
            if open_as is not None:
                opener = open_as.transfer_opener(
                    header.sender, header.transfer_id, header.kind, header.total_size
                )
        body = data[header.header_size :]
        if opener is not None:
            opener.feed_piece(buffer, body)  # decrypted straight into its place
        else:
            buffer[received : received + len(body)] = body
        received += len(body)
        if header.chunk_index + 1 == header.chunk_count:
            assert received == header.total_size
            return header, buffer, opener.finish(buffer) if opener else None


def pump(private, conn, sender_conns: dict, messages_expected: int = 1) -> None:
    """Lets `private` handle control messages arriving on `conn`, sending its answers."""
    for _ in range(messages_expected):
        message = next_control(conn, CONTROL_TYPES)
        for out in private.handle(message):
            send_control(sender_conns[private_id(private)], out.message, out.to)


def private_id(private) -> str:
    return private.host_id if isinstance(private, PrivateRoomHost) else private.user_id


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "enc.conv.weight": rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
        "enc.conv.bias": rng.standard_normal(64).astype(np.float32),
        "dec.conv.weight": rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
    }


@pytest.fixture
def private_room(relay):
    server = relay("--log-level", "debug")
    forwarder = LoopbackForwarder(server.port)
    url = f"ws://127.0.0.1:{forwarder.port}/ws"
    conns = {}

    def connect(name: str):
        conns[name] = transport.connect(url, proxy=False)
        return conns[name]

    yield server, forwarder, url, connect, conns
    for conn in conns.values():
        conn.close()
    forwarder.close()


def open_room(connect, url):
    host_conn = connect("host")
    send_control(
        host_conn,
        {
            "type": "create_room",
            "payload": {"user_id": "host", "display_name": "Host", "features": ["frame_header"]},
        },
    )
    routing = next_control(host_conn, {"room_created"})["payload"]["room_code"]
    return host_conn, routing


def join(conn, routing: str, user_id: str) -> None:
    send_control(
        conn,
        {
            "type": "join_room",
            "payload": {
                "room_code": routing,
                "user_id": user_id,
                "display_name": user_id,
                "features": ["frame_header"],
            },
        },
    )
    next_control(conn, {"room_joined"})


def run_key_exchange(host, host_conn, member, member_conn) -> None:
    conns = {"host": host_conn, member.user_id: member_conn}
    out = member.start()
    send_control(member_conn, out.message, out.to)
    pump(host, host_conn, conns)  # pake_init -> pake_reply (or pake_failed/refused)
    pump(member, member_conn, conns)  # pake_reply -> pake_confirm, or failed/refused
    if member.error is None:
        pump(host, host_conn, conns)  # pake_confirm -> group_key
        pump(member, member_conn, conns)  # group_key
    elif member.error == MISMATCH:
        pump(host, host_conn, conns)  # the member's pake_failed, counted by the host


def test_private_room_fedavg_probe_sees_only_ciphertext(private_room) -> None:
    server, forwarder, url, connect, _ = private_room
    host_conn, routing = open_room(connect, url)
    # 12 characters: a 4-character secret could turn up in 1.5 MB of ciphertext by chance
    code = RoomCode(routing, new_secret(12))
    alice_conn = connect("alice")
    join(alice_conn, routing, "alice")
    probe = Probe(url, routing, TIMEOUT)
    host = PrivateRoomHost(code, "host")
    alice = PrivateRoomMember(code, "alice", "host")
    run_key_exchange(host, host_conn, alice, alice_conn)
    assert alice.ready and host.members == ["alice"]
    assert alice.verification == host.verification["alice"]

    host_weights, alice_weights = model(1), model(2)
    sent_arrays, broadcast_bytes = [], 0
    for round_number in range(2):
        # alice pushes float32 weights (lossless), sealed; sent to everyone so the probe sees it
        encoded = serialize_weights(alice_weights, wire_dtype="float32", epoch=round_number)
        sealed = alice.seal_transfer(encoded, 100 + round_number, transport.FRAME_KIND_WEIGHTS)
        alice_conn.send_chunked(
            transport.FRAME_KIND_WEIGHTS, 100 + round_number, "alice", [], sealed, CHUNK
        )
        broadcast_bytes += len(sealed)
        _, _, plain = next_transfer(host_conn, open_as=host)  # opened chunk by chunk
        received, _ = decode_weights(plain, as_torch=False)
        for name in alice_weights:
            np.testing.assert_array_equal(received[name], alice_weights[name])
        # FedAvg of the two, sent back as a signed float16 global model
        average = {n: (host_weights[n] + received[n]) / 2 for n in host_weights}
        encoded = serialize_weights(average, wire_dtype="float16")
        sealed = host.seal_transfer(encoded, 200 + round_number, transport.FRAME_KIND_GLOBAL_MODEL)
        host_conn.send_chunked(
            transport.FRAME_KIND_GLOBAL_MODEL, 200 + round_number, "host", [], sealed, CHUNK
        )
        broadcast_bytes += len(sealed)
        header, data, _ = next_transfer(alice_conn)
        plain = alice.open_transfer(header.sender, header.transfer_id, header.kind, data)
        global_model, _ = decode_weights(plain, as_torch=False)
        for name in average:
            np.testing.assert_array_equal(
                global_model[name], average[name].astype(np.float16).astype(np.float32)
            )
        sent_arrays += [*alice_weights.values(), *average.values()]
        alice_weights = {n: v + 0.5 for n, v in global_model.items()}  # "training"

    deadline = time.monotonic() + TIMEOUT
    while len(probe.binary()) < broadcast_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    probe.close()
    seen = probe.binary()
    assert len(seen) > broadcast_bytes  # the probe got all four transfers (and frame headers)
    assert leaked_windows(seen, sent_arrays) == 0
    # what the relay forwarded to anyone, and what it logged, hold no secret and no key
    wire, relay_log = forwarder.everything(), "\n".join(server.log)
    assert leaked_windows(wire, sent_arrays) == 0
    for secret in (
        code.secret.encode(),
        str(code).encode(),
        host._wrap_keys["alice"],
        host._transfers.group.key,
        base64.b64encode(host._transfers.group.key),
    ):
        assert secret not in wire
        assert secret.decode("latin-1") not in relay_log
    assert any("room" in line for line in server.log)  # the log was written, at debug level


def test_open_room_control_probe_does_see_the_weights(private_room) -> None:
    _, _, url, connect, _ = private_room
    host_conn, routing = open_room(connect, url)
    probe = Probe(url, routing, TIMEOUT)
    weights = model(3)
    encoded = serialize_weights(weights, wire_dtype="float16")
    host_conn.send_chunked(transport.FRAME_KIND_GLOBAL_MODEL, 1, "host", [], encoded, CHUNK)
    deadline = time.monotonic() + TIMEOUT
    while len(probe.binary()) < len(encoded) and time.monotonic() < deadline:
        time.sleep(0.05)
    probe.close()
    assert leaked_windows(probe.binary(), list(weights.values())) > 100


def test_wrong_secret_refused_in_words_and_three_failures_close_the_room(private_room) -> None:
    _, _, url, connect, _ = private_room
    host_conn, routing = open_room(connect, url)
    code = RoomCode(routing, "4HRT")
    alerts: list[str] = []
    host = PrivateRoomHost(code, "host", on_alert=alerts.append)
    for attempt in range(3):
        conn = connect(f"guess{attempt}")
        join(conn, routing, f"guess{attempt}")
        guess = PrivateRoomMember(
            RoomCode(routing, f"ZZZ{'ABC'[attempt]}"), f"guess{attempt}", "host"
        )
        run_key_exchange(host, host_conn, guess, conn)
        assert guess.error == MISMATCH == "the code's secret part does not match"
        assert not guess.ready
        # the global model reaches the guesser as ciphertext it cannot open
        sealed = host.seal_transfer(
            b"model bytes" * 1000, 10 + attempt, transport.FRAME_KIND_GLOBAL_MODEL
        )
        host_conn.send_chunked(
            transport.FRAME_KIND_GLOBAL_MODEL, 10 + attempt, "host", [guess.user_id], sealed, CHUNK
        )
        header, data, _ = next_transfer(conn)
        with pytest.raises(ValueError, match="no group key"):
            guess.open_transfer("host", header.transfer_id, header.kind, data)
    assert host.closed and host.failed_attempts == 3 and len(alerts) == 1
    # an honest member is now refused too, in words, until the host reopens the room
    alice_conn = connect("alice")
    join(alice_conn, routing, "alice")
    alice = PrivateRoomMember(code, "alice", "host")
    run_key_exchange(host, host_conn, alice, alice_conn)
    assert alice.error == CLOSED and not alice.ready
    host.reopen()
    run_key_exchange(host, host_conn, alice, alice_conn)
    assert alice.ready and alice.error is None


def test_a_transfer_is_sealed_chunk_by_chunk_while_it_is_sent(private_room) -> None:
    """seal_while_sending writes the header only; send_chunked seals each chunk just before it
    goes (the chunk before is on the wire meanwhile), and what arrives opens to the payload."""
    _, _, url, connect, _ = private_room
    host_conn, routing = open_room(connect, url)
    code = RoomCode(routing, new_secret(8))
    alice_conn = connect("alice")
    join(alice_conn, routing, "alice")
    host, alice = PrivateRoomHost(code, "host"), PrivateRoomMember(code, "alice", "host")
    run_key_exchange(host, host_conn, alice, alice_conn)
    payload = np.random.default_rng(4).bytes(2_000_000)
    segment = 65536  # 31 segments over 8 chunks of 256 KiB
    sealed = bytearray(crypto.sealed_size(len(payload), segment))
    group = alice._transfers.group
    pending = crypto.seal_while_sending(
        group.key,
        routing,
        "alice",
        300,
        transport.FRAME_KIND_WEIGHTS,
        group.epoch,
        payload,
        sealed,
        segment_size=segment,
    )
    assert pending.sealed_bytes == 64  # the header: nothing else is sealed before the send
    chunks = alice_conn.send_chunked(
        transport.FRAME_KIND_WEIGHTS, 300, "alice", ["host"], pending, CHUNK
    )
    assert chunks == 8 and pending.sealed_bytes == len(sealed) == len(pending)
    header, _, plain = next_transfer(host_conn, open_as=host)
    assert header.total_size == len(sealed)
    assert bytes(plain) == payload
