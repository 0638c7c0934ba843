"""The session's part in private rooms (docs/security.md, docs/network-api.md "Private rooms"):
wires the key exchange and sealing of private_room.py into the session (room_session.py).
Like the session it does no I/O: what it has to send or say comes back as actions.

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
* Resume (docs/security.md, "Resume and relay restarts"): a member back by resume runs the
  exchange again, when the attested host is there (after a relay restart it may be back
  first: then on `host_back`); the host takes members a round gave up on off the key
  (`members_gone`) and sends a resumed member the global it missed once it re-keyed.
* Private rooms need our relay: directed delivery (so a key exchange reaches only its peer)
  and an attested host (so a member knows whom to run CPace with). The original relay has
  neither, and original clients cannot run CPace: mixed labs use an open room.
"""

from __future__ import annotations

import logging
from typing import Any

from . import _relayclient as crypto
from .private_code import SECRET_MIN_LENGTH, RoomCode, new_secret
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
from .session_actions import Emit, Leave, Report, SendJson

log = logging.getLogger(__name__)

#: Why a private room cannot be used on a relay without directed delivery and host_id.
NEEDS_OUR_RELAY = (
    "Private rooms need a relay with directed delivery and an attested host (this project's "
    "relay); {url} does not offer them. Create an open room instead (private=False, "
    "--open on the command line, 'Open room' in the app) if you trust this relay"
)


