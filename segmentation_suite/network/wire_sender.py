"""The bytes of what a session sends, run on the driver's sender thread (client.py).

The session (room_session.py) decides what goes to whom; this part turns it into frames on the
connection: a transfer's announcement and framed chunks (sealed in a private room), the
original app's format for original members (mixed_room.py plans who gets which), a crop's two
PNGs, and a whole global model. A transfer cut off by a dropped connection waits here for the
session to be back with its recipients and goes again under the same transfer id.

It reads the driver's connection and the session through the callables and objects it is
given, and waits on the driver's condition, which is notified after every event the session
takes.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import legacy_format, transport
from .codec import decode_weights, serialize_weights
from .protocol import (
    MAX_CHUNK_SIZE,
    Feature,
    FrameKind,
    Message,
    chunk_data,
    create_chunk_end_message,
    create_chunk_start_message,
    create_global_model_message,
)
from .room_session import FRAMED_FIELD, RoomSession

log = logging.getLogger(__name__)

#: How many times a push or global model cut off by a dropped connection is sent again (under
#: its transfer id, so receivers take it once) after the session resumed.
TRANSFER_RESENDS = 3

#: How long an interrupted transfer waits for the session, and for its recipients, to come
#: back before its Future fails.
RESEND_WAIT_SECONDS = 120.0

#: A transfer the connection took whole this shortly before it was lost may still have sat
#: unread in a relay that died (a throttled sender's tail waits there while a receiver is
#: slow), so it goes again after the resume; an older one reached the relay.
UNCONFIRMED_TRANSFER_SECONDS = 60.0


@dataclass
class SentTransfer:
    """A framed transfer this client sends, kept to send it again after a drop."""

    announcement: Message
    kind: int
    data: memoryview
    to: list[str] | None
    transfer_id: int
    connection: Any = None  # the connection it last went out on
    sent_at: float = 0.0  # time.monotonic() when that connection took its last byte


class WireSender:
    """Sends what the session asks, frame by frame, on one connection at a time."""

    def __init__(
        self,
        session: RoomSession,
        connection: Callable[[], transport.Connection | None],
        connected: Callable[[], bool],
        changed: threading.Condition,
    ):
        self._session = session
        self._connection = connection  # the driver's current connection
        self._connected = connected  # in the room with an open connection
        self._changed = changed  # notified after every event the session took
        self._transfer_ids = itertools.count(secrets.randbits(40))

    def live_connection(self) -> transport.Connection:
        connection = self._connection()
        if connection is None:
            raise transport.ConnectionClosed("not connected")
        return connection

    def send_json(self, message: Message, to: list[str] | None = None) -> None:
        if to is not None:
            message.to = list(to)
        self.live_connection().send_text(message.to_json())

    def _chunk_size(self) -> int:
        capabilities = self._session.capabilities
        if capabilities is not None:
            return capabilities.chunk_size
        return MAX_CHUNK_SIZE

    def send_mixed_transfer(
        self, announcement: Message, kind: int, data: memoryview, to: list[str] | None
    ) -> int:
        """A push or global model to `to`, each recipient in the format it reads
        (mixed_room.py). A private room's go sealed to everyone addressed (original clients
        cannot be members)."""
        session = self._session
        if session.private.is_private:
            return self._send_transfer(announcement, kind, data, to)
        plan = session.mixed.plan(session, to)
        if plan.original:
            weights, _ = decode_weights(data)  # the values that went out framed, float16 exact
            payload = legacy_format.encode_weights(weights)
            self._send_legacy_transfer(announcement, payload, plan.original_to)
        if plan.framed:
            return self._send_transfer(announcement, kind, data, plan.framed_to)
        return len(data)

    def _send_transfer(
        self, announcement: Message, kind: int, data: memoryview, to: list[str] | None
    ) -> int:
        """Sends a whole transfer; one cut off by a dropped connection goes again, under the
        same transfer id, once the session resumed (relays that resume sessions only). Returns
        the size once the relay took the last byte; raises when the session is over."""
        transfer_id = next(self._transfer_ids) & (2**64 - 1)
        data = self._session.private.seal(data, transfer_id, kind)  # after encoding
        transfer = SentTransfer(announcement, kind, data, to, transfer_id)
        for resends in itertools.count():
            transfer.connection = self._connection()
            try:
                size = self._send_transfer_once(transfer)
            except transport.ConnectionClosed:
                if resends == TRANSFER_RESENDS or not self._wait_to_resend(transfer):
                    raise
                log.info("connection back: sending transfer %d again", transfer.transfer_id)
                continue
            transfer.sent_at = time.monotonic()
            with self._changed:
                self._session.transfer_sent(transfer)
            return size
        raise AssertionError("unreachable")

    def unconfirmed(self, last: SentTransfer, lost_at: float) -> bool:
        """After a resume: whether the newest transfer the lost connection took whole must go
        again: it went shortly before the drop (at `lost_at`), and the relay may have died
        with its tail unread (the receiver drops it if it arrived)."""
        return (
            last.connection is not self._connection()
            and lost_at - last.sent_at < UNCONFIRMED_TRANSFER_SECONDS
        )

    def resend_last_transfer(self, transfer: SentTransfer) -> None:
        if not self._wait_to_resend(transfer):
            return
        log.info("connection back: sending transfer %d again", transfer.transfer_id)
        self._send_transfer_once(transfer)

    def _wait_to_resend(self, transfer: SentTransfer) -> bool:
        """Waits until a connection other than the one `transfer` went out on is in the room
        with every recipient present. False when there is no point: the relay cannot resume
        sessions (v1), the session is over, or it did not come back in RESEND_WAIT_SECONDS."""
        session = self._session
        capabilities = session.capabilities
        if capabilities is None or not capabilities.supports(Feature.RESUME):
            return False

        def ready() -> bool:
            return (
                self._connection() is not transfer.connection
                and self._connected()
                and session.ready_to_resend(transfer.to)
            )

        with self._changed:
            self._changed.wait_for(lambda: session.closing or ready(), RESEND_WAIT_SECONDS)
            return not session.closing and ready()

    def _send_transfer_once(self, transfer: SentTransfer) -> int:
        """Announcement, then the framed binaries. Behind a v1 relay, a payload over one chunk
        is also wrapped in the original's chunk_start/chunk_end."""
        announcement, kind, data = transfer.announcement, transfer.kind, transfer.data
        to, transfer_id = transfer.to, transfer.transfer_id
        connection = self.live_connection()
        chunk_size = self._chunk_size()
        recipients = list(to or ())
        chunks = transport.chunk_count(self._session.user_id, recipients, len(data), chunk_size)
        announcement.extra[FRAMED_FIELD] = True
        self.send_json(announcement, to)
        wrapped = self._session.capabilities is None and chunks > 1
        if wrapped:
            start = create_chunk_start_message(
                str(transfer_id),
                chunks,
                len(data),
                announcement.type.value,
                **{k: v for k, v in announcement.payload.items() if k != "timestamp"},
                display_name=self._session.display_name,
            )
            start.extra[FRAMED_FIELD] = True
            self.send_json(start, to)
        connection.send_chunked(
            kind, transfer_id, self._session.user_id, recipients, data, chunk_size
        )
        if wrapped:
            end = create_chunk_end_message(str(transfer_id))
            end.extra[FRAMED_FIELD] = True
            self.send_json(end, to)
        return len(data)

    def _send_legacy_transfer(
        self, announcement: Message, payload: bytes, to: list[str] | None
    ) -> None:
        """The original framing: the announcement and one binary, or past 16 MiB
        `chunk_start`, the chunks and `chunk_end`."""
        connection = self.live_connection()
        fields = {k: v for k, v in announcement.payload.items() if k != "timestamp"}
        if len(payload) <= MAX_CHUNK_SIZE:
            self.send_json(Message(announcement.type, dict(fields)), to)
            connection.send_binary(payload)
            return
        chunks = chunk_data(payload, MAX_CHUNK_SIZE)
        transfer_id = secrets.token_hex(8)
        fields.setdefault("user_id", self._session.user_id)
        fields.setdefault("display_name", self._session.display_name)
        start = create_chunk_start_message(
            transfer_id, len(chunks), len(payload), announcement.type.value, **fields
        )
        self.send_json(start, to)
        for chunk in chunks:
            connection.send_binary(chunk)
        self.send_json(create_chunk_end_message(transfer_id), to)

    def send_mixed_crop(
        self, header: Message, image_png: bytes, mask_png: bytes, to: list[str] | None
    ) -> None:
        session = self._session
        if session.private.is_private:
            self._send_crop(header, image_png, mask_png, to)
            return
        plan = session.mixed.plan(session, to)
        if plan.original:
            connection = self.live_connection()
            self.send_json(Message(header.type, dict(header.payload)), plan.original_to)
            connection.send_binary(image_png)
            connection.send_binary(mask_png)
        if plan.framed:
            self._send_crop(header, image_png, mask_png, plan.framed_to)

    def _send_crop(
        self, header: Message, image_png: bytes, mask_png: bytes, to: list[str] | None
    ) -> None:
        connection = self.live_connection()
        header.extra[FRAMED_FIELD] = True
        self.send_json(header, to)
        recipients = list(to or ())
        parts = ((FrameKind.TRAINING_IMAGE, image_png), (FrameKind.TRAINING_MASK, mask_png))
        for kind, png in parts:
            transfer_id = next(self._transfer_ids) & (2**64 - 1)
            wire = self._session.private.seal(png, transfer_id, kind)
            connection.send_chunked(
                kind, transfer_id, self._session.user_id, recipients, wire, 2**31 - 1
            )

    def send_global_model(
        self, weights: dict, aggregation_round: int, contributors: int, to: list[str] | None = None
    ) -> None:
        """The (canonical) global model, whole: to a member that asked for it, or to all."""
        metadata = self._session.global_metadata(aggregation_round, contributors)
        data = serialize_weights(weights, metadata=metadata)
        self.send_global_data(data, aggregation_round, contributors, to)

    def send_global_data(
        self, data: memoryview, aggregation_round: int, contributors: int, to: list[str] | None
    ) -> None:
        announcement = create_global_model_message(aggregation_round, contributors)
        present_before = set(self._session.member_ids())
        self.send_mixed_transfer(announcement, FrameKind.GLOBAL_MODEL, data, to)
        with self._changed:
            self._session.global_model_sent(to, present_before)
