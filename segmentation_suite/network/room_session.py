"""The session without I/O: one member's view of a room (or LAN session) as a state machine.

Events go in — the driver opened a connection or failed to, a parsed text message arrived, a
whole binary transfer (or an original client's unframed binary) arrived, the connection
closed, a timer fired, the user called something — and each returns a list of actions
(session_actions.py) for the driver to carry out: send JSON, send a global model, emit a
signal, report an error, start a timer, open or close a connection. Like h11 or websockets'
`Protocol`, nothing here touches a socket, a thread or the clock, so tests drive it directly.

The session composes parts with narrow interfaces, each called at its moments:

* `HostRounds` (host.py): the host's rounds, whom they wait for, when they close;
* `ReconnectPolicy` (reconnect.py): how long to wait before each try, how many tries;
* `PrivateRoomPart` (private_client.py): the key exchange and sealing of private rooms;
* `MixedRoomPart` (mixed_room.py): who speaks the original app's format, pairing its
  unframed binaries with their announcements;
* a role: `MemberRole` for a room member or host, `LanHub` (server.py) for a LAN session's
  server, which welcomes members and acknowledges pushes.

Parts read the session through its public attributes only; the session alone changes its
state (a part that needs a change calls a session event, as the private part calls
`round_members_changed` when a member proved the code). The driver feeds one event at a time
(it holds a lock around each).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from . import legacy_format
from .codec import decode_weights
from .deltas import ACCEPTS_DELTAS_KEY, GlobalModelLedger, MemberDeltas
from .host import HostRounds, RoundStep, as_num_samples, describe_contributors
from .mixed_room import MixedRoomPart, OriginalTransfer
from .private_client import PRIVATE_CONTROL_TYPES, PrivateRoomPart
from .protocol import (
    ErrorCode,
    Feature,
    FrameKind,
    Message,
    MessageType,
    RelayCapabilities,
    create_goodbye_message,
    create_hello_message,
    create_request_model_message,
    create_room_message,
    create_session_info_message,
    join_room_message,
    leave_room_message,
    parse_relay_capabilities,
    resume_message,
)
from .reconnect import REJOIN_REFUSALS, ReconnectPolicy
from .session_actions import (
    CloseConnection,
    Emit,
    OpenConnection,
    Report,
    ResendLastTransfer,
    SendGlobalData,
    SendGlobalModel,
    SendJson,
    StartTimer,
)

log = logging.getLogger(__name__)

#: The relay's close reason when a LAN session's host left: the session is over, not dropped.
LAN_HOST_LEFT = "the LAN host left"

#: Marks an announcement whose binaries carry the frame header (ignored by original clients).
FRAMED_FIELD = "framed"

#: How many whole transfers a receiver remembers by (sender, transfer id) to drop repeats.
REMEMBERED_TRANSFERS = 1024

#: Timer names (`StartTimer.name`).
RECONNECT_TIMER = "reconnect"
REJOIN_TIMER = "rejoin"
ROUND_TIMER = "round"

RELAY_ERRORS = {
    ErrorCode.ROOM_NOT_FOUND.value: "Room {code} not found: check the code, or ask the host to "
    "create the room again",
    ErrorCode.ROOM_FULL.value: "Room {code} is full: the relay admits no more members",
    ErrorCode.TOO_MANY_ROOMS.value: "The relay has as many rooms as it allows; try again later",
    ErrorCode.RATE_LIMITED.value: "Too many join attempts from this address; try again in "
    "{retry_after} s",
    ErrorCode.USER_ID_TAKEN.value: "Room {code} already has a member with this client's id "
    "({user_id}); the relay keeps it for that member. Join again with a new client",
    ErrorCode.INVALID_RESUME_TOKEN.value: "The relay refused to resume the session in room {code}",
    ErrorCode.NO_HOST.value: "The LAN session at {url} has no host: ask the host to start it again",
    ErrorCode.LAN_SESSION.value: "{url} serves a LAN session, not relay rooms: join it by its "
    "address (LAN mode)",
}


class RecentTransfers:
    """The (sender, transfer id) of the last whole transfers received: a transfer sent again
    after its sender's connection dropped mid-way may have arrived whole the first time."""

    def __init__(self, capacity: int = REMEMBERED_TRANSFERS):
        self._order: deque[tuple[str, int]] = deque()
        self._keys: set[tuple[str, int]] = set()
        self._capacity = capacity

    def first_time(self, key: tuple[str, int]) -> bool:
        """Remembers `key`; False if it was already remembered."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self._capacity:
            self._keys.discard(self._order.popleft())
        return True


class MemberRole:
    """A room's member or host (the creator): nothing beyond the session's own behaviour.
    A role is told of the moments a LAN server acts on; each returns actions."""

    def opening_message(self, session: RoomSession) -> Message:
        """The first message on a new session's connection."""
        if session.mode == "direct":
            return create_hello_message(session.user_id, session.display_name)
        if session.routing_code is None:
            return create_room_message(session.user_id, session.display_name)
        return join_room_message(session.routing_code, session.user_id, session.display_name)

    def room_created(self, session: RoomSession, payload: dict) -> list:
        return []

    def member_joined(self, session: RoomSession, user_id: str, name: str) -> list:
        return []

    def member_left(self, session: RoomSession, user_id: str, name: str) -> list:
        return []

    def push_taken(self, session: RoomSession, sender: str, received: bool) -> list:
        return []

    def round_complete(self, session: RoomSession, weights: dict) -> list:
        return []


