"""The session's part in mixed rooms: members on the original app next to ours
(docs/protocol.md, "Mixed rooms"; docs/network-api.md, "Colleagues on the original app").

What is sent to whom (`MixedRoomPart.plan`):

* relay that lists members' features (ours, `member_features`): our members get our framed
  binaries as always (the relay never hands them to an original client); original members
  get, directed to them, the original format: `weights_push`/`global_model` with one gzip
  binary, or `chunk_start`/chunks/`chunk_end` past 16 MiB, and `training_data` with two PNGs.
  The relay hands these plain binaries to original members only.
* relay that does not (the original Worker): our clients say `peer_hello`; a binary goes to
  everyone there, so while any original member is in the room, everything goes in the
  original format only, and our members read it like original members' (behind the same
  opt-in). With no original member present, nothing changes.

What is read: an original client's binaries carry no header, so each is paired with the JSON
announcement that preceded it, as the original client did (`pair`). Weights in the original
format are read only with `accept_legacy_weights` (legacy_format.py); otherwise the user is
told once per sender. Crops are checked PNGs. No I/O here: the session feeds messages and
binaries in; the driver sends what `plan` says.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import legacy_format
from .peer_kinds import PeerKinds
from .protocol import Feature, FrameKind, Message, MessageType, create_peer_hello_message
from .session_actions import Report, SendJson

log = logging.getLogger(__name__)

#: Where the user turns the opt-in on, named in the message of a refused original push.
HOW_TO_ACCEPT = (
    'tick "Accept weights from the original app" on the Session page, or pass '
    "--accept-legacy-weights on the command line (SyncClient(accept_legacy_weights=True))"
)

#: The most chunks an original `chunk_start` may announce (16 GiB at 16 MiB chunks).
MAX_ANNOUNCED_CHUNKS = 1024


@dataclass
class Announcement:
    """An original client's JSON announcement waiting for its unframed binaries."""

    message: Message
    kinds: list[int]
    chunks_left: int = 1
    parts: list[bytes] = field(default_factory=list)

    @property
    def sender(self) -> str:
        return self.message.sender_id or self.message.payload.get("user_id", "")


@dataclass(frozen=True)
class OriginalTransfer:
    """A whole transfer in the original format: weights or a global model (`payload`), or a
    crop (`image`, `mask`)."""

    sender: str
    kind: int
    message: Message
    payload: bytes = b""
    image: bytes = b""
    mask: bytes = b""


@dataclass(frozen=True)
class SendPlan:
    """Who gets a transfer in which format: framed (to `framed_to`), original (its JSON to
    `original_to`), or both."""

    framed: bool
    framed_to: list[str] | None
    original: bool
    original_to: list[str] | None


