"""What an onlooker gets of a room's weights: a `websockets` member that joined by the routing
code alone and keeps all it receives (`Probe`), and a count of the plaintext pieces of a model
that turn up in some bytes (`leaked_windows`).
"""

from __future__ import annotations

import contextlib
import json
import threading

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect


class Probe:
    """A `websockets` member that joined by the routing code and keeps all it receives. It
    announces `frame_header` (member_features), as our members do, so the relay hands it the
    framed binaries it hands them."""

    def __init__(self, url: str, routing: str, timeout: float) -> None:
        self.timeout = timeout
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(ws_connect(url, max_size=None, open_timeout=timeout))
        payload = {
            "room_code": routing,
            "user_id": "probe",
            "display_name": "Probe",
            "features": ["frame_header"],
        }
        self.ws.send(json.dumps({"type": "join_room", "payload": payload}))
        joined = json.loads(self.ws.recv(timeout=timeout))
        assert joined["type"] == "room_joined", joined
        self.received: list[bytes | str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                self.received.append(self.ws.recv())
        except (ConnectionClosed, OSError):
            pass

    def binary(self) -> bytes:
        return b"".join(m for m in self.received if isinstance(m, bytes))

    def close(self) -> None:
        self.stack.close()
        self.thread.join(self.timeout)


def leaked_windows(received: bytes, arrays: list[np.ndarray]) -> int:
    """How many 128-byte aligned pieces of the arrays' float32 or float16 bytes appear in
    `received`. Any 256-byte window of the plaintext contains one such piece, so 0 means no
    256-byte window of the model travelled in the clear."""
    found = 0
    for array in arrays:
        for raw in (array.astype(np.float32).tobytes(), array.astype(np.float16).tobytes()):
            for offset in range(0, len(raw) - 128 + 1, 128):
                found += received.find(raw[offset : offset + 128]) >= 0
    return found
