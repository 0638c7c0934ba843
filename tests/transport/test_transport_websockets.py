"""The C transport against an independent server (the `websockets` library, in a subprocess):
messages arrive intact, sends run concurrently and release the GIL, limits and close codes
behave as docs/transport.md says, dead peers are noticed, TLS and proxies work."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time

import pytest

from segmentation_suite.network import transport
from segmentation_suite.network.transport import ConnectionClosed

# Every test once per WebSocket engine (conftest.py); TLS and proxy tests use the engine
# transport.default_engine picks for them.
pytestmark = pytest.mark.usefixtures("engine")

MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset modulo 251, so a shifted or dropped block shows."""
    block = bytes((i * 7 + seed) % 251 for i in range(251 * 64))
    return (block * (size // len(block) + 1))[:size]


def test_text_and_binary_round_trip(echo_server):
    with transport.connect(echo_server.url("/echo"), proxy=False) as conn:
        assert conn.open
        conn.send_text("héllo wörld ✓")
        assert conn.recv(timeout=5) == (False, "héllo wörld ✓")
        conn.send_binary(b"\x00\x01\xff")
        is_binary, data = conn.recv(timeout=5)
        assert is_binary and isinstance(data, memoryview) and bytes(data) == b"\x00\x01\xff"
        conn.send_text("")
        assert conn.recv(timeout=5) == (False, "")
        conn.send_binary(b"")
        is_binary, data = conn.recv(timeout=5)
        assert is_binary and len(data) == 0
        # Any contiguous buffer can be sent, not just bytes.
        conn.send_binary(memoryview(bytearray(b"abcdef"))[2:5])
        assert bytes(conn.recv(timeout=5)[1]) == b"cde"
    assert not conn.open
    assert conn.close_code == 1000
    assert echo_server.next_close() == "closed /echo 1000 "


def test_received_binary_is_a_writable_view_of_one_block(echo_server):
    with transport.connect(echo_server.url("/echo"), proxy=False) as conn:
        conn.send_binary(pattern(3 * MiB))
        _, data = conn.recv(timeout=10)
        assert not data.readonly and data.contiguous and data.nbytes == 3 * MiB
        assert type(data.obj).__name__ == "MessageBuffer"
        data[0] = 255  # the receiver owns it: the codec may decode in place
        assert data[0] == 255


def test_recv_times_out(echo_server):
    with transport.connect(echo_server.url("/echo"), proxy=False) as conn:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.recv(timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["binary", "text"])
def test_256_mib_message_both_ways_intact(echo_server, kind):
    size = 256 * MiB
    payload = pattern(size)
    with transport.connect(echo_server.url("/echo"), proxy=False) as conn:
        if kind == "binary":
            conn.send_binary(payload)
        else:
            conn.send_text(payload.translate(bytes(range(128)) * 2).decode("ascii"))
        is_binary, data = conn.recv(timeout=120)
        assert is_binary == (kind == "binary")
        received = data if is_binary else data.encode("ascii")
        expected = payload if is_binary else payload.translate(bytes(range(128)) * 2)
        assert len(received) == size
        assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()


def test_four_threads_sending_concurrently(echo_server):
    """Messages of four threads never interleave: each arrives whole, and each thread's
    messages arrive in the order it sent them."""
    messages_per_thread = 40
    with transport.connect(echo_server.url("/echo"), proxy=False) as conn:
        errors: list[BaseException] = []

        def sender(thread_index: int) -> None:
            try:
                for sequence in range(messages_per_thread):
                    size = 1000 + (sequence * 104729 + thread_index * 7919) % (700 * 1024)
                    body = pattern(size, seed=thread_index + sequence)
                    header = struct.pack("<II", thread_index, sequence)
                    if sequence % 5 == 4:
                        conn.send_text(f"{thread_index} {sequence} " + "x" * (size % 5000))
                    else:
                        conn.send_binary(header + body)
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        next_sequence = [0, 0, 0, 0]
        for _ in range(4 * messages_per_thread):
            is_binary, data = conn.recv(timeout=30)
            if is_binary:
                thread_index, sequence = struct.unpack_from("<II", data)
                size = 1000 + (sequence * 104729 + thread_index * 7919) % (700 * 1024)
                assert bytes(data[8:]) == pattern(size, seed=thread_index + sequence)
            else:
                thread_index, sequence, filler = data.split(" ")
                thread_index, sequence = int(thread_index), int(sequence)
                size = 1000 + (sequence * 104729 + thread_index * 7919) % (700 * 1024)
                assert filler == "x" * (size % 5000)
            assert sequence == next_sequence[thread_index]
            next_sequence[thread_index] += 1
        for thread in threads:
            thread.join(10)
        assert not errors
        assert next_sequence == [messages_per_thread] * 4


@pytest.mark.slow
def test_gil_released_while_a_256_mib_send_is_in_flight(ws_server):
    server = ws_server()
    payload = pattern(256 * MiB)
    counter = [0]
    sending = threading.Event()
    done = threading.Event()

    def count() -> None:
        sending.wait()
        while not done.is_set():
            counter[0] += 1

    with transport.connect(server.url("/hash"), proxy=False) as conn:
        thread = threading.Thread(target=count)
        thread.start()
        sending.set()
        started = time.monotonic()
        counted_before = counter[0]
        conn.send_binary(payload)
        counted_during = counter[0] - counted_before
        elapsed = time.monotonic() - started
        done.set()
        thread.join(5)
        assert conn.recv(timeout=60) == (
            False,
            f"{len(payload)} {hashlib.sha256(payload).hexdigest()}",
        )
    # Holding the GIL for the whole send would leave the counter at (nearly) zero.
    assert elapsed > 0.05
    assert counted_during > 10_000, (counted_during, elapsed)


def test_dead_peer_is_detected_by_ping_timeout(ws_server):
    server = ws_server()
    conn = transport.connect(server.url("/echo"), proxy=False, ping_interval=1, ping_timeout=1)
    conn.send_text("alive")
    assert conn.recv(timeout=5) == (False, "alive")
    server.pause()  # the server's process stops: no pong will ever come
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as raised:
            conn.recv(timeout=15)
        detected_after = time.monotonic() - started
    finally:
        server.resume()
    # Pings after 1 s of silence, hang-up 1 s later; lws checks once a second.
    assert detected_after < 5, detected_after
    assert raised.value.code == 1006
    assert conn.close_code == 1006
    assert "ping" in conn.close_reason


def test_a_live_idle_peer_is_kept(echo_server):
    conn = transport.connect(echo_server.url("/echo"), proxy=False, ping_interval=1, ping_timeout=1)
    time.sleep(3.5)  # several ping/pong rounds with no traffic
    assert conn.open
    conn.send_text("still here")
    assert conn.recv(timeout=5) == (False, "still here")
    conn.close()


def test_close_codes_both_ways(ws_server):
    server = ws_server()
    conn = transport.connect(server.url("/close/4001"), proxy=False)
    with pytest.raises(ConnectionClosed) as raised:
        conn.recv(timeout=5)
    assert (raised.value.code, raised.value.reason) == (4001, "server says bye")
    assert (conn.close_code, conn.close_reason) == (4001, "server says bye")
    with pytest.raises(ConnectionClosed):
        conn.send_text("too late")

    conn = transport.connect(server.url("/echo"), proxy=False)
    conn.close(4321, "client done")
    assert (conn.close_code, conn.close_reason) == (4321, "client done")
    lines = {server.next_close(), server.next_close()}
    assert "closed /echo 4321 client done" in lines
    with pytest.raises(ValueError):
        conn.close(1005)
    with pytest.raises(ValueError):
        conn.close(1000, "x" * 124)


def test_too_big_message_closes_with_1009(echo_server):
    conn = transport.connect(echo_server.url("/echo"), proxy=False, max_message_size=1000)
    conn.send_binary(bytes(999))
    assert len(conn.recv(timeout=5)[1]) == 999
    conn.send_binary(bytes(1001))  # comes back too big
    with pytest.raises(ConnectionClosed) as raised:
        conn.recv(timeout=5)
    assert raised.value.code == 1009
    assert echo_server.next_close() == "closed /echo 1009 message larger than 1000 bytes"


def test_send_chunked_frames_parse_per_the_spec(echo_server):
    payload = pattern(1_000_003)
    with transport.connect(echo_server.url("/echo"), proxy=False) as conn:
        count = conn.send_chunked(
            transport.FRAME_KIND_WEIGHTS, 2**63 + 5, "alice", ["host", "bob"], payload, 300_000
        )
        header_size = 36 + len("alice") + 1 + len("host") + 1 + len("bob")
        per_chunk = 300_000 - header_size
        assert count == -(-len(payload) // per_chunk)
        rebuilt = bytearray()
        for index in range(count):
            is_binary, data = conn.recv(timeout=10)
            assert is_binary and len(data) <= 300_000
            # Read the header by the layout in docs/protocol.md, not with our own parser.
            magic, version, kind, size, transfer, chunk, chunks, total, slen, rcount, reserved = (
                struct.unpack_from("<4sBBHQIIQBBH", data)
            )
            assert (magic, version, kind, size) == (b"SSBF", 1, 1, header_size)
            assert (transfer, chunk, chunks, total) == (2**63 + 5, index, count, len(payload))
            assert (slen, rcount, reserved) == (5, 2, 0)
            assert bytes(data[36:header_size]) == b"alice\x04host\x03bob"
            parsed = transport.parse_frame_header(data)
            assert parsed.sender == "alice" and parsed.recipients == ("host", "bob")
            assert parsed.chunk_index == index and parsed.header_size == header_size
            rebuilt += data[header_size:]
        assert rebuilt == payload
        # An empty payload is one chunk that carries only the header.
        assert conn.send_chunked(transport.FRAME_KIND_OTHER, 1, "a", [], b"") == 1
        _, data = conn.recv(timeout=5)
        assert len(data) == 37 and transport.parse_frame_header(data).total_size == 0


def test_send_chunked_rejects_bad_arguments(echo_server):
    with transport.connect(echo_server.url("/echo"), proxy=False) as conn:
        with pytest.raises(ValueError, match="kind"):
            conn.send_chunked(9, 1, "a", [], b"x")
        with pytest.raises(ValueError, match="sender"):
            conn.send_chunked(1, 1, "", [], b"x")
        with pytest.raises(ValueError, match="sender"):
            conn.send_chunked(1, 1, "s" * 129, [], b"x")
        with pytest.raises(TypeError, match="recipients"):
            conn.send_chunked(1, 1, "a", "bob", b"x")
        with pytest.raises(ValueError, match="chunk_size"):
            conn.send_chunked(1, 1, "a", [], b"x", 30)
        assert conn.open  # nothing was sent


def test_parse_frame_header_bad_input():
    assert transport.parse_frame_header(b"not ours") is None
    with pytest.raises(ValueError, match="truncated"):
        transport.parse_frame_header(b"SSBF\x01")
    good = bytes.fromhex(
        "535342460101290007000000000000000000000001000000050000000000000005000000616c696365"
    )
    assert transport.parse_frame_header(good).sender == "alice"
    with pytest.raises(ValueError, match="malformed"):
        transport.parse_frame_header(good[:5] + b"\x09" + good[6:])  # unknown kind


def test_handshake_headers_are_sent(ws_server):
    server = ws_server()
    with transport.connect(
        server.url("/headers"),
        proxy=False,
        headers={"Authorization": "Bearer s3cret", "X-Client": "tests"},
    ) as conn:
        received = json.loads(conn.recv(timeout=5)[1])
    assert received["Authorization"] == "Bearer s3cret"
    assert received["X-Client"] == "tests"
    assert received["Host"] == f"127.0.0.1:{server.port}"
    with pytest.raises(ValueError):
        transport.connect(server.url("/headers"), proxy=False, headers={"Bad Name": "x"})
    with pytest.raises(ValueError):
        transport.connect(server.url("/headers"), proxy=False, headers={"X": "a\r\nB: c"})


def test_connect_failures_are_clear(echo_server):
    with pytest.raises(ValueError, match="ws://"):
        transport.connect("http://127.0.0.1:1/", proxy=False)
    with pytest.raises(ValueError):
        transport.connect("ws://127.0.0.1:99999/", proxy=False)
    with pytest.raises(ConnectionError):
        transport.connect("ws://127.0.0.1:1/", proxy=False, connect_timeout=5)
    with pytest.raises(ConnectionError):  # TLS to a plain-text server: the handshake fails
        transport.connect(echo_server.url("/echo").replace("ws://", "wss://"), proxy=False)


def test_tls_with_a_test_certificate(ws_server, tmp_path):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("relay.test")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    certificate.cert_chain_pems[0].write_to_path(cert_file)
    certificate.private_key_pem.write_to_path(key_file)
    authority.cert_pem.write_to_path(ca_file)
    server = ws_server("--certfile", str(cert_file), "--keyfile", str(key_file))
    url = server.url("/echo", scheme="wss")

    with transport.connect(
        url, proxy=False, ca_file=str(ca_file), server_hostname="relay.test"
    ) as conn:
        conn.send_binary(pattern(5 * MiB))
        assert bytes(conn.recv(timeout=10)[1]) == pattern(5 * MiB)
    # Not signed by a CA in the system store:
    with pytest.raises(ConnectionError):
        transport.connect(url, proxy=False, server_hostname="relay.test")
    # Signed, but for another name:
    with pytest.raises(ConnectionError):
        transport.connect(url, proxy=False, ca_file=str(ca_file), server_hostname="other.test")
    with pytest.raises(FileNotFoundError):
        transport.connect(url, proxy=False, ca_file=str(tmp_path / "missing.pem"))


def test_http_proxy_from_the_environment(echo_server, connect_proxy, monkeypatch):
    proxy_port, proxy_log = connect_proxy
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy_port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    url = echo_server.url("/echo")
    assert transport.proxy_for(url) == f"127.0.0.1:{proxy_port}"
    with transport.connect(url) as conn:
        conn.send_text("through the proxy")
        assert conn.recv(timeout=5) == (False, "through the proxy")
    deadline = time.monotonic() + 5
    while f"CONNECT 127.0.0.1:{echo_server.port}" not in proxy_log.read_text():
        assert time.monotonic() < deadline, proxy_log.read_text()
        time.sleep(0.1)

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert transport.proxy_for(url) is None
    monkeypatch.setenv("https_proxy", "https://proxy.example:443")
    monkeypatch.delenv("no_proxy")
    with pytest.raises(ValueError, match="http://"):
        transport.proxy_for(url.replace("ws://", "wss://"))


def test_dispatcher_delivers_on_its_own_thread(echo_server):
    conn = transport.connect(echo_server.url("/echo"), proxy=False)
    received: list[tuple[bool, object, str]] = []
    closed = threading.Event()
    close_info: list[tuple[int | None, str | None]] = []

    def on_message(is_binary, data):
        received.append(
            (is_binary, bytes(data) if is_binary else data, threading.current_thread().name)
        )

    def on_close(code, reason):
        close_info.append((code, reason))
        closed.set()

    dispatcher = transport.MessageDispatcher(conn, on_message, on_close, name="dispatch-test")
    conn.send_text("one")
    conn.send_binary(b"two")
    deadline = time.monotonic() + 5
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received == [(False, "one", "dispatch-test"), (True, b"two", "dispatch-test")]
    conn.close(1000, "bye")
    assert closed.wait(5)
    assert close_info == [(1000, "bye")]
    dispatcher.join(5)
    assert not dispatcher.running
