"""RFC 6455 details of both WebSocket engines of the transport, against the independent
`websockets` server of ws_server.py: fragmented messages, server pings, invalid text, a refused
handshake. Every test runs on both engines (the `engine` fixture of conftest.py): our own
WebSocket client over a raw socket, and libwebsockets' ws client."""

from __future__ import annotations

import threading

import pytest

from segmentation_suite.network import transport

FRAGMENTED_TEXT = "fragmented text: é ✓ 𝄞" * 1000


def fragmented_payload() -> bytes:
    return bytes(range(256)) * (3 * 4096)


@pytest.fixture
def server(ws_server):
    return ws_server()


def test_fragmented_messages_are_assembled_and_echoed(server, engine):
    with transport.connect(server.url("/fragmented"), proxy=False) as conn:
        is_binary, data = conn.recv(timeout=10)
        assert is_binary and bytes(data) == fragmented_payload()
        assert conn.recv(timeout=10) == (False, FRAGMENTED_TEXT)
        # Our own sends, fragmented per 256 KiB, come back whole.
        big = bytes(reversed(fragmented_payload()))
        conn.send_binary(big)
        is_binary, data = conn.recv(timeout=10)
        assert is_binary and bytes(data) == big
        conn.send_text(FRAGMENTED_TEXT)
        assert conn.recv(timeout=10) == (False, FRAGMENTED_TEXT)
    assert server.next_close() == "closed /fragmented 1000 "


def test_server_ping_is_answered(server, engine):
    with transport.connect(server.url("/ping"), proxy=False) as conn:
        assert conn.recv(timeout=15) == (False, "pong received")


def test_text_that_is_not_utf8_closes_with_1007(server, engine):
    conn = transport.connect(server.url("/bad-utf8"), proxy=False)
    with pytest.raises(transport.ConnectionClosed) as raised:
        conn.recv(timeout=10)
    if engine == "raw":
        assert raised.value.code == 1007
        assert server.next_close() == "closed /bad-utf8 1007 text is not UTF-8"
    else:  # lws 4.1 drops the connection without a Close frame
        assert raised.value.code in (1006, 1007)


def test_refused_handshake_is_a_clear_error(server, engine):
    with pytest.raises(ConnectionError) as raised:
        transport.connect(server.url("/reject"), proxy=False, connect_timeout=10)
    if engine == "raw":
        assert "HTTP 403" in str(raised.value)


def test_closed_connection_reports_the_servers_code(server, engine):
    conn = transport.connect(server.url("/close/4008"), proxy=False)
    with pytest.raises(transport.ConnectionClosed) as raised:
        conn.recv(timeout=10)
    assert (raised.value.code, raised.value.reason) == (4008, "server says bye")
    assert server.next_close() == "closed /close/4008 4008 server says bye"


def test_full_receive_queue_pushes_back_on_the_sender(server, engine):
    """With nothing read, the client stops reading the socket once receive_queue_size is
    queued, so the echo server (and then our own sender) stalls instead of memory growing; all
    messages still arrive intact and in order once recv() catches up."""
    count, size = 64, 1024 * 1024
    conn = transport.connect(server.url("/echo"), proxy=False, receive_queue_size=size)
    messages = [bytes([i]) * size for i in range(count)]
    sender = threading.Thread(target=lambda: [conn.send_binary(m) for m in messages])
    sender.start()
    sender.join(timeout=1.5)
    assert sender.is_alive(), "64 MiB went out although nothing was read: no backpressure"
    for expected in messages:
        is_binary, data = conn.recv(timeout=20)
        assert is_binary and data == expected
    sender.join(timeout=20)
    assert not sender.is_alive()
    conn.close()