class MixedRoomPart:
    """Who speaks what in the room, the original announcements waiting for their binaries,
    and reading the original format."""

    def __init__(self, accept_legacy_weights: bool = False):
        self.accept_legacy_weights = bool(accept_legacy_weights)
        self.kinds = PeerKinds()
        self._refused: set[str] = set()  # told once per sender that its weights were refused
        self._announcements: deque[Announcement] = deque()

    # --- who speaks what ------------------------------------------------------------------

    def reset(self, capabilities: Any, users: list[dict]) -> None:
        attested = capabilities is not None and capabilities.supports(Feature.MEMBER_FEATURES)
        self.kinds.reset(attested)
        self.kinds.take_user_list(users)

    def take_user_list(self, users: list[dict]) -> None:
        self.kinds.take_user_list(users)

    def originals(self, user_ids: list[str]) -> list[str]:
        return self.kinds.originals(user_ids)

    def peer_hello(self, session: Any) -> list:
        """Where the relay attests nothing: tell the room this client speaks protocol 2, and
        if it created the room, that it is the host (members never guess it from list order,
        which the original Worker reorders after idling)."""
        if self.kinds.attested or session.mode != "relay":
            return []
        return [SendJson(create_peer_hello_message(session.user_id, session.is_host))]

    def plan(self, session: Any, to: list[str] | None) -> SendPlan:
        """Which formats a transfer to `to` goes in (None: the room)."""
        if session.mode != "relay":
            return SendPlan(True, to, False, None)  # a LAN session's host is ours
        present = [u for u in session.member_ids() if u != session.user_id]
        targets = present if to is None else list(to)
        if not self.kinds.attested:
            # Every binary reaches everyone here: while any original member is present, all
            # go in one format, the original.
            if self.kinds.originals(present):
                return SendPlan(False, None, True, None)
            return SendPlan(True, to, False, None)
        if not self.kinds.originals(targets):
            return SendPlan(True, to, False, None)
        # The original-format binaries reach every original member: each gets the
        # announcement that tells it what they are. Our members get the framed copy, and its
        # announcement too is directed to them only (an original client would wait for its
        # binaries).
        ours = [t for t in targets if self.kinds.speaks_frames(t)]
        return SendPlan(bool(ours), ours, True, self.kinds.originals(present))

    # --- pairing an original client's binaries with its announcements ----------------------

    def announce(self, message: Message) -> None:
        """An announcement without `framed`: its binaries follow, unframed."""
        if message.type is MessageType.TRAINING_DATA:
            kinds = [FrameKind.TRAINING_IMAGE, FrameKind.TRAINING_MASK]
            self._announcements.append(Announcement(message, kinds))
        elif message.type is MessageType.CHUNK_START:
            total = message.payload["total_chunks"]
            if not 1 <= total <= MAX_ANNOUNCED_CHUNKS:
                log.warning("ignoring chunk_start announcing %s chunks", total)
                return
            original = message.payload["original_type"]
            kind = (
                FrameKind.GLOBAL_MODEL
                if original == MessageType.GLOBAL_MODEL.value
                else FrameKind.WEIGHTS
            )
            self._announcements.append(Announcement(message, [kind], chunks_left=total))
        else:
            kind = (
                FrameKind.GLOBAL_MODEL
                if message.type is MessageType.GLOBAL_MODEL
                else FrameKind.WEIGHTS
            )
            self._announcements.append(Announcement(message, [kind]))

    @property
    def receiving(self) -> bool:
        """Some original transfer has part of its binaries here."""
        return any(a.parts for a in self._announcements)

    def clear(self) -> None:
        """The connection closed: what it carried half-way will not be completed."""
        self._announcements.clear()

    def pair(self, data: Any, limit: int) -> tuple[OriginalTransfer | None, str | None]:
        """An unframed binary: it belongs to the oldest open announcement. Returns the whole
        transfer once its last binary is in; and the sender of a weight transfer dropped
        because its compressed bytes already pass `limit` (what it may expand to: gzip never
        shrinks a real model below this), before it is held any longer."""
        if not self._announcements:
            log.warning("ignoring a binary message that no announcement preceded")
            return None, None
        announcement = self._announcements[0]
        announcement.parts.append(bytes(data))
        if announcement.message.type is MessageType.TRAINING_DATA:
            if len(announcement.parts) < 2:
                return None, None
            self._announcements.popleft()
            image, mask = announcement.parts
            crop = OriginalTransfer(
                announcement.sender,
                FrameKind.TRAINING_IMAGE,
                announcement.message,
                image=image,
                mask=mask,
            )
            return crop, None
        if sum(len(p) for p in announcement.parts) > limit:
            self._announcements.popleft()
            return None, announcement.message.sender_id or "a member"
        announcement.chunks_left -= 1
        if announcement.chunks_left:
            return None, None
        self._announcements.popleft()
        payload = b"".join(announcement.parts)
        announcement.parts.clear()
        whole = OriginalTransfer(
            announcement.sender, announcement.kinds[0], announcement.message, payload
        )
        return whole, None

    # --- reading the original format ------------------------------------------------------

    def read_weights(
        self, sender: str, name: str, payload: Any, what: str, limit: int
    ) -> tuple[dict | None, list]:
        """Original-format weights from `sender`, or None and why (said once per sender
        when the user has not opted in)."""
        if not self.accept_legacy_weights:
            if sender in self._refused:
                return None, []
            self._refused.add(sender)
            return None, [
                Report(
                    f"{what} from {name} were not read: they come from the original "
                    "Segmentation Suite app, whose weight format is a Python pickle that could "
                    f"run code on this computer. To accept them from members you trust, "
                    f"{HOW_TO_ACCEPT}"
                )
            ]
        try:
            return legacy_format.decode_weights(payload, limit), []
        except legacy_format.LegacyFormatError as exc:
            return None, [Report(f"{what} from {name} (original app format) refused: {exc}")]

    @staticmethod
    def check_crop(name: str, image: bytes, mask: bytes) -> list:
        """An original member's crop reaches the app only as two PNGs Pillow reads: no
        action when they are, else the reason it was dropped."""
        try:
            legacy_format.check_png(image, "image")
            legacy_format.check_png(mask, "mask")
        except legacy_format.LegacyFormatError as exc:
            return [Report(f"A training crop from {name} was dropped: {exc}")]
        return []
