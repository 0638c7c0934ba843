"""The private-room session layer (docs/security.md): sans-I/O objects for the host and for a
member that turn received control messages into messages to send, and seal or open transfers.

The host runs CPace (C, `_relayclient.CPaceSession`) with each member over directed control
messages (`pake_init`, `pake_reply`, `pake_confirm`, `pake_failed`, `pake_refused`,
`group_key`; docs/protocol.md, "Private rooms"), hands each confirmed member the group key
wrapped under that member's CPace key, and draws a new key (next epoch) when a member leaves.
After 3 failed attempts the room admits nobody new until the host calls `reopen()`.

Nothing here touches a socket: the caller sends each `Outgoing` with `to` as the directed
recipients, feeds received control messages (with the relay's `sender_id`) to `handle`, sends
what `seal_transfer` returns as a chunked transfer, and opens what arrives with a
`transfer_opener` fed after each chunk (or `open_transfer` on a whole buffer). A connection
that reassembles transfers in C is given the group key (`sync_connection`): it opens each
segment as it lands, and `open_transfer` then only checks what the C side cannot (sender,
replay, epoch, a global model's signature). That keeps this layer apart from client.py, which
can wire it in without knowing the cryptography.
"""

from __future__ import annotations

import base64
import logging
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _relayclient as crypto
from .private_code import RoomCode

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_FAILED_ATTEMPTS = 3
FRAME_KIND_GLOBAL_MODEL = crypto.FRAME_KIND_GLOBAL_MODEL
SIGNATURE_BYTES = 64
MISMATCH = "the code's secret part does not match"
CLOSED = (
    f"the room is closed to new members after {MAX_FAILED_ATTEMPTS} failed attempts to join "
    "with a wrong secret part; the host must reopen it"
)
#: How many re-run exchanges a member keeps the wrap keys of until the host answers one (each
#: resume after the host vanished mid-exchange adds one; more than this means the host lost
#: them all, and the oldest is dropped).
MAX_UNCONFIRMED_EXCHANGES = 4
CONTROL_TYPES = frozenset(
    {"pake_init", "pake_reply", "pake_confirm", "pake_failed", "pake_refused", "group_key"}
)

# Labels of the keys derived from a member's CPace session (cpace_derive_key).
WRAP_LABEL = "group key wrap"
VERIFICATION_LABEL = "verification code"


class PrivateRoomError(ValueError):
    """A transfer or control message that must not be used; the message says why."""


@dataclass
class Outgoing:
    """A control message to send, directed to `to` (user ids)."""

    message: dict
    to: list[str]