class RoomSession:
    """One member's session; see the module docstring."""

    def __init__(
        self,
        user_id: str,
        *,
        rounds: HostRounds | None = None,
        reconnect: ReconnectPolicy | None = None,
        private: PrivateRoomPart | None = None,
        mixed: MixedRoomPart | None = None,
        role: MemberRole | None = None,
        compression: str | None = "auto",
    ):
        self.user_id = user_id
        self.rounds = rounds or HostRounds()
        self.reconnect = reconnect or ReconnectPolicy()
        self.private = private or PrivateRoomPart()
        self.mixed = mixed or MixedRoomPart()
        self.role = role or MemberRole()
        # Weights as deltas against the global model both sides hold (deltas.py).
        self.member_deltas = MemberDeltas(compression)
        self.ledger = GlobalModelLedger(compression)
        self.display_name = ""
        self.mode: str | None = None  # "relay" or "direct"
        self.url = ""
        self.routing_code: str | None = None
        self.capabilities: RelayCapabilities | None = None
        self.resume_token: str | None = None
        self.in_room = False
        self.closing = False
        self.reconnecting = False
        self.users: list[dict] = []
        self.host_id: str | None = None
        self.host_attested = False  # a relay named the host (`host_id`) in this session
        self.architecture = ""
        self.global_weights: dict | None = None
        self.aggregation_round = 0
        self.global_contributors: int | None = None
        self.own_weights: dict | None = None  # this client's last push: the room's layout
        # The newest transfer sent whole (opaque: the driver's), offered again after a resume.
        self.last_transfer: Any = None
        # Host: who was in the room when the newest global model was broadcast.
        self.global_model_reached: set[str] = set()
        # Members not back yet after this client resumed (say, after a relay restart).
        self.away_members: set[str] = set()
        # Members this client announced as gone (user_left_room): one that resumes after its
        # grace period expired is announced again, so joins and leaves stay balanced.
        self.reported_left: set[str] = set()
        self._reconnect_tries = 0  # new connections tried since the drop
        self._rejoin_tries = 0  # plain re-joins since a refused resume
        self._received = RecentTransfers()
        self._pending_crops: dict[str, deque[dict]] = {}  # framed crops' headers, per sender
        self._crop_images: dict[str, bytes] = {}  # a framed crop's image, until its mask
        self._timers: dict[str, int] = {}  # the live token of each timer name
        self._timer_count = 0

    # --- what the driver and the parts read ------------------------------------------------

    @property
    def is_host(self) -> bool:
        return self.host_id is not None and self.host_id == self.user_id

    @property
    def shown_code(self) -> str | None:
        """The code to share: with its secret part in a private room."""
        if self.private.code is not None:
            return str(self.private.code)
        return self.routing_code

    @property
    def relay_attests_host(self) -> bool:
        """Whether the relay names the host in membership messages (feature `host_id`, or a
        `host_id` seen in this session)."""
        capabilities = self.capabilities
        advertised = capabilities is not None and capabilities.supports(Feature.HOST_ID)
        return advertised or self.host_attested

    def member_ids(self) -> list[str]:
        return [u.get("user_id") for u in self.users]

    def name_of(self, user_id: str) -> str:
        for user in self.users:
            if user.get("user_id") == user_id:
                return user.get("display_name") or user_id
        return user_id

    def recipients(self) -> list[str] | None:
        """Recipients of what members send to the host; None before a host is known."""
        return [self.host_id] if self.host_id and not self.is_host else None

    def host_missing(self, what: str) -> list:
        """A report when a member cannot `what` because the relay attests no host now:
        sending to everyone instead would hand it to whoever is in the room."""
        if self.host_id is None and self.relay_attests_host and not self.is_host:
            return [
                Report(
                    f"Cannot {what}: the room's host is not in the room; try again when it is back"
                )
            ]
        return []

    def ready_to_resend(self, to: list[str] | None) -> bool:
        """In the room with every recipient of an interrupted transfer present. A member's
        push waits for the attested host: after a relay restart, whoever holds the host's id
        before the host is back is not the host."""
        present = set(self.member_ids())
        to_host = not self.is_host and self.relay_attests_host
        return (
            self.in_room
            and all(user in present for user in to or ())
            and (not to_host or list(to or ()) == [self.host_id])
        )

    @property
    def receiving(self) -> bool:
        return self.mixed.receiving

    # --- the user's calls --------------------------------------------------------------------

    def begin(self, mode: str, url: str, display_name: str, routing_code: str | None) -> list:
        """A new session: resets what the last one knew; the connection opens next."""
        self.display_name = display_name or self.user_id
        self.mode = mode
        self.url = url
        self.routing_code = routing_code
        self.closing = False
        self.in_room = False
        self.reconnecting = False
        self.resume_token = None
        self.capabilities = None
        self.users = []
        self.host_id = None
        self.host_attested = False
        self.away_members.clear()
        self.global_model_reached.clear()
        self.last_transfer = None
        self._reconnect_tries = 0
        self._rejoin_tries = 0
        self._timers.clear()
        self.private.reset_session(mode)
        if mode == "direct":
            status = f"Connecting to the LAN host at {url}"
        else:
            status = f"Connecting to {url}"
        return [Emit("sync_status", (status,)), OpenConnection()]

    def leave(self) -> list:
        """disconnect(): the session is over. The goodbye (and `leave_room`) to send if the
        connection is still open."""
        was_in_room = self.in_room
        self.closing = True
        self._timers.clear()
        self.rounds.shutdown()
        if not was_in_room:
            return []
        farewell = [SendJson(create_goodbye_message(self.user_id), now=True)]
        if self.mode == "relay":
            farewell.append(SendJson(leave_room_message(), now=True))
        return farewell

    def request_global_model(self) -> list:
        """A member asks the host; the host has it already."""
        if self.is_host:
            if self.global_weights is None:
                return []
            return [Emit("global_model_received", (self.global_weights,))]
        return [SendJson(create_request_model_message(self.user_id), self.recipients())]

    def set_architecture(self, architecture: str) -> list:
        self.architecture = architecture
        return [SendJson(create_session_info_message(architecture))]

    def control_message(self, control: dict, to: list[str] | None) -> list:
        message = create_session_info_message(self.architecture)
        message.payload["control"] = dict(control)
        return [SendJson(message, to)]

    def exclude_member(self, user_id: str, excluded: bool) -> list:
        if excluded:
            self.rounds.excluded.add(user_id)
        else:
            self.rounds.excluded.discard(user_id)
        return self.round_members_changed()

    def set_host_trains(self, value: bool) -> list:
        self.rounds.host_trains = bool(value)
        return self.round_members_changed()

    def own_push(self, weights: dict, num_samples: float, epoch: int) -> list:
        """The host's own push goes straight into its round, counted as float16 values like
        every push that crossed the wire (rounded as it is added: neither encoded nor
        decoded); the first one makes it a training host."""
        actions = [] if self.rounds.host_trains else self.set_host_trains(True)
        self.own_weights = weights
        metadata = {"num_samples": num_samples, "epoch": epoch}
        return actions + self.accept_push(self.user_id, weights, metadata, float16_values=True)[1]

    def trigger_aggregation(self) -> tuple[bool, list]:
        return self._round_step(self.rounds.close_now())

    def publish_global_model(
        self, weights: dict, aggregation_round: int
    ) -> tuple[dict | None, list]:
        """Host: `weights` go to every member as the global model of `aggregation_round`, as a
        closed round's do (a saved model a session starts from is round 0's). Returns what
        the members hold (rounded as the wire carries it), or None when it cannot be sent."""
        before = self.ledger.latest
        actions = self._round_complete(weights, aggregation_round, [])
        latest = self.ledger.latest
        return (latest if latest is not None and latest is not before else None), actions

    def set_global_weights(self, weights: dict) -> list:
        """The model a member gets on request_model until a round closes."""
        self.global_weights = weights
        return []

    def note_own_push(self, weights: dict) -> None:
        """A member's push: its layout is the room's (bounds what an original model may be)."""
        self.own_weights = weights

    def transfer_sent(self, transfer: Any) -> None:
        """The driver's connection took a whole transfer: the one to offer again after a
        resume, in case a relay that died held its tail."""
        self.last_transfer = transfer

    def global_model_sent(self, to: list[str] | None, present_before: set[str]) -> None:
        """The driver sent a global model: who was there all along got all of it."""
        if to is None:
            self.global_model_reached = present_before & set(self.member_ids())
        else:
            self.global_model_reached.update(to)

    # --- the connection -------------------------------------------------------------------

    def connection_opened(self) -> list:
        if self.reconnecting:
            return [SendJson(self.rejoin_message(), now=True)]
        return [SendJson(self.role.opening_message(self), now=True)]

    def connection_failed(self, text: str) -> list:
        """Opening a connection failed; `text` says why in words."""
        if self.reconnecting and not self.closing:
            log.info("reconnect attempt %d failed: %s", self._reconnect_tries, text)
            return self._next_reconnect()
        return [Report(text)]

    def closed(self, code: int | None, reason: str | None) -> list:
        closing, was_in_room = self.closing, self.in_room
        # Lost while waiting for the host to re-open the room: keep trying all the same.
        waiting_for_room = self.reconnecting
        self.in_room = False
        self.mixed.clear()
        if closing or not (was_in_room or waiting_for_room):
            if was_in_room:
                return [Emit("disconnected")]
            if not closing:  # before the relay answered the join: say so, never hang
                return [
                    Report(
                        f"The connection to {self.url} closed before the session began "
                        f"({code} {reason or ''}); try again"
                    )
                ]
            return []
        if self.mode == "direct" and reason == LAN_HOST_LEFT:
            return [Report("The LAN host ended the session"), Emit("disconnected")]
        log.warning("connection to %s lost (%s %s); reconnecting", self.url, code, reason)
        if was_in_room:
            # A fresh drop. A close while still reconnecting (a relay that accepts and closes
            # before the room answers) spends a try instead: the tries stay bounded.
            self._reconnect_tries = 0
        self.reconnecting = True
        status = Emit("sync_status", (f"Connection lost ({code} {reason or ''}); reconnecting",))
        return [status, *self._next_reconnect()]

    def _next_reconnect(self) -> list:
        """The next try after a backoff, or, when all were spent, the end of the session."""
        if self._reconnect_tries >= self.reconnect.attempts:
            self._end_session()
            return [
                Report(f"Could not reconnect to {self.url} after {self.reconnect.attempts} tries"),
                Emit("disconnected"),
            ]
        delay = self.reconnect.delay(self._reconnect_tries)
        self._reconnect_tries += 1
        return [self._timer(RECONNECT_TIMER, delay)]

    def _end_session(self) -> None:
        """Nothing more to wait for: interrupted sends fail now instead of going again."""
        self.reconnecting = False
        self.closing = True
        self._timers.clear()

    def rejoin_message(self) -> Message:
        if self.mode == "direct":
            return create_hello_message(self.user_id, self.display_name)
        if self.resume_token and self.routing_code:
            return resume_message(
                self.routing_code, self.user_id, self.display_name, self.resume_token
            )
        if self.is_host:
            return create_room_message(self.user_id, self.display_name)
        return join_room_message(self.routing_code or "", self.user_id, self.display_name)

    # --- timers -----------------------------------------------------------------------------

    def _timer(self, name: str, delay: float) -> StartTimer:
        self._timer_count += 1
        self._timers[name] = self._timer_count
        return StartTimer(name, delay, self._timer_count)

    def timer_fired(self, name: str, token: int) -> list:
        """A timer the session started; one since replaced or cancelled is ignored."""
        if name == ROUND_TIMER:
            return self._round_step(self.rounds.timer_fired(token))[1]
        if self._timers.get(name) != token:
            return []
        del self._timers[name]
        if self.closing:
            return []
        if name == RECONNECT_TIMER:
            return [OpenConnection()]
        if name == REJOIN_TIMER and self.reconnecting:
            return [SendJson(self.rejoin_message(), now=True)]
        return []

    # --- text messages ------------------------------------------------------------------------

    def message(self, message: Message) -> list:
        """A parsed text message from the relay (or, through it, a member)."""
        if message.to is not None and self.user_id not in message.to:
            return []  # directed at others; a v1 relay delivers it to everyone
        if message.type in PRIVATE_CONTROL_TYPES:
            return self.private.control(self, message)
        handler = _HANDLERS.get(message.type)
        return handler(self, message) if handler is not None else []

    def _on_room_created(self, message: Message) -> list:
        payload = message.payload
        resumed = self.reconnecting
        actions = self._enter_room(
            payload, [{"user_id": self.user_id, "display_name": self.display_name}]
        )
        self.host_id = self.user_id
        self._rejoin_tries = 0
        actions += self.role.room_created(self, payload)
        created, more = self.private.room_created(self)
        actions += more
        if not created:
            return actions
        if resumed:
            actions.append(
                Emit("sync_status", (f"Room {self.routing_code} re-created after reconnecting",))
            )
        return actions + [
            Emit("room_created", (self.shown_code,)),
            Emit("connected"),
            Emit("user_list_updated", (list(self.users),)),
        ]

    def _on_room_joined(self, message: Message) -> list:
        payload = message.payload
        resumed = bool(payload.get("resumed"))
        users = [u for u in payload.get("users", []) if isinstance(u, dict)]
        if resumed:
            # A restarted relay re-opens a room one resume at a time: who is not back yet is
            # away, not gone, and a round must not close without it (until its timeout).
            back = {u.get("user_id") for u in users}
            self.away_members |= set(self.member_ids()) - back - {self.user_id}
        actions = self._enter_room(payload, users)
        self._take_attested_host(payload)
        if not self.relay_attests_host:
            # A relay that does not name the host: never guess it from the order of `users`
            # (the original Worker reorders it after idling); the creator says so (peer_hello).
            # After a relay restart a member may resume before the host: the host is then only
            # late, not gone. A host that really left is told by user_left.
            ids = [u.get("user_id") for u in users]
            if self.host_id not in ids and not (resumed and self.host_id):
                self.host_id = None
            actions += self.mixed.peer_hello(self)
        if self._rejoin_tries:
            self._rejoin_tries = 0
            text = f"Back in room {self.routing_code}: the host re-opened it"
            actions.append(Emit("sync_status", (text,)))
        if resumed:
            actions.append(Emit("sync_status", (f"Back in room {self.routing_code}",)))
        waits, more = self.private.room_joined(self, resumed)
        actions += more
        if not waits and not resumed:
            actions += [Emit("room_joined", (self.routing_code,)), Emit("connected")]
        actions.append(Emit("user_list_updated", (list(self.users),)))
        return actions + self.round_members_changed()

    def _enter_room(self, payload: dict, users: list[dict]) -> list:
        try:
            capabilities = parse_relay_capabilities(payload)
        except ValueError as exc:
            log.warning("relay capabilities unreadable, speaking v1: %s", exc)
            capabilities = None
        back_after_drop = self.reconnecting
        self.routing_code = payload.get("room_code", self.routing_code)
        self.capabilities = capabilities
        self.resume_token = payload.get("resume_token") or self.resume_token
        self.users = users
        self.mixed.reset(capabilities, users)
        self.in_room = True
        self.reconnecting = False
        self._reconnect_tries = 0
        last, self.last_transfer = self.last_transfer, None
        if back_after_drop and last is not None:
            return [ResendLastTransfer(last)]
        return []

    def _on_user_joined(self, message: Message) -> list:
        payload = message.payload
        newcomer = payload["user_id"]
        name = self._take_users(payload)
        self._take_attested_host(payload)
        actions = self.mixed.peer_hello(self)  # for the newcomer, where the relay attests nothing
        self.away_members.discard(newcomer)
        returned = newcomer in self.reported_left
        self.reported_left.discard(newcomer)
        if payload.get("resumed"):  # it may have missed a global: the next one goes whole
            self.ledger.forget_held(newcomer)
        if not payload.get("resumed") or returned:
            actions.append(Emit("user_joined_room", (name,)))
        actions.append(Emit("user_list_updated", (list(self.users),)))
        actions += self.round_members_changed()
        if self.is_host and self.architecture:
            actions.append(SendJson(create_session_info_message(self.architecture), [newcomer]))
        if payload.get("resumed") and self.is_host and self.private.is_private:
            # Sent once its re-run key exchange confirmed (PrivateRoomPart), unless a newer
            # round's reaches it first: sealed now, it could be under a key it lacks.
            if newcomer not in self.global_model_reached:
                self.global_model_reached.add(newcomer)
                self.private.hold_missed_global(newcomer, self.aggregation_round)
        elif payload.get("resumed"):
            actions += self._send_missed_global_model(newcomer)
        if newcomer == self.host_id and not self.is_host:
            actions += self.private.host_back(self)  # a re-keying it missed runs again
        return actions + self.role.member_joined(self, newcomer, name)

    def _take_users(self, payload: dict) -> str:
        """A `user_joined`/`user_left`'s member list; returns the name of who came or went."""
        self.users = [u for u in payload.get("users", []) if isinstance(u, dict)]
        self.mixed.take_user_list(self.users)
        return payload.get("display_name") or payload["user_id"]

    def _send_missed_global_model(self, user_id: str) -> list:
        """Host: the newest global model to a member back by resume that was not in the room
        when it was broadcast (the relay delivers only to who is there)."""
        missed = user_id not in self.global_model_reached
        self.global_model_reached.add(user_id)
        return self.resend_global_model(user_id) if missed else []

    def resend_global_model(self, user_id: str) -> list:
        """Host: the newest global model, whole, to `user_id` alone."""
        if self.is_host and self.global_weights is not None:
            return [
                SendGlobalModel(
                    self.global_weights,
                    self.aggregation_round,
                    self.global_contributors or 0,
                    [user_id],
                )
            ]
        return []

    def _on_user_left(self, message: Message) -> list:
        payload = message.payload
        left = payload["user_id"]
        name = self._take_users(payload)
        self.ledger.remove(left)
        self._pending_crops.pop(left, None)
        self._crop_images.pop(left, None)
        host_left = left == self.host_id
        self.away_members.discard(left)
        self._take_attested_host(payload)
        actions: list = []
        if host_left and self.relay_attests_host:
            # Nobody else may take the host's place: its global models are the only ones taken.
            actions.append(Emit("sync_status", ("The host left; waiting for it to come back",)))
        elif host_left:
            # Nobody is named host by list order; a new creator would announce itself.
            self.host_id = None
            actions.append(Emit("sync_status", ("The host left the room",)))
        actions += self.private.member_left(left)
        self.reported_left.add(left)
        actions += [
            Emit("user_left_room", (name,)),
            Emit("user_list_updated", (list(self.users),)),
        ]
        actions += self.round_members_changed()
        return actions + self.role.member_left(self, left, name)

    def _on_error(self, message: Message) -> list:
        payload = message.payload
        code = payload.get("code", "")
        if self.reconnecting and code in REJOIN_REFUSALS:
            return self._rejoin_refused(code, payload.get("retry_after"))
        template = RELAY_ERRORS.get(code)
        if template is None:
            text = f"Relay error: {payload['error']}"
            if payload.get("details"):
                text += f" ({payload['details']})"
        else:
            text = template.format(
                code=self.routing_code or "",
                retry_after=payload.get("retry_after", 60),
                url=self.url,
                user_id=self.user_id,
            )
        actions: list = [Report(text)]
        if not self.in_room and code in RELAY_ERRORS:
            # The join or create failed: there is no session to keep this connection for.
            self.closing = True
            actions.append(CloseConnection())
        return actions

    def _rejoin_refused(self, code: str, retry_after: Any = None) -> list:
        """The relay would not take us back. The host opens a new room at once; a member
        waits for the host to re-open its room. Further refusals are retried with backoff a
        bounded number of times (never a tight loop into the relay's rate limits)."""
        if code == ErrorCode.INVALID_RESUME_TOKEN.value:
            self.resume_token = None  # the relay forgot the secret that signed it
        room = self.routing_code or ""
        self._rejoin_tries += 1
        attempts = self.reconnect.attempts
        if self.is_host and self._rejoin_tries == 1:
            text = f"The relay no longer knows room {room}; opening a new room: share its new code"
            return [Emit("sync_status", (text,)), SendJson(self.rejoin_message(), now=True)]
        if self._rejoin_tries > attempts:
            self._end_session()
            text = (
                f"Could not open a new room after {attempts} tries; try again later"
                if self.is_host
                else f"Room {room} did not come back after {attempts} tries: "
                "the host has not re-opened it. Join again with the code the host shares"
            )
            return [Report(text), CloseConnection(), Emit("disconnected")]
        delay = self.reconnect.refusal_delay(self._rejoin_tries, code, retry_after)
        tries = f"try {self._rejoin_tries} of {attempts} in {delay:.0f} s"
        text = (
            f"The relay refused a new room for now ({code}); trying again ({tries})"
            if self.is_host
            else f"The relay does not have room {room} any more (it may have restarted); "
            f"waiting for the host to open it again ({tries})"
        )
        return [Emit("sync_status", (text,)), self._timer(REJOIN_TIMER, delay)]

    def _on_announcement(self, message: Message) -> list:
        """weights_push, global_model, chunk_start: framed ones announce binaries that carry
        their own header; an original client's wait for its unframed binaries."""
        if not message.extra.get(FRAMED_FIELD):
            self.mixed.announce(message)
        return []

    def _on_training_data(self, message: Message) -> list:
        sender = message.sender_id or message.payload["user_id"]
        if message.extra.get(FRAMED_FIELD):
            info = dict(message.payload, sender_id=sender)
            self._pending_crops.setdefault(sender, deque(maxlen=64)).append(info)
        else:
            self.mixed.announce(message)
        return []

    def _on_request_model(self, message: Message) -> list:
        requester = message.sender_id or message.payload["user_id"]
        if not self.is_host:
            return []
        actions: list = [Emit("model_requested", (requester,))]
        # what the other members hold (float16-rounded), whole
        latest = self.ledger.latest if self.ledger.latest is not None else self.global_weights
        if latest is not None:
            actions.append(
                SendGlobalModel(
                    latest, self.aggregation_round, self.global_contributors or 0, [requester]
                )
            )
        return actions

    def _on_session_info(self, message: Message) -> list:
        control = message.payload.get("control")
        if isinstance(control, dict):  # one of our members' control messages (send_control)
            return [Emit("control_received", (message.sender_id or "", control))]
        if message.sender_id:
            self._learn_original_host(message.sender_id)
        self.architecture = message.payload["architecture"]
        return [Emit("architecture_received", (self.architecture,))]

    def _on_goodbye(self, message: Message) -> list:
        log.info("%s says goodbye", message.sender_name or message.payload["user_id"])
        return []

    def _on_peer_hello(self, message: Message) -> list:
        sender = message.sender_id or message.payload["user_id"]
        self.mixed.kinds.announced(sender)
        if not message.payload.get("host") or self.relay_attests_host:
            return []
        if self.host_id is None:
            self.host_id = sender
            return [Emit("sync_status", (f"{self.name_of(sender)} hosts this room",))]
        if self.host_id != sender:
            log.warning("%s also claims to host the room; keeping %s", sender, self.host_id)
        return []

    def _on_welcome(self, message: Message) -> list:
        """LAN mode: the server took this member in."""
        payload = message.payload
        users = [u for u in payload["user_list"] if isinstance(u, dict)]
        resumed = self.reconnecting
        actions = self._enter_room({"relay": payload.get("relay")}, users)
        host_id = payload.get("host_id")
        self.host_id = host_id if isinstance(host_id, str) else None
        if payload.get("architecture"):
            self.architecture = payload["architecture"]
            actions.append(Emit("architecture_received", (self.architecture,)))
        if resumed:
            actions.append(Emit("sync_status", ("Back in the LAN session",)))
        else:
            actions.append(Emit("sync_status", (f"Joined the LAN session at {self.url}",)))
            actions.append(Emit("connected"))
        return actions + [Emit("user_list_updated", (list(self.users),))]

    def _on_user_list(self, message: Message) -> list:
        """LAN mode: the server's list of who is in the session, after every join and leave."""
        before = {u.get("user_id"): u for u in self.users}
        self.users = [u for u in message.payload["users"] if isinstance(u, dict)]
        now = {u.get("user_id"): u for u in self.users}
        actions: list = []
        for user_id in now.keys() - before.keys() - {self.user_id}:
            name = now[user_id].get("display_name") or user_id
            actions.append(Emit("user_joined_room", (name,)))
        for user_id in before.keys() - now.keys():
            name = before[user_id].get("display_name") or user_id
            actions.append(Emit("user_left_room", (name,)))
        return actions + [Emit("user_list_updated", (list(self.users),))]

    def _on_weights_ack(self, message: Message) -> list:
        if message.payload["received"]:
            return [Emit("sync_status", ("The host received these weights",))]
        return [Report("The host could not use these weights")]

    def _take_attested_host(self, payload: dict) -> None:
        """Takes the host from a membership payload's `host_id`, when the relay sent one:
        null means the creator is not in the room (left, or not yet back after a restart),
        and then nobody is the host, whoever holds its id."""
        if "host_id" in payload:
            self.host_id = attested_host(payload)
            self.host_attested = True

    def _learn_original_host(self, sender: str) -> None:
        """Behind a relay that attests nothing, an original host never announces itself: the
        member that tells joiners the architecture, or sends a global model, is the host."""
        if (
            self.host_id is None
            and not self.relay_attests_host
            and not self.mixed.kinds.speaks_frames(sender)
        ):
            self.host_id = sender

    def _may_send_global_model(self, sender: str) -> bool:
        """Only the attested host's global models are taken: any member's would let an
        impostor overwrite everyone's model. Behind a relay that attests nobody (v1), only the
        host that announced itself (peer_hello), or before any did, whoever sends one."""
        if self.relay_attests_host:
            return sender == self.host_id
        return self.host_id is None or sender == self.host_id

    # --- binaries -------------------------------------------------------------------------------

    def transfer_received(self, sender: str, transfer_id: int, kind: int, payload: Any) -> list:
        """A whole framed transfer addressed to us; one its sender sent again after a drop is
        handled once."""
        if not self._received.first_time((sender, transfer_id)):
            log.info("dropping transfer %d from %s: already received", transfer_id, sender)
            return []
        plain, actions = self.private.open(self, sender, transfer_id, kind, payload)
        if plain is None:
            return actions
        return actions + self._on_transfer(sender, kind, plain)

    def _on_transfer(self, sender: str, kind: int, payload: Any) -> list:
        if kind == FrameKind.WEIGHTS:
            if not self.is_host:
                return []
            try:
                reference = self.ledger.reference_for(payload, also_held=self.member_deltas.held)
                weights, metadata = decode_weights(payload, reference=reference)
            except ValueError as exc:
                return [Report(f"Weights from {self.name_of(sender)} are unreadable: {exc}")]
            self.ledger.note_push(sender, metadata)
            return self.accept_push(sender, weights, metadata)[1]
        if kind == FrameKind.GLOBAL_MODEL:
            if not self._may_send_global_model(sender):
                return [self._refused_global(sender)]
            try:
                weights, metadata = self.member_deltas.receive_global(payload)
            except ValueError as exc:
                text = f"The global model from {self.name_of(sender)} is unreadable: {exc}"
                actions: list = [Report(text)]
                if self.member_deltas.held is not None:  # a delta against another global:
                    actions += self.request_global_model()  # ask for the whole model
                return actions
            return self._take_global(weights, metadata["extra"])
        if kind == FrameKind.TRAINING_IMAGE:
            self._crop_images[sender] = bytes(payload)
            return []
        if kind == FrameKind.TRAINING_MASK:
            image = self._crop_images.pop(sender, None)
            pending = self._pending_crops.get(sender)
            if image is None or not pending:
                log.warning("ignoring a training mask from %s without its image", sender)
                return []
            return [Emit("training_data_received", (image, bytes(payload), pending.popleft()))]
        return []

    def _refused_global(self, sender: str) -> Report:
        return Report(
            f"Refused a global model from {self.name_of(sender)}: only the host "
            f"({self.name_of(self.host_id or '')}) sends global models in this room"
        )

    def _take_global(self, weights: dict, info: dict) -> list:
        self.global_weights = weights
        round_number = info.get("aggregation_round")
        if isinstance(round_number, int):
            self.aggregation_round = round_number
        count = info.get("contributor_count")
        self.global_contributors = count if isinstance(count, int) and count > 0 else None
        return [
            Emit("sync_status", (f"Global model of round {self.aggregation_round} received",)),
            Emit("global_model_received", (weights,)),
        ]

    def unframed_binary(self, data: Any) -> list:
        """A binary without the frame header: an original client's, paired with the
        announcement that preceded it."""
        if self.private.is_private:
            log.warning("ignoring an unframed binary: a private room carries sealed ones only")
            return []
        whole, dropped = self.mixed.pair(data, self.legacy_limit())
        if dropped is not None:
            name = self.name_of(dropped)
            return [Report(f"Weights from {name} dropped: larger than this room's model")]
        if whole is None:
            return []
        return self._on_original_transfer(whole)

    def legacy_limit(self) -> int:
        """How far an original-format payload may expand: 4x this room's model, when known."""
        reference = self.global_weights or self.own_weights
        capabilities = self.capabilities
        max_size = capabilities.limits.get("max_message_size") if capabilities else None
        if not isinstance(max_size, int) or max_size <= 0:
            max_size = None
        return legacy_format.expansion_limit(reference, max_size)

    def _on_original_transfer(self, whole: OriginalTransfer) -> list:
        sender, info = whole.sender, whole.message.payload
        name = self.name_of(sender)
        if whole.kind == FrameKind.TRAINING_IMAGE:
            refused = self.mixed.check_crop(name, whole.image, whole.mask)
            if refused:
                return refused
            crop = dict(info, sender_id=sender)
            return [Emit("training_data_received", (whole.image, whole.mask, crop))]
        limit = self.legacy_limit()
        if whole.kind == FrameKind.WEIGHTS:
            if not self.is_host:
                return []  # a push for the host; a relay without directed delivery shows it to all
            weights, actions = self.mixed.read_weights(
                sender, name, whole.payload, "Weights", limit
            )
            if weights is None:
                return actions
            return self.accept_push(sender, weights, info)[1]
        self._learn_original_host(sender)
        if not self._may_send_global_model(sender):
            return [self._refused_global(sender)]
        weights, actions = self.mixed.read_weights(
            sender, name, whole.payload, "The global model", limit
        )
        if weights is None:
            return actions
        return self._take_global(weights, info)

    # --- the host's rounds ------------------------------------------------------------------

    def round_members(self) -> list[str]:
        """Whose pushes a round waits for (host.HostRounds.expected), in a private room only
        members that proved the code."""
        expected = self.rounds.expected(self.member_ids(), self.away_members, self.user_id)
        return self.private.round_members(self, expected)

    def round_members_changed(self) -> list:
        if not self.is_host:
            return []
        return self._round_step(self.rounds.update_members(self.round_members()))[1]

    def accept_push(
        self, sender: str, weights: dict, metadata: dict, *, float16_values: bool = False
    ) -> tuple[bool, list]:
        """Adds a push to the round: whether it was taken, and what follows. `float16_values`:
        weights that did not cross the wire (the host's own), rounded as the wire would."""
        if sender in self.rounds.excluded:
            log.info("ignoring a push from %s, excluded from the rounds", sender)
            return False, self.role.push_taken(self, sender, False)
        num_samples = as_num_samples(metadata.get("num_samples"))
        try:
            step = self.rounds.add(
                sender, weights, num_samples, self.round_members(), float16_values=float16_values
            )
        except (TypeError, ValueError) as exc:
            refused = [Report(f"Push from {self.name_of(sender)} rejected: {exc}")]
            return False, refused + self.role.push_taken(self, sender, False)
        info = {k: metadata.get(k) for k in ("epoch", "loss", "num_samples")}
        # The push is told of before the round it closed: a listener that reads who pushed
        # when the global model arrives must already have heard of every contributor.
        pushed = [Emit("weights_received", (sender, info))] + self.role.push_taken(
            self, sender, True
        )
        return True, pushed + self._round_step(step)[1]

    def _round_step(self, step: RoundStep) -> tuple[bool, list]:
        actions: list = []
        if step.timer is not None:
            token, delay = step.timer
            actions.append(StartTimer(ROUND_TIMER, delay, token))
        if step.result is None:
            return False, actions
        result = step.result
        try:
            actions += self._round_complete(
                result.weights, result.aggregation_round, result.contributors
            )
        except Exception:
            log.exception("sending the global model of round %d failed", result.aggregation_round)
        return True, actions

    def _round_complete(self, weights: dict, aggregation_round: int, contributors: list) -> list:
        metadata = {"aggregation_round": aggregation_round, "contributor_count": len(contributors)}
        members = [u for u in self.member_ids() if u != self.user_id]
        try:
            # what members hold: the float16-rounded global, rebuilt from a delta or not
            canonical, sends = self.ledger.publish(weights, members, metadata=metadata)
        except (TypeError, ValueError) as exc:
            return [Report(f"Cannot send the global model of round {aggregation_round}: {exc}")]
        self.global_weights = weights
        self.aggregation_round = aggregation_round
        self.global_contributors = len(contributors)
        names = {u["user_id"]: u.get("display_name", u["user_id"]) for u in self.users}
        who = describe_contributors(contributors, names)
        actions: list = [Emit("sync_status", (f"Round {aggregation_round} aggregated from {who}",))]
        # Members still away when a round closes are off a private room's key (a new one for
        # the others) before this round's model is sealed: it is sent after the new key.
        actions += self.private.members_gone(self.away_members)
        self.global_model_reached = set()  # the sends below say who gets this round's
        if self.mixed.originals(members):
            # Original members read only whole models (and on a v1 relay every transfer goes in
            # their format, to everyone): in a mixed room the global goes whole to all.
            actions.append(SendGlobalModel(canonical, aggregation_round, len(contributors)))
        else:
            for data, recipients in sends:
                actions.append(
                    SendGlobalData(data, aggregation_round, len(contributors), recipients)
                )
        if self.away_members:
            # They had a whole round to come back; a restarted relay will never say they left.
            self.away_members.clear()
            actions += self.round_members_changed()
        actions.append(Emit("round_complete", (aggregation_round, contributors)))
        # the host trains on from exactly what its members hold (global_weights stays exact)
        actions.append(Emit("global_model_received", (canonical,)))
        return actions + self.role.round_complete(self, weights)

    def global_metadata(self, aggregation_round: int, contributors: int) -> dict:
        """The metadata of a whole global model this host sends."""
        return {
            "aggregation_round": aggregation_round,
            "contributor_count": contributors,
            ACCEPTS_DELTAS_KEY: self.ledger.compression is not None,
        }


