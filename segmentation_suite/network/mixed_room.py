"""SyncClient's part in mixed rooms: members on the original app next to ours
(docs/protocol.md, "Mixed rooms"; docs/network-api.md, "Colleagues on the original app").

What is sent to whom:

* relay that lists members' features (ours, `member_features`): our members get our framed
  binaries as always (the relay never hands them to an original client); original members
  get, directed to them, the original format: `weights_push`/`global_model` with one gzip
  binary, or `chunk_start`/chunks/`chunk_end` past 16 MiB, and `training_data` with two PNGs.
  The relay hands these plain binaries to original members only.
* relay that does not (the original Worker): our clients say `peer_hello`; a binary goes to
  everyone there, so while any original member is in the room, everything goes in the
  original format only, and our members read it like original members' (behind the same
  opt-in). With no original member present, nothing changes.

What is read: weights in the original format only with `accept_legacy_weights` (see
legacy_format.py); otherwise the user is told once per sender. Crops are checked PNGs.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

from . import legacy_format, transport
from .codec import decode_weights
from .protocol import (
    MAX_CHUNK_SIZE,
    Feature,
    FrameKind,
    Message,
    MessageType,
    chunk_data,
    create_chunk_end_message,
    create_chunk_start_message,
    create_peer_hello_message,
)

log = logging.getLogger(__name__)

#: Where the user turns the opt-in on, named in the message of a refused original push.
HOW_TO_ACCEPT = (
    'tick "Accept weights from the original app" on the Session page, or pass '
    "--accept-legacy-weights on the command line (SyncClient(accept_legacy_weights=True))"
)


class MixedRoomMixin:
    """Methods of SyncClient for rooms with original members (state is set up in
    SyncClient.__init__: `accept_legacy_weights`, `_kinds`, `_legacy_refused`)."""

    # --- who speaks what ------------------------------------------------------------------

    @property
    def original_members(self) -> list[str]:
        """The other members taken for original-app clients: on a v1 relay, those that have
        not (yet) announced themselves with peer_hello. While there are any, transfers go in
        the original format (docs/protocol.md, "Mixed rooms")."""
        others = [u.get("user_id") for u in self._users if u.get("user_id") != self.user_id]
        return self._kinds.originals(others)

    def _reset_kinds(self, capabilities: Any, users: list[dict]) -> None:
        attested = capabilities is not None and capabilities.supports(Feature.MEMBER_FEATURES)
        self._kinds.reset(attested)
        self._kinds.take_user_list(users)

    def _say_peer_hello(self) -> None:
        """Where the relay attests nothing: tell the room this client speaks protocol 2, and
        if it created the room, that it is the host (members never guess it from list order,
        which the original Worker reorders after idling)."""
        if self._kinds.attested or self._mode != "relay":
            return
        self._submit(self._send_json, create_peer_hello_message(self.user_id, self.is_host))

    def _on_peer_hello(self, message: Message) -> None:
        sender = message.sender_id or message.payload["user_id"]
        self._kinds.announced(sender)
        if not message.payload.get("host") or self._relay_attests_host:
            return
        if self._host_id is None:
            self._host_id = sender
            self.sync_status.emit(f"{self._name_of(sender)} hosts this room")
        elif self._host_id != sender:
            log.warning("%s also claims to host the room; keeping %s", sender, self._host_id)

    def _learn_original_host(self, sender: str) -> None:
        """Behind a relay that attests nothing, an original host never announces itself: the
        member that tells joiners the architecture, or sends a global model, is the host."""
        if (
            self._host_id is None
            and not self._relay_attests_host
            and not self._kinds.speaks_frames(sender)
        ):
            self._host_id = sender

    # --- sending ----------------------------------------------------------------------------

    def _plan_recipients(
        self, to: list[str] | None
    ) -> tuple[bool, list[str] | None, bool, list[str] | None]:
        """(send framed, its `to`; send the original format, the `to` of its JSON)."""
        if self._mode != "relay":
            return True, to, False, None  # a LAN session's host is ours; it speaks to each
        present = [u.get("user_id") for u in self._users if u.get("user_id") != self.user_id]
        targets = present if to is None else list(to)
        if not self._kinds.attested:
            # Every binary reaches everyone here: while any original member is present, all
            # go in one format, the original.
            if self._kinds.originals(present):
                return False, None, True, None
            return True, to, False, None
        if not self._kinds.originals(targets):
            return True, to, False, None
        # The original-format binaries reach every original member: each gets the
        # announcement that tells it what they are. Our members get the framed copy, and its
        # announcement too is directed to them only (an original client would wait for its
        # binaries).
        ours = [t for t in targets if self._kinds.speaks_frames(t)]
        return bool(ours), ours, True, self._kinds.originals(present)

    def _send_mixed_transfer(
        self, announcement: Message, kind: int, data: memoryview, to: list[str] | None
    ) -> int:
        """A push or global model to `to`, each recipient in the format it reads. A private
        room's go sealed to everyone addressed (original clients cannot be members)."""
        if self._private_code is not None:
            return self._send_transfer(announcement, kind, data, to)
        framed, framed_to, legacy, legacy_to = self._plan_recipients(to)
        if legacy:
            weights, _ = decode_weights(data)  # the values that went out framed, float16 exact
            payload = legacy_format.encode_weights(weights)
            self._send_legacy_transfer(announcement, payload, legacy_to)
        if framed:
            return self._send_transfer(announcement, kind, data, framed_to)
        return len(data)

    def _send_legacy_transfer(
        self, announcement: Message, payload: bytes, to: list[str] | None
    ) -> None:
        """The original framing: the announcement and one binary, or past 16 MiB
        `chunk_start`, the chunks and `chunk_end`."""
        connection = self._connection
        if connection is None:
            raise transport.ConnectionClosed("not connected")
        fields = {k: v for k, v in announcement.payload.items() if k != "timestamp"}
        if len(payload) <= MAX_CHUNK_SIZE:
            self._send_json(Message(announcement.type, dict(fields)), to)
            connection.send_binary(payload)
            return
        chunks = chunk_data(payload, MAX_CHUNK_SIZE)
        transfer_id = secrets.token_hex(8)
        fields.setdefault("user_id", self.user_id)
        fields.setdefault("display_name", self.display_name)
        start = create_chunk_start_message(
            transfer_id, len(chunks), len(payload), announcement.type.value, **fields
        )
        self._send_json(start, to)
        for chunk in chunks:
            connection.send_binary(chunk)
        self._send_json(create_chunk_end_message(transfer_id), to)

    def _send_mixed_crop(
        self, header: Message, image_png: bytes, mask_png: bytes, to: list[str] | None
    ) -> None:
        if self._private_code is not None:
            self._send_crop(header, image_png, mask_png, to)
            return
        framed, framed_to, legacy, legacy_to = self._plan_recipients(to)
        if legacy:
            connection = self._connection
            if connection is None:
                raise transport.ConnectionClosed("not connected")
            self._send_json(Message(header.type, dict(header.payload)), legacy_to)
            connection.send_binary(image_png)
            connection.send_binary(mask_png)
        if framed:
            self._send_crop(header, image_png, mask_png, framed_to)

    # --- receiving --------------------------------------------------------------------------

    def _legacy_limit(self) -> int:
        """How far an original-format payload may expand: 4x this room's model, when known."""
        reference = self._global_weights or self._own_weights
        capabilities = self._capabilities
        max_size = capabilities.limits.get("max_message_size") if capabilities else None
        if not isinstance(max_size, int) or max_size <= 0:
            max_size = None
        return legacy_format.expansion_limit(reference, max_size)

    def _read_legacy_weights(self, sender: str, payload: Any, what: str) -> dict | None:
        """Original-format weights from `sender`, or None (said why, once per sender when the
        user has not opted in)."""
        name = self._name_of(sender)
        if not self.accept_legacy_weights:
            if sender not in self._legacy_refused:
                self._legacy_refused.add(sender)
                self._report(
                    f"{what} from {name} were not read: they come from the original "
                    "Segmentation Suite app, whose weight format is a Python pickle that could "
                    f"run code on this computer. To accept them from members you trust, "
                    f"{HOW_TO_ACCEPT}"
                )
            return None
        try:
            return legacy_format.decode_weights(payload, self._legacy_limit())
        except legacy_format.LegacyFormatError as exc:
            self._report(f"{what} from {name} (original app format) refused: {exc}")
            return None

    def _on_original_transfer(self, sender: str, kind: int, payload: Any, message: Message) -> None:
        """A whole transfer in the original format (unframed binaries after an announcement)."""
        info = message.payload
        if kind == FrameKind.WEIGHTS:
            if not self.is_host:
                return  # a push for the host; a relay without directed delivery shows it to all
            weights = self._read_legacy_weights(sender, payload, "Weights")
            if weights is not None:
                self._accept_push(sender, weights, info)
        elif kind == FrameKind.GLOBAL_MODEL:
            self._learn_original_host(sender)
            if not self._may_send_global_model(sender):
                self._report(
                    f"Refused a global model from {self._name_of(sender)}: only the host "
                    f"({self._name_of(self._host_id or '')}) sends global models in this room"
                )
                return
            weights = self._read_legacy_weights(sender, payload, "The global model")
            if weights is None:
                return
            self._global_weights = weights
            round_number = info.get("aggregation_round")
            if isinstance(round_number, int):
                self._aggregation_round = round_number
            count = info.get("contributor_count")
            self._global_contributors = count if isinstance(count, int) and count > 0 else None
            self.sync_status.emit(f"Global model of round {self._aggregation_round} received")
            self.global_model_received.emit(weights)

    def _checked_crop(self, sender: str, image: bytes, mask: bytes) -> bool:
        """An original member's crop reaches the app only as two PNGs Pillow reads."""
        try:
            legacy_format.check_png(image, "image")
            legacy_format.check_png(mask, "mask")
        except legacy_format.LegacyFormatError as exc:
            self._report(f"A training crop from {self._name_of(sender)} was dropped: {exc}")
            return False
        return True

    def _original_transfer_too_big(self, announcement: Any) -> bool:
        """An original transfer whose compressed bytes already pass what it may expand to is
        dropped before it is held any longer (gzip never shrinks a real model below this)."""
        held = sum(len(p) for p in announcement.parts)
        if announcement.message.type is MessageType.TRAINING_DATA:
            return False
        if held <= self._legacy_limit():
            return False
        with contextlib.suppress(ValueError):
            self._announcements.remove(announcement)
        sender = announcement.message.sender_id or "a member"
        self._report(f"Weights from {self._name_of(sender)} dropped: larger than this room's model")
        return True