def _control(message_type: str, to: str, **payload) -> Outgoing:
    payload["v"] = PROTOCOL_VERSION
    return Outgoing({"type": message_type, "payload": payload}, [to])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(payload: dict, name: str) -> bytes:
    value = payload.get(name)
    if not isinstance(value, str):
        raise PrivateRoomError(f"field {name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise PrivateRoomError(f"field {name!r} is not valid base64") from None


def verification_code(session: crypto.CPaceSession) -> str:
    """Six digits both sides can compare by voice (optional check): equal only if both hold the
    same session key, so someone in the middle who knows the code shows two different ones."""
    number = int.from_bytes(session.derive_key(VERIFICATION_LABEL)[:4], "big") % 1_000_000
    return f"{number // 1000:03d} {number % 1000:03d}"


def _signed_message(room: str, epoch: int, transfer_id: int, digest: bytes) -> bytes:
    # What the host signs for a global model: the sealed transfer's digest in its context.
    return (
        b"SegSuite global model v1\0"
        + room.encode()
        + b"\0"
        + struct.pack("<IQ", epoch, transfer_id)
        + digest
    )


@dataclass
class GroupKey:
    """A room's group key and its epoch (rotated when a member leaves)."""

    epoch: int
    key: bytes


class TransferOpener:
    """Opens one sealed transfer in place while its chunks arrive (a global model's last 64
    bytes are the host's signature, checked at the end). Give it each chunk's payload with
    `feed_piece` (it lands decrypted in the receive buffer), or copy chunks into the buffer
    yourself and call `feed`; `finish()` returns the plaintext, a view into that buffer."""

    def __init__(
        self,
        transfers: SealedTransfers,
        sender: str,
        transfer_id: int,
        kind: int,
        total_size: int,
        host_key: bytes | None,
    ) -> None:
        group = transfers.group
        if group is None:
            raise PrivateRoomError("no group key yet: the key exchange has not finished")
        self._replay = (sender, group.epoch, transfer_id)
        if self._replay in transfers.seen:
            raise PrivateRoomError(f"transfer {transfer_id} from {sender} was replayed: refused")
        self._transfers, self._host_key = transfers, host_key
        self._what = f"transfer {transfer_id} from {sender}"
        self._context = (transfers.room, transfers.user_id, transfer_id, kind, group.epoch)
        self._sealed_len = total_size - (SIGNATURE_BYTES if host_key is not None else 0)
        self._fed = 0  # bytes given to feed_piece
        if self._sealed_len < 0:
            raise PrivateRoomError(f"{self._what} is too short to carry the host's signature")
        try:
            self._opener = crypto.SealedOpener(
                group.key,
                transfers.room,
                sender,
                transfer_id,
                kind,
                group.epoch,
                self._sealed_len,
                digest=host_key is not None,
            )
        except ValueError as error:
            raise PrivateRoomError(f"{self._what}: {error}") from None

    def feed(self, buffer, available: int) -> None:
        """`buffer` is the whole receive buffer (writable); its first `available` bytes are in."""
        view = memoryview(buffer).cast("B")
        try:
            self._opener.feed(view[: self._sealed_len], min(available, self._sealed_len))
        except ValueError as error:
            raise PrivateRoomError(f"{self._what}: {error}") from None

    def feed_piece(self, buffer, piece) -> None:
        """The next chunk's payload, in order: decrypted straight into its place in `buffer`
        (the whole receive buffer), so the caller does not copy it there first."""
        view = memoryview(buffer).cast("B")
        data = memoryview(piece).cast("B")
        start, end = self._fed, self._fed + len(data)
        sealed_end = min(end, self._sealed_len)  # a global model's signature comes after it
        try:
            if sealed_end > start:
                self._opener.feed_from(view[: self._sealed_len], data[: sealed_end - start])
            if end > sealed_end:
                tail = max(start, self._sealed_len)
                view[tail:end] = data[tail - start :]
        except ValueError as error:
            raise PrivateRoomError(f"{self._what}: {error}") from None
        self._fed = end

    def finish(self, buffer) -> memoryview:
        view = memoryview(buffer).cast("B")
        try:
            digest = self._opener.finish()
        except ValueError as error:
            raise PrivateRoomError(f"{self._what}: {error}") from None
        offset, length = self._opener.offset, self._opener.length
        plaintext = view[offset : offset + length]
        if self._host_key is not None:
            room, _, transfer_id, _, epoch = self._context
            signature = bytes(view[self._sealed_len : self._sealed_len + SIGNATURE_BYTES])
            try:
                crypto.sign_verify(
                    self._host_key, _signed_message(room, epoch, transfer_id, digest), signature
                )
            except ValueError as error:
                plaintext[:] = bytes(length)  # nothing of it may be applied
                raise PrivateRoomError(f"global model from the host: {error}") from None
        self._transfers.seen.add(self._replay)
        return plaintext


@dataclass
class SealedTransfers:
    """Seals and opens one party's transfers under the current group key; refuses replays.
    Used by the host and member objects below, and by bench/bench_end_to_end.py's `private`
    method, which measures the per-transfer cost with a key set up out of band."""

    room: str
    user_id: str
    group: GroupKey | None = None
    seen: set[tuple[str, int, int]] = field(default_factory=set)
    _spare: bytearray | None = None
    _bound: tuple[object, int | None] | None = None  # (connection, epoch) last given the key

    def sync_connection(self, connection) -> None:
        """Gives `connection` (one that reassembles transfers in C) the current group key, so
        it opens each transfer as its chunks land; a no-op when it has it already. Transfers
        that started under another key arrive as sent and are opened here instead."""
        epoch = self.group.epoch if self.group is not None else None
        bound = self._bound
        if bound is not None and bound[0] is connection and bound[1] == epoch:
            return
        set_key = getattr(connection, "set_transfer_key", None)
        if set_key is None:
            return
        set_key(self.group.key if self.group is not None else None, self.room, epoch or 0)
        self._bound = (connection, epoch)

    def _send_buffer(self, size: int) -> memoryview:
        # Fresh memory costs a page fault per page, more than the encryption itself: reuse the
        # last send buffer once nobody else holds it (its send finished and was dropped).
        # (2 references: the attribute and getrefcount's argument; a live view adds one.)
        if self._spare is None or len(self._spare) < size or sys.getrefcount(self._spare) > 2:
            self._spare = bytearray(size)
        return memoryview(self._spare)[:size]

    def seal(self, payload, transfer_id: int, kind: int, sign_key: bytes | None):
        """The wire form of `payload`, encrypted straight from `payload` into the send buffer
        (the encryption is the one copy). Valid until the caller drops it. Unsigned, it is a
        `SealingTransfer`: `send_chunked` seals each chunk just before it sends it, while the
        one before is on the wire (viewing its bytes otherwise seals them all first). A signed
        one (a global model) is sealed whole here: its signature covers every segment."""
        if self.group is None:
            raise PrivateRoomError("no group key yet: the key exchange has not finished")
        plaintext = memoryview(payload).cast("B")
        sealed_len = crypto.sealed_size(len(plaintext))
        sealed = self._send_buffer(sealed_len + (SIGNATURE_BYTES if sign_key else 0))
        # What binds each chunk (the associated data), then where it goes.
        context = (self.group.key, self.room, self.user_id, transfer_id, kind, self.group.epoch)
        if not sign_key:
            return crypto.seal_while_sending(*context, plaintext, sealed)
        digest = crypto.seal(*context, plaintext, sealed[:sealed_len], digest=True)
        if sign_key:
            message = _signed_message(self.room, self.group.epoch, transfer_id, digest)
            sealed[sealed_len:] = crypto.sign_detached(sign_key, message)
        return sealed

    def opener(
        self, sender: str, transfer_id: int, kind: int, total_size: int, host_key: bytes | None
    ) -> TransferOpener:
        return TransferOpener(self, sender, transfer_id, kind, total_size, host_key)

    def open(
        self, sender: str, transfer_id: int, kind: int, data, host_key: bytes | None
    ) -> memoryview:
        """A whole received transfer at once, decrypted in place in `data` (writable); or, when
        the connection opened it as it landed (a `Transfer` with `opened` or `open_error`), its
        plaintext once the checks left to do here pass."""
        if self.group is None:
            raise PrivateRoomError("no group key yet: the key exchange has not finished")
        source = memoryview(data).obj
        if getattr(source, "open_error", None) is not None:
            raise PrivateRoomError(f"transfer {transfer_id} from {sender}: {source.open_error}")
        if getattr(source, "opened", None) is not None:
            return self._accept_opened(sender, transfer_id, data, source.opened, host_key)
        view = memoryview(data).cast("B")
        if view.readonly:
            raise PrivateRoomError("open_transfer decrypts in place: pass a writable buffer")
        sealed_len = len(view) - (SIGNATURE_BYTES if host_key is not None else 0)
        try:
            epoch = crypto.sealed_header(view[: max(sealed_len, 0)])["epoch"]
        except ValueError as error:
            raise PrivateRoomError(f"transfer {transfer_id} from {sender}: {error}") from None
        if self.group is not None and epoch != self.group.epoch:
            raise PrivateRoomError(
                f"transfer {transfer_id} from {sender} is sealed under key epoch {epoch}, "
                f"not the current {self.group.epoch}: refused"
            )
        opener = self.opener(sender, transfer_id, kind, len(view), host_key)
        opener.feed(view, len(view))
        return opener.finish(view)

    def _accept_opened(
        self, sender: str, transfer_id: int, data, opened: tuple, host_key: bytes | None
    ) -> memoryview:
        """A transfer the connection opened (authenticated and decrypted) under the key of
        `opened`'s epoch: refused if that is not the current one, if it is a replay, or if a
        global model's signature over its digest does not verify (its plaintext then wiped)."""
        offset, length, epoch, digest = opened
        what = f"transfer {transfer_id} from {sender}"
        if epoch != self.group.epoch:
            raise PrivateRoomError(
                f"{what} is sealed under key epoch {epoch}, not the current "
                f"{self.group.epoch}: refused"
            )
        replay = (sender, epoch, transfer_id)
        if replay in self.seen:
            raise PrivateRoomError(f"transfer {transfer_id} from {sender} was replayed: refused")
        view = memoryview(data).cast("B")
        plaintext = view[offset : offset + length]
        if host_key is not None:
            sealed_len = len(view) - SIGNATURE_BYTES
            signature = bytes(view[sealed_len:])
            try:
                if digest is None or sealed_len < offset + length:
                    raise ValueError("the transfer carries no signature")
                message = _signed_message(self.room, epoch, transfer_id, digest)
                crypto.sign_verify(host_key, message, signature)
            except ValueError as error:
                plaintext[:] = bytes(length)  # nothing of it may be applied
                raise PrivateRoomError(f"global model from the host: {error}") from None
        self.seen.add(replay)
        return plaintext


class PrivateRoomHost:
    """The host's side: admits members by CPace, distributes and rotates the group key."""

    def __init__(
        self, code: RoomCode, host_id: str, on_alert: Callable[[str], None] | None = None
    ) -> None:
        if not code.private:
            raise ValueError("a private room needs a code with a secret part")
        self._code = code
        self.host_id = host_id
        self._on_alert = on_alert or (lambda text: None)
        self._pending: dict[str, crypto.CPaceSession] = {}
        self._wrap_keys: dict[str, bytes] = {}
        self.verification: dict[str, str] = {}
        # Members taken off the key without having left (members_gone): back, they are
        # answered like holders, even in a room closed to newcomers.
        self._returning: set[str] = set()
        self.failed_attempts = 0
        self._sign_public, self._sign_secret = crypto.sign_keypair()
        self._transfers = SealedTransfers(
            code.routing, host_id, GroupKey(0, crypto.group_key_generate())
        )

    @property
    def epoch(self) -> int:
        return self._transfers.group.epoch

    @property
    def members(self) -> list[str]:
        """Members that confirmed the key exchange and hold the current group key."""
        return list(self._wrap_keys)

    @property
    def returning(self) -> frozenset[str]:
        """Members taken off the key while away (members_gone), answered as holders."""
        return frozenset(self._returning)

    @property
    def closed(self) -> bool:
        return self.failed_attempts >= MAX_FAILED_ATTEMPTS

    def reopen(self) -> None:
        """Admits new members again after the room closed on failed attempts."""
        self.failed_attempts = 0

    def _fail(self, member: str, reason: str) -> list[Outgoing]:
        self._pending.pop(member, None)
        self.failed_attempts += 1
        log.warning(
            "private room: key exchange with %s failed (%d of %d)",
            member,
            self.failed_attempts,
            MAX_FAILED_ATTEMPTS,
        )
        if self.failed_attempts == MAX_FAILED_ATTEMPTS:
            self._on_alert(
                f"{MAX_FAILED_ATTEMPTS} attempts to join with a wrong secret part: the room is "
                "closed to new members until you reopen it"
            )
        return [_control("pake_failed", member, reason=reason)]

    def handle(self, message: dict) -> list[Outgoing]:
        """One control message from a member (its `sender_id` set by the relay)."""
        member = message.get("sender_id")
        kind = message.get("type")
        payload = message.get("payload")
        if (
            not isinstance(member, str)
            or kind not in CONTROL_TYPES
            or not isinstance(payload, dict)
        ):
            raise PrivateRoomError("not a private-room control message from a member")
        if kind == "pake_init":
            if member in self._pending:  # an abandoned attempt counts as a failed one
                self._fail(member, "a new attempt replaced this one")
            # A member that holds the key and runs the exchange again (back after a drop, see
            # PrivateRoomMember.resume) is not new: a room closed to newcomers still answers it.
            holder = member in self._wrap_keys or member in self._returning
            if not holder and self.failed_attempts + len(self._pending) >= MAX_FAILED_ATTEMPTS:
                return [_control("pake_refused", member, reason=CLOSED)]
            session = crypto.CPaceSession(
                "responder",
                self._code.secret_bytes(),
                self._code.routing,
                member,
                self.host_id,
                b"host",
            )
            try:
                reply = session.receive(_unb64(payload, "cpace"))
            except ValueError as error:
                return self._fail(member, str(error))
            self._pending[member] = session
            return [_control("pake_reply", member, cpace=_b64(reply))]
        if kind == "pake_confirm":
            session = self._pending.pop(member, None)
            if session is None:
                return []
            try:
                session.receive(_unb64(payload, "cpace"))
            except crypto.CPaceMismatch:
                return self._fail(member, MISMATCH)
            except ValueError as error:
                return self._fail(member, str(error))
            self._wrap_keys[member] = session.derive_key(WRAP_LABEL)
            self._returning.discard(member)
            self.verification[member] = verification_code(session)
            return [self._group_key_for(member)]
        if kind == "pake_failed" and member in self._pending:
            self._fail(member, MISMATCH)  # counted; the member knows already, so no answer
        return []

    def _group_key_for(self, member: str) -> Outgoing:
        group = self._transfers.group
        wrapped = crypto.group_key_wrap(
            self._wrap_keys[member],
            self._code.routing,
            self.host_id,
            member,
            group.epoch,
            group.key,
            self._sign_public,
        )
        return _control("group_key", member, epoch=group.epoch, wrapped=_b64(wrapped))

    def member_left(self, member: str) -> list[Outgoing]:
        """A member left or was removed: if it held the key, every other member gets a new one
        (next epoch), so nothing sent from now on is readable with what it kept."""
        self._pending.pop(member, None)
        self.verification.pop(member, None)
        self._returning.discard(member)
        if self._wrap_keys.pop(member, None) is None:
            return []
        return self._rotate()

    def members_gone(self, members) -> list[Outgoing]:
        """Members the host stopped waiting for without being told they left: away when the
        relay restarted and not back within a round, or gone while the host itself was away
        (the relay tells only who is there). Each is taken off the key and the others get a
        new one (one rotation for all), as if they had left; one that was only late comes
        back by resume, runs the exchange again and is answered as a holder."""
        gone = [member for member in members if member in self._wrap_keys]
        if not gone:
            return []
        for member in gone:
            del self._wrap_keys[member]
            self._pending.pop(member, None)
            self.verification.pop(member, None)
            self._returning.add(member)
        return self._rotate()

    def _rotate(self) -> list[Outgoing]:
        self._transfers.group = GroupKey(self.epoch + 1, crypto.group_key_generate())
        self._transfers.seen.clear()  # old-epoch transfers are refused by their epoch now
        return [self._group_key_for(other) for other in self._wrap_keys]

    def sync_connection(self, connection) -> None:
        """See SealedTransfers.sync_connection."""
        self._transfers.sync_connection(connection)

    def seal_transfer(self, payload, transfer_id: int, kind: int):
        """The wire form of a transfer; a global model is also signed with the host's key."""
        sign = self._sign_secret if kind == FRAME_KIND_GLOBAL_MODEL else None
        return self._transfers.seal(payload, transfer_id, kind, sign)

    def _check_sender(self, sender: str, kind: int) -> None:
        if sender not in self._wrap_keys:
            raise PrivateRoomError(f"transfer from {sender}, who holds no key here: refused")
        if kind == FRAME_KIND_GLOBAL_MODEL:
            raise PrivateRoomError(f"global model from {sender}, who is not the host: refused")

    def open_transfer(self, sender: str, transfer_id: int, kind: int, data) -> memoryview:
        """The plaintext of a member's transfer, decrypted in place in `data` (writable)."""
        self._check_sender(sender, kind)
        return self._transfers.open(sender, transfer_id, kind, data, None)

    def transfer_opener(
        self, sender: str, transfer_id: int, kind: int, total_size: int
    ) -> TransferOpener:
        """For a transfer whose first chunk just arrived (frame header fields): feed it the
        receive buffer after each chunk, so segments are decrypted while the rest arrives."""
        self._check_sender(sender, kind)
        return self._transfers.opener(sender, transfer_id, kind, total_size, None)


class PrivateRoomMember:
    """A member's side: proves knowledge of the secret part to the host and receives the key."""

    def __init__(self, code: RoomCode, user_id: str, host_id: str) -> None:
        if not code.private:
            raise ValueError("a private room needs a code with a secret part")
        self._code = code
        self.user_id = user_id
        self.host_id = host_id
        self._session: crypto.CPaceSession | None = None
        # The wrap key the host is known to hold for us: a group key arrived under it.
        self._wrap_key: bytes | None = None
        # Wrap keys of exchanges run since (newest first) whose confirmation the host may or
        # may not have taken: until a group key arrives under one, the host may wrap under
        # any of them or under `_wrap_key`, so a rotation crossing a re-run exchange (or an
        # exchange abandoned when the host vanished mid-way) still unwraps.
        self._unconfirmed: list[bytes] = []
        self._latest: bytes | None = None  # the wrap key of the exchange of the last start()
        # Back by resume, the group key may be stale until the host answers a re-run exchange.
        self.rekeying = False
        self._host_sign_key: bytes | None = None
        self.error: str | None = None
        self.verification: str | None = None
        self._transfers = SealedTransfers(code.routing, user_id)

    @property
    def ready(self) -> bool:
        """Holds the group key: transfers can be sealed and opened."""
        return self._transfers.group is not None

    @property
    def epoch(self) -> int | None:
        return self._transfers.group.epoch if self._transfers.group else None

    def start(self) -> Outgoing:
        self.error = None
        self._latest = None
        self._session = crypto.CPaceSession(
            "initiator",
            self._code.secret_bytes(),
            self._code.routing,
            self.user_id,
            self.host_id,
            b"member",
        )
        return _control("pake_init", self.host_id, cpace=_b64(self._session.start()))

    def mark_stale(self) -> None:
        """Back in the room after a drop: the group key held may have been rotated meanwhile;
        `rekeying` until the host answers an exchange run again (`resume`)."""
        self.rekeying = True

    def resume(self) -> Outgoing:
        """Back in the room after a drop: the group key may have been rotated meanwhile (a
        member left while this one could not be told). Runs the key exchange again; the host
        answers with the current epoch's key. Until then the key held stays in use. Called
        again when the host was not there to answer (after a relay restart a member may be
        back before its host): each call is a new exchange; `rekeying` holds until one ends."""
        self.rekeying = True
        return self.start()

    def _unwrap(self, epoch: int, wrapped: bytes) -> tuple[bytes, bytes]:
        error = None
        candidates = [*self._unconfirmed, self._wrap_key]
        for index, wrap_key in enumerate(candidates):
            if wrap_key is None:
                continue
            try:
                unwrapped = crypto.group_key_unwrap(
                    wrap_key, self._code.routing, self.host_id, self.user_id, epoch, wrapped
                )
            except ValueError as exc:
                error = error or exc
                continue
            if index < len(self._unconfirmed):
                # The host took that exchange's confirmation: older keys are done with, and
                # exchanges run after it may still be answered.
                self._wrap_key = wrap_key
                del self._unconfirmed[index:]
            if wrap_key is self._latest:
                self.rekeying = False
            return unwrapped
        raise PrivateRoomError(f"group_key: {error}")

    def handle(self, message: dict) -> list[Outgoing]:
        """One control message from the host. Failures set `error` to words for the user."""
        kind = message.get("type")
        payload = message.get("payload")
        if message.get("sender_id") != self.host_id or not isinstance(payload, dict):
            return []  # only the host speaks this protocol to us
        if kind == "pake_reply" and self._session is not None:
            try:
                confirm = self._session.receive(_unb64(payload, "cpace"))
            except crypto.CPaceMismatch:
                self.error = MISMATCH
                return [_control("pake_failed", self.host_id, reason=MISMATCH)]
            except ValueError as error:
                self.error = f"the host's answer is malformed: {error}"
                return [_control("pake_failed", self.host_id, reason=self.error)]
            self._latest = self._session.derive_key(WRAP_LABEL)
            self._unconfirmed = [self._latest, *self._unconfirmed][:MAX_UNCONFIRMED_EXCHANGES]
            self.verification = verification_code(self._session)
            return [_control("pake_confirm", self.host_id, cpace=_b64(confirm))]
        if kind in ("pake_failed", "pake_refused"):
            reason = payload.get("reason")
            self.error = reason if isinstance(reason, str) else MISMATCH
            return []
        if kind == "group_key" and (self._wrap_key is not None or self._unconfirmed):
            epoch = payload.get("epoch")
            if not isinstance(epoch, int) or not 0 <= epoch < 2**32:
                raise PrivateRoomError("group_key: epoch must be an integer of 32 bits")
            key, sign_key = self._unwrap(epoch, _unb64(payload, "wrapped"))
            if self._host_sign_key not in (None, sign_key):
                raise PrivateRoomError("group_key: the host's signing key changed: refused")
            current = self._transfers.group
            if current is not None and (epoch, key) == (current.epoch, current.key):
                return []  # the answer to a resume's exchange when nothing was rotated
            if current is not None and epoch <= current.epoch:
                raise PrivateRoomError(f"group_key: epoch {epoch} is not newer: refused")
            self._host_sign_key = sign_key
            self._transfers.group = GroupKey(epoch, key)
            self._transfers.seen.clear()  # old-epoch transfers are refused by their epoch now
        return []

    def sync_connection(self, connection) -> None:
        """See SealedTransfers.sync_connection."""
        self._transfers.sync_connection(connection)

    def seal_transfer(self, payload, transfer_id: int, kind: int):
        if kind == FRAME_KIND_GLOBAL_MODEL:
            raise PrivateRoomError("only the host sends global models")
        return self._transfers.seal(payload, transfer_id, kind, None)

    def open_transfer(self, sender: str, transfer_id: int, kind: int, data) -> memoryview:
        """The plaintext of a transfer, decrypted in place in `data` (writable). A global model
        must come from the host and carry its signature."""
        return self._transfers.open(
            sender, transfer_id, kind, data, self._host_key_for(sender, kind)
        )

    def transfer_opener(
        self, sender: str, transfer_id: int, kind: int, total_size: int
    ) -> TransferOpener:
        """As PrivateRoomHost.transfer_opener; a global model's signature is checked at
        finish()."""
        host_key = self._host_key_for(sender, kind)
        return self._transfers.opener(sender, transfer_id, kind, total_size, host_key)

    def _host_key_for(self, sender: str, kind: int) -> bytes | None:
        if kind != FRAME_KIND_GLOBAL_MODEL:
            return None
        if sender != self.host_id:
            raise PrivateRoomError(f"global model from {sender}, who is not the host: refused")
        if self._host_sign_key is None:
            raise PrivateRoomError("no group key yet: the key exchange has not finished")
        return self._host_sign_key
