"""A WebSocket client on a plain blocking socket, for what an asyncio client cannot do.

The framing comes from the `websockets` library's sans-I/O `ClientProtocol`; this module only
moves bytes. Tests use it for a receiver that stops reading (the socket's buffers fill up and
stay full) and for frames that a well-behaved client would refuse to send (text that is not
UTF-8).
"""

from __future__ import annotations

import json
import select
import socket
import time

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from helpers.relay_process import SLOWDOWN

TIMEOUT = 5.0 * SLOWDOWN


class BlockingClient:
    def __init__(
        self,
        port: int,
        path: str = "/ws",
        receive_buffer: int | None = None,
        timeout: float = TIMEOUT,
    ):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Set before connecting so that the TCP window is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{path}"), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self._pending: list[Frame] = []
        deadline = time.monotonic() + timeout
        response = None
        while response is None:
            self._read_some(deadline)
            for event in self.protocol.events_received():
                if isinstance(event, Response):
                    response = event
                else:
                    self._pending.append(event)
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def _read_some(self, deadline: float) -> bool:
        """Feeds one read to the protocol; returns False at end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the relay in time")
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            raise TimeoutError("no data from the relay in time")
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.protocol.receive_eof()
            return False
        self.protocol.receive_data(data)
        self._flush()  # answers pings and the closing handshake
        return True

    def send_text(self, data: bytes) -> None:
        """Sends `data` as one text frame, as is: it need not be UTF-8."""
        self.protocol.send_text(data)
        self._flush()

    def send_json(self, message_type: str, payload: dict | None = None) -> None:
        message = {"type": message_type, "payload": payload or {}}
        self.send_text(json.dumps(message).encode())

    def send_binary(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        self._flush()

    def next_frame(self, timeout: float = TIMEOUT) -> Frame | None:
        """The next data or close frame, or None at end of stream."""
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                frame = self._pending.pop(0)
                if frame.opcode in (Opcode.CONT, Opcode.TEXT, Opcode.BINARY, Opcode.CLOSE):
                    return frame
            if not self._read_some(deadline):
                self._pending.extend(self.protocol.events_received())
                if not self._pending:
                    return None
                continue
            self._pending.extend(self.protocol.events_received())

    def recv_json(self, timeout: float = TIMEOUT) -> dict:
        frame = self.next_frame(timeout)
        assert frame is not None and frame.opcode == Opcode.TEXT, f"expected text, got {frame}"
        return json.loads(frame.data)

    def read_until_closed(self, timeout: float = TIMEOUT) -> tuple[int | None, int]:
        """Reads everything until the relay ends the connection.

        Returns (close code from the relay's Close frame or None if there was none, number of
        data frames read on the way).
        """
        deadline = time.monotonic() + timeout
        frames = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the relay did not close the connection in time")
            frame = self.next_frame(remaining)
            if frame is None:
                return None, frames
            if frame.opcode == Opcode.CLOSE:
                return Close.parse(frame.data).code, frames
            frames += 1

    def close(self) -> None:
        self.sock.close()
