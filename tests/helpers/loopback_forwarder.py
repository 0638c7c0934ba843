"""A loopback TCP forwarder in front of the relay that keeps every byte it carries, and can cut
the link as a dropped network would.

Each accepted connection gets its own connection to the relay and two pump threads. What the
relay sends a client (server-to-client WebSocket frames are not masked) is what the relay
forwards, byte for byte; what a client sends the relay is masked, and `to_relay_payloads`
unmasks it. `cut()` closes both sockets of every connection and refuses new ones until
`restore()`, so a client sees its link drop and retries.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class LoopbackForwarder:
    def __init__(self, relay_port: int) -> None:
        self.relay_port = relay_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.received: list[bytearray] = []  # relay -> client, one per connection
        self.sent: list[bytearray] = []  # client -> relay, masked, one per connection
        self.sockets: list[socket.socket] = []
        self.shut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.shut:
                client.close()  # the link is down: the client retries with backoff
                continue
            upstream = socket.create_connection(("127.0.0.1", self.relay_port))
            received, sent = bytearray(), bytearray()
            with self.lock:
                self.received.append(received)
                self.sent.append(sent)
                self.sockets += [client, upstream]
            for source, target, record in ((client, upstream, sent), (upstream, client, received)):
                threading.Thread(
                    target=self._pump, args=(source, target, record), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bytearray) -> None:
        try:
            while data := source.recv(1 << 20):
                with self.lock:
                    record += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def everything(self) -> bytes:
        """All the relay sent to every client."""
        with self.lock:
            return b"".join(bytes(r) for r in self.received)

    def to_relay_payloads(self) -> list[bytes]:
        """Every WebSocket frame payload the clients sent, unmasked (after each HTTP upgrade
        request)."""
        payloads = []
        with self.lock:
            streams = [bytes(s) for s in self.sent]
        for stream in streams:
            at = stream.find(b"\r\n\r\n") + 4
            while at + 2 <= len(stream):
                length, at = stream[at + 1] & 0x7F, at + 2
                if length == 126:
                    length, at = int.from_bytes(stream[at : at + 2], "big"), at + 2
                elif length == 127:
                    length, at = int.from_bytes(stream[at : at + 8], "big"), at + 8
                mask, at = stream[at : at + 4], at + 4
                body = stream[at : at + length]
                payloads.append(bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
                at += length
        return payloads

    def cut(self) -> None:
        """Drops every connection; new ones are refused until `restore()`."""
        self.shut = True
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pumps (close alone would not)
            sock.close()

    def restore(self) -> None:
        self.shut = False

    def close(self) -> None:
        self.listener.close()
        self.cut()
