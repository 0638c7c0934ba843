"""RFC 6455 details of both WebSocket engines of the transport, against the independent
`websockets` server of ws_server.py: fragmented messages, server pings, invalid text, a refused
handshake; and, against a bare socket server in this file, reading while a send is blocked.
Every test runs on both engines (the `engine` fixture of conftest.py): our own WebSocket client
over a raw socket, and libwebsockets' ws client."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import queue
import re
import socket
import ssl
import struct
import termios
import threading
import time

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


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_blocked_send_does_not_stop_receiving(engine, scheme, tmp_path):
    """A peer that stops reading while it talks to us (the relay forwarding to a client that is
    itself sending) must still be heard: with the socket's send buffer full and part of the
    output unsent, the client keeps reading. The raw engine once left its writes to lws, which
    sends at most tx_packet_size bytes per call (one TLS-encrypted fragment is 20 bytes more),
    keeps the rest, and reads nothing until that rest is sent: with wss:// it then stopped
    hearing a peer that did not read, and spun on POLLIN meanwhile."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: queue.Queue[socket.socket] = queue.Queue()
    options = {"proxy": False}
    tls = None
    if scheme == "wss":
        trustme = pytest.importorskip("trustme")
        authority = trustme.CA()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        authority.issue_cert("relay.test").configure_cert(tls)
        authority.cert_pem.write_to_path(tmp_path / "ca.pem")
        options |= {"ca_file": str(tmp_path / "ca.pem"), "server_hostname": "relay.test"}

    def serve() -> None:  # the opening handshake (RFC 6455 4.2.2), then silence
        peer, _ = listener.accept()
        if tls:
            peer = tls.wrap_socket(peer, server_side=True)
        request = b""
        while b"\r\n\r\n" not in request:
            request += peer.recv(4096)
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.IGNORECASE).group(1)
        digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        peer.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + base64.b64encode(digest)
            + b"\r\n\r\n"
        )
        accepted.put(peer)

    threading.Thread(target=serve, daemon=True).start()
    url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/"
    with listener, transport.connect(url, **options) as conn:
        peer = accepted.get(timeout=10)

        def unread() -> int:
            return struct.unpack("i", fcntl.ioctl(peer.fileno(), termios.FIONREAD, b"\0" * 4))[0]

        def send_until_closed() -> None:
            with pytest.raises(transport.ConnectionClosed):
                conn.send_binary(bytes(64 * 1024 * 1024))

        sender = threading.Thread(target=send_until_closed)
        sender.start()
        # The send is blocked once what the peer has not read stops growing.
        deadline, last, unchanged = time.monotonic() + 30, -1, 0
        while unchanged < 5:
            assert time.monotonic() < deadline, "the peer's receive queue never filled"
            now = unread()
            unchanged = unchanged + 1 if now == last and now > 0 else 0
            last = now
            time.sleep(0.05)
        assert sender.is_alive(), "64 MiB went out although the peer read nothing"
        text = b"while you send"
        peer.sendall(bytes([0x81, len(text)]) + text)
        assert conn.recv(timeout=10) == (False, text.decode())
        peer.close()
        sender.join(timeout=20)
        assert not sender.is_alive()