def attested_host(payload: dict) -> str | None:
    """The room creator's id as the relay attests it in a membership payload, else None."""
    host = payload.get("host_id")
    return host if isinstance(host, str) and host else None


# Message type -> handler, for every text message the session acts on (private control
# messages go to the private part).
_HANDLERS = {
    MessageType.ROOM_CREATED: RoomSession._on_room_created,
    MessageType.ROOM_JOINED: RoomSession._on_room_joined,
    MessageType.USER_JOINED: RoomSession._on_user_joined,
    MessageType.USER_LEFT: RoomSession._on_user_left,
    MessageType.ERROR: RoomSession._on_error,
    MessageType.WEIGHTS_PUSH: RoomSession._on_announcement,
    MessageType.GLOBAL_MODEL: RoomSession._on_announcement,
    MessageType.CHUNK_START: RoomSession._on_announcement,
    MessageType.TRAINING_DATA: RoomSession._on_training_data,
    MessageType.REQUEST_MODEL: RoomSession._on_request_model,
    MessageType.SESSION_INFO: RoomSession._on_session_info,
    MessageType.GOODBYE: RoomSession._on_goodbye,
    MessageType.PEER_HELLO: RoomSession._on_peer_hello,
    MessageType.WELCOME: RoomSession._on_welcome,
    MessageType.USER_LIST: RoomSession._on_user_list,
    MessageType.WEIGHTS_ACK: RoomSession._on_weights_ack,
}
