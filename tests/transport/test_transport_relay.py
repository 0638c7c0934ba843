"""The C transport against the real relay binary (the `relay` fixture of tests/conftest.py, which
skips only when the binary is not built): large messages intact through the relay's streaming
echo, concurrent senders, chunked transfers between room members, a frozen relay detected by
pings, wss:// with a test certificate, and the relay's close codes surfaced."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import struct
import threading
import time

import pytest

from segmentation_suite.network import transport
from segmentation_suite.network.transport import ConnectionClosed

MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(251 * 64))
    return (block * (size // len(block) + 1))[:size]


def echo_relay(relay, *args: str):
    # The relay caps text messages at 64 MiB (--max-text-size): control messages are small.
    # An echo is its own receiver, so the relay cannot throttle the sender for it: a receiver
    # buffer the size of the largest message keeps the hard queue limit out of the way.
    return relay(
        "--enable-echo",
        "--max-message-size",
        "300M",
        "--max-text-size",
        "64M",
        "--receiver-buffer",
        "300M",
        *args,
    )


def control(conn, message_type: str, **payload) -> None:
    conn.send_text(json.dumps({"type": message_type, "payload": payload}))


def next_control(conn, timeout: float = 5.0) -> dict:
    is_binary, data = conn.recv(timeout=timeout)
    assert not is_binary, "expected a JSON control message"
    return json.loads(data)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "size"), [("binary", 256 * MiB), ("text", 64 * MiB)])
def test_large_messages_through_the_relay_echo_intact(relay, kind, size):
    server = echo_relay(relay)
    payload = pattern(size)
    with transport.connect(server.url + "/echo", proxy=False) as conn:
        if kind == "binary":
            conn.send_binary(payload)
            expected = hashlib.sha256(payload).digest()
        else:
            text = payload.translate(bytes(range(128)) * 2).decode("ascii")
            conn.send_text(text)
            expected = hashlib.sha256(text.encode("ascii")).digest()
        is_binary, data = conn.recv(timeout=120)
        assert is_binary == (kind == "binary")
        received = data if is_binary else data.encode("ascii")
        assert len(received) == len(payload)
        assert hashlib.sha256(received).digest() == expected


def test_four_threads_sending_through_the_relay(relay):
    server = echo_relay(relay)
    per_thread = 25
    with transport.connect(server.url + "/echo", proxy=False) as conn:
        errors: list[BaseException] = []

        def sender(index: int) -> None:
            try:
                for sequence in range(per_thread):
                    size = 100 + (sequence * 65537 + index * 4099) % (2 * MiB)
                    conn.send_binary(struct.pack("<II", index, sequence) + pattern(size, index))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        expected_next = [0] * 4
        for _ in range(4 * per_thread):
            _, data = conn.recv(timeout=30)
            index, sequence = struct.unpack_from("<II", data)
            size = 100 + (sequence * 65537 + index * 4099) % (2 * MiB)
            assert sequence == expected_next[index]
            assert bytes(data[8:]) == pattern(size, index)
            expected_next[index] += 1
        for thread in threads:
            thread.join(10)
        assert not errors and expected_next == [per_thread] * 4


def test_chunked_transfer_between_room_members(relay):
    server = relay("--max-message-size", "8M")
    alice = transport.connect(server.url + "/ws", proxy=False)
    bob = transport.connect(server.url + "/ws", proxy=False)
    carol = transport.connect(server.url + "/ws", proxy=False)
    try:
        # Each announces protocol 2 (framed binaries), as our client does.
        frames = ["frame_header"]
        control(alice, "create_room", user_id="alice", display_name="Alice", features=frames)
        created = next_control(alice)
        assert created["type"] == "room_created"
        assert "frame_header" in created["payload"]["relay"]["features"]
        chunk_size = created["payload"]["relay"]["limits"]["chunk_size"]
        code = created["payload"]["room_code"]
        for conn, name in ((bob, "bob"), (carol, "carol")):
            control(
                conn, "join_room", room_code=code, user_id=name, display_name=name, features=frames
            )
            assert next_control(conn)["type"] == "room_joined"
        for _ in range(2):
            assert next_control(alice)["type"] == "user_joined"
        assert next_control(bob)["type"] == "user_joined"  # carol

        payload = pattern(20 * MiB + 12345, seed=3)
        chunk_size = min(chunk_size, 4 * MiB)
        count = alice.send_chunked(
            transport.FRAME_KIND_WEIGHTS, 42, "alice", ["bob"], payload, chunk_size
        )
        assert count == 6
        rebuilt = bytearray()
        for index in range(count):
            is_binary, data = bob.recv(timeout=30)
            assert is_binary
            header = transport.parse_frame_header(data)
            assert (header.sender, header.transfer_id, header.chunk_index) == ("alice", 42, index)
            assert header.total_size == len(payload) and header.recipients == ("bob",)
            rebuilt += data[header.header_size :]
        assert rebuilt == payload
        # Directed to bob only: carol gets nothing.
        with pytest.raises(TimeoutError):
            carol.recv(timeout=0.5)
    finally:
        for conn in (alice, bob, carol):
            conn.close()


def test_transfers_reassembled_in_c_arrive_whole_between_other_messages(relay):
    """With reassemble_transfers, bob's recv() gives one aligned Transfer per chunked transfer
    (two interleaved from two threads of alice), while text and unframed binary messages sent
    in between still arrive on their own, in order."""
    server = relay("--max-message-size", "8M")
    alice = transport.connect(server.url + "/ws", proxy=False)
    bob = transport.connect(server.url + "/ws", proxy=False, reassemble_transfers=True)
    try:
        control(alice, "create_room", user_id="alice", display_name="Alice")
        created = next_control(alice)
        code = created["payload"]["room_code"]
        # bob reads framed binaries (the relay withholds them from members that do not say
        # so); alice does not say so, so her unframed binary reaches bob too (docs/protocol.md).
        control(
            bob,
            "join_room",
            room_code=code,
            user_id="bob",
            display_name="Bob",
            features=["frame_header"],
        )
        assert next_control(bob)["type"] == "room_joined"
        assert next_control(alice)["type"] == "user_joined"

        first, second = pattern(9 * MiB + 7, seed=5), pattern(5 * MiB + 1, seed=6)
        assert transport.chunk_count("alice", ["bob"], len(first), 2 * MiB) == 5
        senders = [
            threading.Thread(
                target=alice.send_chunked,
                args=(transport.FRAME_KIND_WEIGHTS, tid, "alice", ["bob"], data, 2 * MiB),
            )
            for tid, data in ((1, first), (2, second))
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=30)
        alice.send_binary(b"unframed v1 bytes")
        received = {}
        while len(received) < 2:
            is_binary, data = bob.recv(timeout=30)
            assert is_binary and isinstance(data, transport.Transfer)
            header = data.header
            assert (header.sender, header.recipients) == ("alice", ("bob",))
            assert header.total_size == len(data)
            view = memoryview(data)
            assert len(view) == header.total_size
            assert ctypes.addressof(ctypes.c_char.from_buffer(view)) % 64 == 0  # aligned
            received[header.transfer_id] = bytes(view)
        assert received == {1: first, 2: second}
        assert bob.recv(timeout=10) == (True, b"unframed v1 bytes")
    finally:
        alice.close()
        bob.close()


def test_message_over_the_relay_limit_is_closed_with_1009(relay):
    server = relay("--max-message-size", "1M")
    conn = transport.connect(server.url + "/ws", proxy=False)
    # Just over the limit: the whole message leaves before the relay's Close comes back (a
    # larger one could meet a reset socket, which loses the Close frame).
    conn.send_binary(bytes(MiB + 1024))
    with pytest.raises(ConnectionClosed) as raised:
        conn.recv(timeout=10)
    assert raised.value.code == 1009
    assert conn.close_code == 1009


def test_relay_shutdown_surfaces_1001(relay):
    server = relay()
    conn = transport.connect(server.url + "/ws", proxy=False)
    control(conn, "create_room", user_id="alice", display_name="Alice")
    assert next_control(conn)["type"] == "room_created"
    os.kill(server.pid, signal.SIGTERM)
    with pytest.raises(ConnectionClosed) as raised:
        conn.recv(timeout=10)
    assert raised.value.code == 1001


def test_frozen_relay_is_detected_by_ping_timeout(relay):
    server = echo_relay(relay)
    conn = transport.connect(server.url + "/echo", proxy=False, ping_interval=1, ping_timeout=1)
    conn.send_text("alive")
    assert conn.recv(timeout=5) == (False, "alive")
    os.kill(server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            conn.recv(timeout=15)
        assert time.monotonic() - started < 5
        assert conn.close_code == 1006 and "ping" in conn.close_reason
    finally:
        os.kill(server.pid, signal.SIGCONT)


def test_wss_to_the_relay_with_a_test_certificate(relay, tmp_path):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("relay.test")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    certificate.cert_chain_pems[0].write_to_path(cert_file)
    certificate.private_key_pem.write_to_path(key_file)
    authority.cert_pem.write_to_path(ca_file)
    server = echo_relay(relay, "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    url = f"wss://127.0.0.1:{server.port}/echo"
    with transport.connect(
        url, proxy=False, ca_file=str(ca_file), server_hostname="relay.test"
    ) as conn:
        conn.send_binary(pattern(8 * MiB))
        assert bytes(conn.recv(timeout=20)[1]) == pattern(8 * MiB)
        conn.send_text("über TLS")
        assert conn.recv(timeout=5) == (False, "über TLS")
    with pytest.raises(ConnectionError):
        transport.connect(url, proxy=False, ca_file=str(ca_file), server_hostname="wrong.test")