class PrivateRoomPart:
    """The private side of a session: the full code, and the host's or member's key state.
    The session calls it at the moments below, passing itself (read through its public
    attributes only)."""

    def __init__(self) -> None:
        self.code: RoomCode | None = None  # the full code, when the room is private
        self._create_private = False
        self._secret_length = SECRET_MIN_LENGTH
        self.host: PrivateRoomHost | None = None
        self.member: PrivateRoomMember | None = None
        self._announced = False  # member: room_joined was emitted for this session
        self._alerts: list[str] = []  # host: alerts of the control message in hand
        self._missed_globals: dict[str, int] = {}  # host: member -> round it missed, held
        self._told_sealed = False  # open-room client: told once that the room is private

    # --- what the user sees ------------------------------------------------------------------

    @property
    def is_private(self) -> bool:
        return self.code is not None

    @property
    def ready(self) -> bool:
        """Host: always (it draws the group key); member: holds the group key."""
        if self.host is not None:
            return True
        return self.member is not None and self.member.ready

    @property
    def verification_codes(self) -> dict[str, str]:
        if self.host is not None:
            return dict(self.host.verification)
        member = self.member
        if member is not None and member.verification:
            return {member.host_id: member.verification}
        return {}

    @property
    def closed(self) -> bool:
        return self.host is not None and self.host.closed

    def reopen(self) -> list:
        if self.host is None:
            return []
        self.host.reopen()
        return [Emit("sync_status", ("The room admits new members again",))]

    # --- the room's life --------------------------------------------------------------------

    def will_create(self, private: bool, secret_length: int) -> None:
        """Before creating a room; ValueError on a secret length out of range."""
        new_secret(secret_length)
        self.code = None
        self._create_private = bool(private)
        self._secret_length = secret_length

    def will_join(self, code: RoomCode) -> None:
        self.code = code if code.private else None
        self._create_private = False

    def reset_session(self, mode: str) -> None:
        """A new connection begins (LAN sessions are open: docs/security.md)."""
        self.host = None
        self.member = None
        self._announced = False
        self._told_sealed = False
        self._missed_globals.clear()
        if mode != "relay":
            self.code = None

    @staticmethod
    def relay_supports(session: Any) -> bool:
        capabilities = session.capabilities
        return capabilities is not None and all(
            capabilities.supports(f) for f in (Feature.DIRECTED, Feature.HOST_ID)
        )

    def room_created(self, session: Any) -> tuple[bool, list]:
        """Host, the relay made the room: set up the key. False (said why, leaving) if the
        relay cannot carry a private room."""
        if not self._create_private:
            return True, []
        if not self.relay_supports(session):
            return False, [Report(NEEDS_OUR_RELAY.format(url=session.url)), Leave()]
        # A host that re-created its room after a drop keeps its secret part; the members
        # need the new routing code anyway.
        secret = self.code.secret if self.code else None
        self.code = RoomCode(session.routing_code or "", secret or new_secret(self._secret_length))
        self.member = None
        self.host = PrivateRoomHost(self.code, session.user_id, on_alert=self._alerts.append)
        return True, []

    def room_joined(self, session: Any, resumed: bool) -> tuple[bool, list]:
        """Member, in the room: start the key exchange with the host. True when `room_joined`
        waits for its end (or for a failure, reported)."""
        if self.code is None or session.is_host:
            return False, []
        if resumed and self.member is not None:
            # Back after a drop with the key we held; it may have been rotated while we were
            # away, so the exchange runs again and the host answers with the current key.
            self.member.mark_stale()
            if session.host_id != self.member.host_id:
                # After a relay restart a member may be back before its host: an exchange sent
                # now would be dropped (nobody holds the host's id). It goes when the host is.
                text = f"Back in room {session.routing_code}: waiting for the host to renew the key"
                return True, [Emit("sync_status", (text,))]
            return True, self.host_back(session)
        if not self.relay_supports(session) or session.host_id is None:
            why = NEEDS_OUR_RELAY.format(url=session.url)
            if self.relay_supports(session):
                why = "The room's host is not in the room: ask the host to open it again"
            return True, [Report(f"Cannot join room {session.routing_code}: {why}"), Leave()]
        self.member = PrivateRoomMember(self.code, session.user_id, session.host_id)
        return True, [
            Emit("sync_status", (f"In room {session.routing_code}: proving the code to the host",)),
            _send(self.member.start().message, [session.host_id]),
        ]

    def host_back(self, session: Any) -> list:
        """Member: the attested host is (back) in the room. A re-keying the host could not
        answer, because it was away when we resumed or left before answering, runs again
        (the host keeps its key state across its own resume: private_room.py)."""
        member = self.member
        if member is None or session.host_id != member.host_id or not member.rekeying:
            return []
        out = member.resume()
        return [_send(out.message, out.to)]

    def member_left(self, user_id: str) -> list:
        """Host: a member left; the others get a new group key (epoch + 1)."""
        host = self.host
        self._missed_globals.pop(user_id, None)
        if host is None:
            return []
        had_key = user_id in host.members
        actions = [_send(out.message, out.to) for out in host.member_left(user_id)]
        if had_key:
            actions.append(
                Emit("sync_status", (f"New room key (epoch {host.epoch}) after a member left",))
            )
        return actions

    def members_gone(self, user_ids: set[str]) -> list:
        """Host: members it stopped waiting for without a word that they left (see
        PrivateRoomHost.members_gone) are off the key; the others get a new one."""
        host = self.host
        if host is None:
            return []
        epoch = host.epoch
        actions: list = [_send(out.message, out.to) for out in host.members_gone(user_ids)]
        if host.epoch != epoch:
            text = f"New room key (epoch {host.epoch}): members who did not come back are off it"
            actions.append(Emit("sync_status", (text,)))
        return actions

    def round_members(self, session: Any, ids: list[str]) -> list[str]:
        """Host: a round waits only for members that proved the code (and the host itself)."""
        if self.host is None:
            return ids
        confirmed = set(self.host.members) | {session.user_id}
        return [i for i in ids if i in confirmed]

    # --- control messages -------------------------------------------------------------------

    def control(self, session: Any, message: Message) -> list:
        control = {
            "type": message.type.value,
            "payload": message.payload,
            "sender_id": message.sender_id,
        }
        if self.host is not None:
            return self._host_control(session, control)
        if self.member is not None:
            return self._member_control(session, control)
        return []

    def _host_control(self, session: Any, control: dict) -> list:
        host = self.host
        member = control["sender_id"] or ""
        failed_before, had_key = host.failed_attempts, member in host.members
        # A member back by resume runs the exchange again: one that held the key before, or
        # was taken off it while away (members_gone).
        back = had_key or member in host.returning
        try:
            outgoing = host.handle(control)
        except PrivateRoomError as exc:
            log.warning("ignoring a key-exchange message: %s", exc)
            return []
        name = session.name_of(member)
        actions: list = []
        for out in outgoing:
            actions.append(_send(out.message, out.to))
            if out.message["type"] == "pake_refused":
                text = f"Refused {name}: the room is closed to new members"
                actions.append(Emit("sync_status", (text,)))
        if host.failed_attempts > failed_before:
            # Our answer's reason, or, when the member found the mismatch first and said so
            # (pake_failed), ours in words (never the member's own text).
            reason = next(
                (o.message["payload"].get("reason") for o in outgoing if o.to == [member]),
                MISMATCH if control["type"] == "pake_failed" else None,
            )
            actions.append(
                Report(
                    f"{name} could not join the private room: "
                    f"{reason or 'the key exchange failed'} "
                    f"({min(host.failed_attempts, MAX_FAILED_ATTEMPTS)} of {MAX_FAILED_ATTEMPTS} "
                    "failed attempts)"
                )
            )
        # Said after the failed attempt that caused it, so the last word the host sees is
        # that the room is closed.
        actions.extend(Report(text) for text in self._alerts)
        self._alerts.clear()
        if member in host.members and not had_key:
            code = host.verification.get(member, "")
            actions.append(Emit("sync_status", (f"{name} proved the code (verification {code})",)))
            actions.append(Emit("verification_code", (member, code)))
            actions.extend(session.round_members_changed())
        if back and control["type"] == "pake_confirm" and member in host.members:
            # Re-keyed after a resume: it can open the global model it missed now (unless a
            # newer round's reached it meanwhile).
            missed_round = self._missed_globals.pop(member, None)
            if missed_round is not None and missed_round == session.aggregation_round:
                actions.extend(session.resend_global_model(member))
        return actions

    def hold_missed_global(self, user_id: str, aggregation_round: int) -> None:
        """Host: `user_id`, back by resume, missed the global model of `aggregation_round`;
        it goes once the member's re-run exchange confirmed, under the key it then holds."""
        self._missed_globals[user_id] = aggregation_round

    def _member_control(self, session: Any, control: dict) -> list:
        member = self.member
        was_ready = member.ready
        epoch = member.epoch
        try:
            outgoing = member.handle(control)
        except PrivateRoomError as exc:
            return [Report(f"The host's key message was refused: {exc}")]
        actions: list = [_send(out.message, out.to) for out in outgoing]
        if member.error is not None and not member.ready:
            self.member = None
            actions += [
                Report(f"Could not join room {session.routing_code}: {member.error}"),
                Leave(),
            ]
            return actions
        if member.error is not None:
            # A re-keying after a resume refused: the key held stays, and what the host seals
            # under a newer one is refused as it arrives, said so each time.
            actions.append(Report(f"The host did not renew this member's room key: {member.error}"))
            member.error = None
        if member.ready and not was_ready and not self._announced:
            self._announced = True
            actions += [
                Emit("verification_code", (member.host_id, member.verification or "")),
                Emit(
                    "sync_status",
                    (f"Joined the private room (verification {member.verification})",),
                ),
                Emit("room_joined", (str(self.code),)),
                Emit("connected"),
            ]
        elif member.ready and epoch is not None and member.epoch != epoch:
            actions.append(Emit("sync_status", (f"New room key (epoch {member.epoch})",)))
        return actions

    # --- sealing and opening ----------------------------------------------------------------

    def _party(self) -> PrivateRoomHost | PrivateRoomMember | None:
        return self.host or self.member

    def sync_connection(self, connection: Any) -> None:
        """Gives `connection` the current group key so it opens transfers as their chunks land
        (private_room.py); a no-op when it holds it already or the room is open."""
        party = self._party()
        if party is not None and connection is not None:
            party.sync_connection(connection)

    def seal(self, data: Any, transfer_id: int, kind: int) -> Any:
        """The wire form of a framed binary: sealed in a private room, unchanged in an open
        one. Raises PrivateRoomError before the key exchange ended (the send fails, said so)."""
        party = self._party()
        if party is None:
            if self.code is not None:
                raise PrivateRoomError("the key exchange with the host has not finished")
            return data
        return party.seal_transfer(data, transfer_id, kind)

    def open(
        self, session: Any, sender: str, transfer_id: int, kind: int, payload: Any
    ) -> tuple[Any, list]:
        """The plaintext of a whole framed binary, or None (and why) when it must not be
        used. Unchanged in an open room."""
        if self.code is None:
            if session.mode == "relay" and _is_sealed(payload):
                # Joined a private room by its routing code alone: say what is missing.
                if self._told_sealed:
                    return None, []
                self._told_sealed = True
                return None, [
                    Report(
                        f"Room {session.routing_code} is private: what its members send is "
                        "encrypted. Join with the full code the host shared (the 6 "
                        "characters, a dash and the secret part)"
                    )
                ]
            return payload, []
        party = self._party()
        if party is None or not self.ready:
            log.info("dropping transfer %d from %s: no room key yet", transfer_id, sender)
            return None, []
        buffer = payload
        if memoryview(payload).readonly:
            buffer = bytearray(payload)  # opened in place
        try:
            return party.open_transfer(sender, transfer_id, kind, buffer), []
        except PrivateRoomError as exc:
            return None, [Report(f"Refused a transfer from {session.name_of(sender)}: {exc}")]


def _send(message: dict, to: list[str]) -> SendJson:
    """A key-exchange message of private_room.py, directed."""
    return SendJson(Message(MessageType(message["type"]), dict(message["payload"])), list(to))


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
