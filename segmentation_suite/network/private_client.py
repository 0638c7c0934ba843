"""SyncClient's part in private rooms (docs/security.md, docs/network-api.md "Private rooms"):
wires the sans-I/O session layer of private_room.py into the client.

* Creating: the relay gets `create_room` as always and answers with the routing code; the
  host adds a secret part (private_code.py) and shows the full code (`room_created`). The
  secret part never goes to the relay: it is the CPace password.
* Joining: the full code is split; only the routing part goes in `join_room`. Once in, the
  member runs CPace with the attested host over directed control messages; `room_joined`
  follows only when it holds the group key, or the user is told why not, in words, and the
  client leaves the room.
* Traffic: every framed binary (weights, global models, crops) is sealed after its encoding
  (compression first) and opened before decoding; the host's global models are signed. A
  binary that does not open is refused, said why, and nothing of it is applied.
* Private rooms need our relay: directed delivery (so a key exchange reaches only its peer)
  and an attested host (so a member knows whom to run CPace with). The original relay has
  neither, and original clients cannot run CPace: mixed labs use an open room.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from . import _relayclient as crypto
from .private_code import SECRET_MIN_LENGTH, InvalidRoomCode, RoomCode, new_secret, parse_room_code
from .private_room import (
    CONTROL_TYPES,
    MAX_FAILED_ATTEMPTS,
    MISMATCH,
    SIGNATURE_BYTES,
    PrivateRoomError,
    PrivateRoomHost,
    PrivateRoomMember,
)
from .protocol import Feature, Message, MessageType

log = logging.getLogger(__name__)

#: Why a private room cannot be used on a relay without directed delivery and host_id.
NEEDS_OUR_RELAY = (
    "Private rooms need a relay with directed delivery and an attested host (this project's "
    "relay); {url} does not offer them. Create an open room instead (private=False, "
    "--open on the command line, 'Open room' in the app) if you trust this relay"
)


class PrivateRoomMixin:
    """Methods of SyncClient for private rooms (state set up by `_init_private`)."""

    def _init_private(self) -> None:
        self._private_code: RoomCode | None = None  # the full code, when the room is private
        self._create_private = False
        self._secret_length = SECRET_MIN_LENGTH
        self._private_host: PrivateRoomHost | None = None
        self._private_member: PrivateRoomMember | None = None
        self._private_announced = False  # member: room_joined was emitted for this session
        self._private_alerts: list[str] = []  # host: alerts of the control message in hand
        self._told_sealed = False  # open-room client: told once that the room is private

    # --- public API -------------------------------------------------------------------------

    @property
    def is_private(self) -> bool:
        """The room's traffic is end-to-end encrypted (its code has a secret part)."""
        return self._private_code is not None

    @property
    def private_ready(self) -> bool:
        """Host: always (it draws the group key); member: holds the group key."""
        if self._private_host is not None:
            return True
        return self._private_member is not None and self._private_member.ready

    @property
    def verification_codes(self) -> dict[str, str]:
        """Per peer (user id), six digits both sides see when they hold the same CPace key:
        the host has one per member, a member one for the host. An optional check by voice."""
        if self._private_host is not None:
            return dict(self._private_host.verification)
        member = self._private_member
        if member is not None and member.verification:
            return {member.host_id: member.verification}
        return {}

    @property
    def private_room_closed(self) -> bool:
        """Host: the room refuses new members after 3 failed attempts, until reopened."""
        return self._private_host is not None and self._private_host.closed

    def reopen_private_room(self) -> None:
        """Host: admits new members again after the room closed on failed attempts."""
        if self._private_host is not None:
            self._private_host.reopen()
            self.sync_status.emit("The room admits new members again")

    def create_relay_room(
        self,
        user_name: str,
        relay_url: str | None = None,
        private: bool = True,
        secret_length: int = SECRET_MIN_LENGTH,
    ) -> None:
        """Creates a room; `room_created(full code)` follows, or `error`. Private (default):
        the code gets a secret part that only the people you give it to know, and everything
        the room exchanges is end-to-end encrypted. `private=False`: an open room, which the
        original app can join too (and whoever runs the relay can read)."""
        if self._already_connected():
            return
        new_secret(secret_length)  # raises ValueError on a length out of range, before connecting
        self._private_code = None
        self._create_private = bool(private)
        self._secret_length = secret_length
        self._start_relay(user_name, relay_url, room_code=None)

    def join_relay_room(self, code: str, user_name: str, relay_url: str | None = None) -> None:
        """Joins a room by the code the host shared: `K7QX2M-4HRT` (private; with or without
        the dash, any case) or the 6 characters of an open room. `room_joined(code)` follows
        (in a private room once the key exchange succeeded), or `error` saying why not."""
        try:
            parsed = parse_room_code(code or "")
        except InvalidRoomCode as exc:
            self._report(f"Cannot join: {exc}")
            return
        if self._already_connected():
            return
        self._private_code = parsed if parsed.private else None
        self._create_private = False
        self._start_relay(user_name, relay_url, room_code=parsed.routing)

    def connect_relay(self, room_code: str, user_name: str, relay_url: str | None = None) -> None:
        """The original client's name for `join_relay_room`."""
        self.join_relay_room(room_code, user_name, relay_url)

    # --- the room's life --------------------------------------------------------------------

    def _already_connected(self) -> bool:
        connection = self._connection
        if connection is not None and connection.open:
            self._report("Already connected: disconnect() first")
            return True
        return False

    def _reset_private_session(self) -> None:
        self._private_host = None
        self._private_member = None
        self._private_announced = False
        self._told_sealed = False

    def _relay_supports_private(self) -> bool:
        capabilities = self._capabilities
        return capabilities is not None and all(
            capabilities.supports(f) for f in (Feature.DIRECTED, Feature.HOST_ID)
        )

    def _private_room_created(self) -> bool:
        """Host, the relay made the room: set up the key. False (said why, left) if the relay
        cannot carry a private room."""
        if not self._create_private:
            return True
        if not self._relay_supports_private():
            self._report(NEEDS_OUR_RELAY.format(url=self._url))
            self._leave_in_background()
            return False
        # A host that re-created its room after a drop keeps its secret part; the members
        # need the new routing code anyway.
        secret = self._private_code.secret if self._private_code else None
        self._private_code = RoomCode(
            self._room_code or "", secret or new_secret(self._secret_length)
        )
        self._private_member = None
        self._private_host = PrivateRoomHost(
            self._private_code, self.user_id, on_alert=self._private_alert
        )
        self._private_host.sync_connection(self._connection)  # h13: opened as it lands
        return True

    def _private_room_joined(self, resumed: bool) -> bool:
        """Member, in the room: start the key exchange with the host. True when `room_joined`
        waits for its end (or for a failure, reported)."""
        if self._private_code is None or self.is_host:
            return False
        if resumed and self._private_member is not None:
            # Back after a drop with the key we held; h13: it may have been rotated while we
            # were away, so the exchange runs again and the host sends the current one.
            out = self._private_member.resume()
            self._send_private(out.message, out.to)
            return True
        if not self._relay_supports_private() or self._host_id is None:
            why = NEEDS_OUR_RELAY.format(url=self._url)
            if self._relay_supports_private():
                why = "The room's host is not in the room: ask the host to open it again"
            self._report(f"Cannot join room {self._room_code}: {why}")
            self._leave_in_background()
            return True
        self._private_member = PrivateRoomMember(self._private_code, self.user_id, self._host_id)
        self.sync_status.emit(f"In room {self._room_code}: proving the code to the host")
        self._send_private(self._private_member.start().message, [self._host_id])
        return True

    def _private_member_left(self, user_id: str) -> None:
        """Host: a member left; the others get a new group key (epoch + 1)."""
        host = self._private_host
        if host is None:
            return
        had_key = user_id in host.members
        for out in host.member_left(user_id):
            self._send_private(out.message, out.to)
        host.sync_connection(self._connection)  # h13: the new epoch's key
        if had_key:
            self.sync_status.emit(f"New room key (epoch {host.epoch}) after a member left")

    def _private_alert(self, text: str) -> None:
        # Said after the failed attempt that caused it (see _host_control), so the last word
        # the host sees is that the room is closed.
        self._private_alerts.append(text)

    def _leave_in_background(self) -> None:
        # Called on the dispatcher thread: disconnect() waits for queued sends (a pake_failed
        # for the host), which must not block the thread that reads the connection.
        threading.Thread(target=self.disconnect, name="sync-leave", daemon=True).start()

    # --- control messages -------------------------------------------------------------------

    def _send_private(self, message: dict, to: list[str]) -> None:
        outgoing = Message(MessageType(message["type"]), dict(message["payload"]))
        self._submit(self._send_json, outgoing, list(to))

    def _on_private_control(self, message: Message) -> None:
        control = {
            "type": message.type.value,
            "payload": message.payload,
            "sender_id": message.sender_id,
        }
        if self._private_host is not None:
            self._host_control(control)
        elif self._private_member is not None:
            self._member_control(control)

    def _host_control(self, control: dict) -> None:
        host = self._private_host
        member = control["sender_id"] or ""
        failed_before, had_key = host.failed_attempts, member in host.members
        try:
            outgoing = host.handle(control)
        except PrivateRoomError as exc:
            log.warning("ignoring a key-exchange message: %s", exc)
            return
        for out in outgoing:
            self._send_private(out.message, out.to)
            if out.message["type"] == "pake_refused":
                self.sync_status.emit(
                    f"Refused {self._name_of(member)}: the room is closed to new members"
                )
        name = self._name_of(member)
        if host.failed_attempts > failed_before:
            # Our answer's reason, or, when the member found the mismatch first and said so
            # (pake_failed), ours in words (never the member's own text).
            reason = next(
                (o.message["payload"].get("reason") for o in outgoing if o.to == [member]),
                MISMATCH if control["type"] == "pake_failed" else None,
            )
            self._report(
                f"{name} could not join the private room: {reason or 'the key exchange failed'} "
                f"({min(host.failed_attempts, MAX_FAILED_ATTEMPTS)} of {MAX_FAILED_ATTEMPTS} "
                "failed attempts)"
            )
        while self._private_alerts:
            self._report(self._private_alerts.pop(0))
        if member in host.members and not had_key:
            code = host.verification.get(member, "")
            self.sync_status.emit(f"{name} proved the code (verification {code})")
            self.verification_code.emit(member, code)
            self._update_round_members()

    def _member_control(self, control: dict) -> None:
        member = self._private_member
        was_ready = member.ready
        epoch = member.epoch
        try:
            outgoing = member.handle(control)
        except PrivateRoomError as exc:
            self._report(f"The host's key message was refused: {exc}")
            return
        for out in outgoing:
            self._send_private(out.message, out.to)
        member.sync_connection(self._connection)  # h13: the group key, opened as it lands
        if member.error is not None and not member.ready:
            self._report(f"Could not join room {self._room_code}: {member.error}")
            self._private_member = None
            self._leave_in_background()
            return
        if member.ready and not was_ready and not self._private_announced:
            self._private_announced = True
            self.verification_code.emit(member.host_id, member.verification or "")
            self.sync_status.emit(f"Joined the private room (verification {member.verification})")
            self.room_joined.emit(self.room_code)
            self.connected.emit()
        elif member.ready and epoch is not None and member.epoch != epoch:
            self.sync_status.emit(f"New room key (epoch {member.epoch})")

    # --- sealing and opening ----------------------------------------------------------------

    def _private_party(self) -> PrivateRoomHost | PrivateRoomMember | None:
        return self._private_host or self._private_member

    def _seal_outgoing(self, data: Any, transfer_id: int, kind: int) -> Any:
        """The wire form of a framed binary: sealed in a private room, unchanged in an open
        one. Raises PrivateRoomError before the key exchange ended (the send fails, said so)."""
        party = self._private_party()
        if party is None:
            if self._private_code is not None:
                raise PrivateRoomError("the key exchange with the host has not finished")
            return data
        party.sync_connection(self._connection)  # h13: e.g. a new connection after a drop
        return party.seal_transfer(data, transfer_id, kind)

    def _open_incoming(self, sender: str, transfer_id: int, kind: int, payload: Any) -> Any:
        """The plaintext of a whole framed binary, or None (said why) when it must not be
        used. Unchanged in an open room."""
        if self._private_code is None:
            if self._mode == "relay" and _is_sealed(payload):
                # Joined a private room by its routing code alone: say what is missing.
                if not self._told_sealed:
                    self._told_sealed = True
                    self._report(
                        f"Room {self._room_code} is private: what its members send is "
                        "encrypted. Join with the full code the host shared (the 6 "
                        "characters, a dash and the secret part)"
                    )
                return None
            return payload
        party = self._private_party()
        if party is None or not self.private_ready:
            log.info("dropping transfer %d from %s: no room key yet", transfer_id, sender)
            return None
        party.sync_connection(self._connection)  # h13: e.g. a new connection after a drop
        buffer = payload
        if memoryview(payload).readonly:
            buffer = bytearray(payload)  # opened in place
        try:
            return party.open_transfer(sender, transfer_id, kind, buffer)
        except PrivateRoomError as exc:
            self._report(f"Refused a transfer from {self._name_of(sender)}: {exc}")
            return None

    def _private_round_members(self, ids: list[str]) -> list[str]:
        """Host: a round waits only for members that proved the code (and the host itself)."""
        host = self._private_host
        if host is None:
            return ids
        confirmed = set(host.members) | {self.user_id}
        return [i for i in ids if i in confirmed]


PRIVATE_CONTROL_TYPES = frozenset(MessageType(t) for t in CONTROL_TYPES)


def _is_sealed(payload: Any) -> bool:
    """A sealed transfer (its header parses: magic, version, sizes), not the weight codec; a
    global model carries the host's signature after it."""
    view = memoryview(payload).cast("B")
    for sealed in (view, view[: max(len(view) - SIGNATURE_BYTES, 0)]):
        try:
            crypto.sealed_header(sealed)
        except (ValueError, TypeError):
            continue
        return True
    return False
