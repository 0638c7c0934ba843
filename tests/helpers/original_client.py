"""An emulator of the ORIGINAL app's network client, for mixed-room tests.

The repository keeps none of the original app's code. This emulator is written only from:

* docs/protocol.md part 1 (the v1 relay messages: create_room/join_room, room_created,
  room_joined, user_joined, user_left, forwarding with sender_id/sender_name);
* /work/shared/PROTOCOL.md section 2 (the original client's messages: `weights_push`
  {user_id, epoch, loss, num_samples} + ONE binary; `global_model` {aggregation_round,
  contributor_count} + ONE binary; `chunk_start` {transfer_id, total_chunks, total_size,
  original_type, epoch, loss, num_samples, user_id, display_name} + binaries of at most 16 MiB
  + `chunk_end` {transfer_id}, used past 16 MiB; `request_model` {user_id};
  `session_info` {architecture}, sent by the host to joiners; `training_data` {user_id,
  display_name, crop_size, slice_index, chunk_index, total_chunks, timestamp} + TWO PNG
  binaries; weights as `gzip(torch.save(float16 state dict))`);
* the original client being built on the `websockets` library, as this one is.

Like the original it knows no `relay` field, no frame header, no directed delivery: it pairs
each binary with the announcement before it. Unlike the original it checks what it gets:
every binary must be gzip or PNG (`violations` lists any other, e.g. our `SSBF` frames), and
it reads weights with `torch.load(weights_only=True)` (it only ever reads our output).
It runs its own asyncio loop on a thread, so synchronous tests drive it next to SyncClients.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime

import numpy as np
import torch
from websockets.asyncio.client import connect

GZIP_MAGIC = b"\x1f\x8b"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHUNK_SIZE = 16 * 1024 * 1024  # the original client's chunk size (the Worker's 32 MiB / 2)


def original_weights_bytes(state: dict) -> bytes:
    """The original payload: gzip of torch.save of the state dict, floats as float16."""
    half = {}
    for name, value in state.items():
        tensor = torch.as_tensor(np.asarray(value)) if not torch.is_tensor(value) else value
        half[name] = tensor.half() if tensor.is_floating_point() else tensor
    buffer = io.BytesIO()
    torch.save(half, buffer)
    return gzip.compress(buffer.getvalue())


def read_original_weights(data: bytes) -> dict:
    state = torch.load(io.BytesIO(gzip.decompress(data)), weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


class OriginalClient:
    """One original-app member. Records what it receives; `wait_for` blocks on it."""

    def __init__(self, url: str, name: str, *, architecture: str = "unet"):
        self.url = url if url.rstrip("/").endswith("/ws") else url.rstrip("/") + "/ws"
        self.user_id = "orig-" + secrets.token_hex(4)
        self.display_name = name
        self.architecture = architecture
        self.is_host = False
        self.room_code: str | None = None
        self.users: list[dict] = []
        self.global_model: dict | None = None  # the host's current model (host role)
        self.aggregation_round = 0
        # What arrived, for the test to check.
        self.pushes: list[tuple[str, dict, dict]] = []  # (sender_id, weights, announcement)
        self.global_models: list[tuple[str, dict, dict]] = []
        self.crops: list[tuple[str, bytes, bytes, dict]] = []
        self.texts: list[dict] = []
        self.binaries_seen = 0
        self.violations: list[str] = []
        self._pending: list[dict] = []  # announcements waiting for their binaries
        self._condition = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._ws = None
        self._reader = None

    # --- driving it from a test -----------------------------------------------------------

    def _run(self, coroutine, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def create_room(self) -> str:
        self.is_host = True
        self._run(self._open({"user_id": self.user_id, "display_name": self.display_name}))
        return self.room_code

    def join_room(self, code: str) -> None:
        payload = {"room_code": code, "user_id": self.user_id, "display_name": self.display_name}
        self._run(self._open(payload))

    def push(self, state: dict, epoch: int = 1, loss: float = 0.5, num_samples: int = 1) -> None:
        data = original_weights_bytes(state)
        meta = {"epoch": epoch, "loss": loss, "num_samples": num_samples}
        self._run(self._send_weights("weights_push", {"user_id": self.user_id, **meta}, data))

    def broadcast_global_model(self, state: dict, contributors: int) -> None:
        """Host: the new global model to everyone, as the original host does after a round."""
        self.global_model = state
        self.aggregation_round += 1
        meta = {"aggregation_round": self.aggregation_round, "contributor_count": contributors}
        data = original_weights_bytes(state)
        self._run(self._send_weights("global_model", meta, data))

    def send_crop(self, image_png: bytes, mask_png: bytes, slice_index: int = 0) -> None:
        payload = {
            "user_id": self.user_id,
            "display_name": self.display_name,
            "crop_size": 8,
            "slice_index": slice_index,
            "chunk_index": 0,
            "total_chunks": 1,
            "timestamp": int(time.time() * 1000),
        }
        self._run(self._send_crop(payload, image_png, mask_png))

    def request_model(self) -> None:
        self._run(self._send_json("request_model", {"user_id": self.user_id}))

    def send_raw_push(self, data: bytes, num_samples: int = 1) -> None:
        """A weights_push with arbitrary bytes as its binary (a hostile "original" member)."""
        meta = {"user_id": self.user_id, "epoch": 1, "loss": 0.0, "num_samples": num_samples}
        self._run(self._send_weights("weights_push", meta, data))

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        with self._condition:
            if not self._condition.wait_for(condition, timeout):
                seen = [m["type"] for m in self.texts]
                raise AssertionError(
                    f"{self.display_name}: condition not met in {timeout} s; texts {seen}, "
                    f"{self.binaries_seen} binaries, violations {self.violations}"
                )

    def close(self) -> None:
        if self._ws is not None:
            self._run(self._close(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- the wire, as the original client does it -----------------------------------------

    async def _open(self, payload: dict) -> None:
        self._ws = await connect(self.url, max_size=None, compression=None)
        kind = "join_room" if "room_code" in payload else "create_room"
        await self._ws.send(json.dumps({"type": kind, "payload": payload}))
        while True:
            message = json.loads(await self._ws.recv())
            if message["type"] in ("room_created", "room_joined"):
                break
            if message["type"] == "error":
                raise AssertionError(f"relay refused {kind}: {message['payload']}")
        self.room_code = message["payload"]["room_code"]
        self.users = message["payload"].get("users", [])
        self._reader = asyncio.ensure_future(self._read())

    async def _send_json(self, kind: str, payload: dict) -> None:
        message = {"type": kind, "payload": payload, "timestamp": datetime.now().isoformat()}
        await self._ws.send(json.dumps(message))

    async def _send_weights(self, kind: str, meta: dict, data: bytes) -> None:
        if len(data) <= CHUNK_SIZE:
            await self._send_json(kind, meta)
            await self._ws.send(data)
            return
        transfer_id = secrets.token_hex(8)
        chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
        start = {
            "transfer_id": transfer_id,
            "total_chunks": len(chunks),
            "total_size": len(data),
            "original_type": kind,
            "user_id": self.user_id,
            "display_name": self.display_name,
            **meta,
        }
        await self._send_json("chunk_start", start)
        for chunk in chunks:
            await self._ws.send(chunk)
        await self._send_json("chunk_end", {"transfer_id": transfer_id})

    async def _send_crop(self, payload: dict, image_png: bytes, mask_png: bytes) -> None:
        await self._send_json("training_data", payload)
        await self._ws.send(image_png)
        await self._ws.send(mask_png)

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self._ws.close()

    async def _read(self) -> None:
        try:
            async for data in self._ws:
                if isinstance(data, bytes):
                    await self._on_binary(data)
                else:
                    await self._on_text(json.loads(data))
        except Exception as exc:  # noqa: BLE001 - recorded for the test, never swallowed
            if not isinstance(exc, asyncio.CancelledError):
                with self._condition:
                    self.violations.append(f"reader stopped: {exc!r}")
                    self._condition.notify_all()

    async def _on_text(self, message: dict) -> None:
        kind, payload = message["type"], message.get("payload", {})
        with self._condition:
            self.texts.append(message)
            if "users" in payload:
                self.users = payload["users"]
            if kind in ("weights_push", "global_model"):
                self._pending.append({**message, "expect": 1, "parts": []})
            elif kind == "chunk_start":
                self._pending.append({**message, "expect": payload["total_chunks"], "parts": []})
            elif kind == "training_data":
                self._pending.append({**message, "expect": 2, "parts": []})
            self._condition.notify_all()
        if kind == "user_joined" and self.is_host:
            await self._send_json("session_info", {"architecture": self.architecture})
        elif kind == "request_model" and self.is_host and self.global_model is not None:
            meta = {
                "aggregation_round": self.aggregation_round,
                "contributor_count": 1,
            }
            await self._send_weights(
                "global_model", meta, original_weights_bytes(self.global_model)
            )

    async def _on_binary(self, data: bytes) -> None:
        with self._condition:
            self.binaries_seen += 1
            # A transfer's first binary is a whole gzip or PNG; later chunks of a chunked
            # transfer continue the gzip stream, and still must not be our frames.
            continuing = bool(self._pending and self._pending[0]["parts"])
            starts_right = data.startswith(GZIP_MAGIC) or data.startswith(PNG_MAGIC)
            if data.startswith(b"SSBF") or not (starts_right or continuing):
                self.violations.append(f"binary #{self.binaries_seen} starts with {data[:8]!r}")
                self._condition.notify_all()
                return
            if not self._pending:
                self.violations.append("a binary without an announcement")
                self._condition.notify_all()
                return
            announcement = self._pending[0]
            announcement["parts"].append(data)
            if len(announcement["parts"]) < announcement["expect"]:
                return
            self._pending.pop(0)
            self._complete(announcement)
            self._condition.notify_all()

    def _complete(self, announcement: dict) -> None:
        kind, payload = announcement["type"], announcement["payload"]
        sender = announcement.get("sender_id", payload.get("user_id", ""))
        if kind == "training_data":
            image, mask = announcement["parts"]
            self.crops.append((sender, image, mask, payload))
            return
        if kind == "chunk_start":
            kind = payload["original_type"]
        weights = read_original_weights(b"".join(announcement["parts"]))
        if kind == "weights_push":
            self.pushes.append((sender, weights, payload))
        else:
            self.global_models.append((sender, weights, payload))
