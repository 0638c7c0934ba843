"""SyncClient and HostClient: the app-facing session API on the `_relayclient` transport.

A SyncClient is one member of a room on a relay (or of a LAN session, see server.py). Methods
return at once; what happens is reported through psygnal signals, emitted on the client's
dispatcher thread (never the libwebsockets thread), so no Qt is needed; inside a Qt
application callbacks run on the GUI thread instead (qt.py). The room creator is the host:
members push weights to it only, it averages a round (host.py) and broadcasts one
`global_model`.

What goes on the wire (docs/protocol.md, docs/network-api.md):

* every binary message we send carries the frame header, so a receiver reassembles it by
  (sender, transfer id) and concurrent senders never mix; the weights are the data-only codec
  format, so a framed message is self-contained (epoch, loss and num_samples are inside);
* the original client's JSON announcements (`weights_push`, `chunk_start`/`chunk_end`,
  `global_model`, `training_data`) still precede the binaries, marked `"framed": true`;
* binaries without the header come from original clients: they are paired with the
  announcement that preceded them, as the original client did. Nothing is ever unpickled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import itertools
import logging
import random
import secrets
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import relay_config, transport
from .codec import decode_weights, serialize_weights
from .deltas import ACCEPTS_DELTAS_KEY, GlobalModelLedger, MemberDeltas
from .host import AggregationRound, as_num_samples, describe_contributors
from .mixed_room import MixedRoomMixin
from .peer_kinds import PeerKinds
from .private_client import PRIVATE_CONTROL_TYPES, PrivateRoomMixin
from .protocol import (
    MAX_CHUNK_SIZE,
    ErrorCode,
    Feature,
    FrameKind,
    Message,
    MessageType,
    RelayCapabilities,
    create_chunk_end_message,
    create_chunk_start_message,
    create_global_model_message,
    create_goodbye_message,
    create_hello_message,
    create_request_model_message,
    create_room_message,
    create_session_info_message,
    create_training_data_message,
    create_weights_push_message,
    join_room_message,
    leave_room_message,
    parse_relay_capabilities,
    resume_message,
)
from .qt import Signal
from .session import generate_user_id

log = logging.getLogger(__name__)

#: The relay's close reason when a LAN session's host left: the session is over, not dropped.
LAN_HOST_LEFT = "the LAN host left"

#: Marks an announcement whose binaries carry the frame header (ignored by original clients).
FRAMED_FIELD = "framed"

#: How many times a push or global model cut off by a dropped connection is sent again (under
#: its transfer id, so receivers take it once) after the session resumed.
TRANSFER_RESENDS = 3

#: How long an interrupted transfer waits for the session, and for its recipients, to come
#: back before its Future fails.
RESEND_WAIT_SECONDS = 120.0

#: How many whole transfers a receiver remembers by (sender, transfer id) to drop repeats.
REMEMBERED_TRANSFERS = 1024

#: A transfer the connection took whole this shortly before it was lost may still have sat
#: unread in a relay that died (a throttled sender's tail waits there while a receiver is
#: slow), so it goes again after the resume; an older one reached the relay.
UNCONFIRMED_TRANSFER_SECONDS = 60.0

_RELAY_ERRORS = {
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


# Refusals of a resume or re-join while reconnecting that mean "not now", not "never": the
# room may come back when its host re-opens it, a stale connection may still hold our id.
_REJOIN_REFUSALS = frozenset(
    {
        ErrorCode.INVALID_RESUME_TOKEN.value,
        ErrorCode.ROOM_NOT_FOUND.value,
        ErrorCode.USER_ID_TAKEN.value,
        ErrorCode.RATE_LIMITED.value,
    }
)


@dataclass
class _Transfer:
    """A framed binary transfer being reassembled."""

    kind: int
    total_size: int
    chunk_count: int
    buffer: bytearray
    next_index: int = 0
    offset: int = 0
    chunk_payload: int = 0


class _RecentTransfers:
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


@dataclass
class _SentTransfer:
    """A framed transfer this client sends, kept to send it again after a drop."""

    announcement: Message
    kind: int
    data: memoryview
    to: list[str] | None
    transfer_id: int
    connection: Any = None  # the connection it last went out on
    sent_at: float = 0.0  # time.monotonic() when that connection took its last byte


@dataclass
class _Announcement:
    """An original client's JSON announcement waiting for its unframed binaries."""

    message: Message
    kinds: list[int]
    chunks_left: int = 1
    parts: list[bytes] = field(default_factory=list)


class SyncClient(PrivateRoomMixin, MixedRoomMixin):
    """One member of a relay room (or of a LAN session). See docs/network-api.md."""

    connected = Signal()
    disconnected = Signal()
    global_model_received = Signal(dict)
    user_list_updated = Signal(list)
    sync_status = Signal(str)
    error = Signal(str)
    architecture_received = Signal(str)
    room_created = Signal(str)
    room_joined = Signal(str)
    model_requested = Signal(str)
    user_joined_room = Signal(str)
    training_data_received = Signal(bytes, bytes, dict)
    # Ours, beyond the original's signals.
    user_left_room = Signal(str)
    weights_received = Signal(str, dict)  # host: (user_id, metadata of the push)
    round_complete = Signal(int, list)  # host: (aggregation round, contributor ids)
    control_received = Signal(str, dict)  # (sender user id, a send_control object)
    verification_code = Signal(str, str)  # private room: (peer user id, its six digits)

    def __init__(
        self,
        *,
        aggregation_timeout: float = 60.0,
        min_contributors: int = 1,
        connect_timeout: float = 10.0,
        ping_interval: float | None = 30.0,
        ping_timeout: float = 30.0,
        reconnect_attempts: int = 10,
        reconnect_base_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        ca_file: str | None = None,
        headers: dict[str, str] | None = None,
        accept_legacy_weights: bool = False,
        compression: str | None = "auto",
    ):
        # Weights as deltas against the global model both sides hold (deltas.py): "auto"
        # (q8-delta), "q8-delta", "topk", or None (always whole float16).
        self._member_deltas = MemberDeltas(compression)
        self._ledger = GlobalModelLedger(compression)
        self.user_id = generate_user_id()
        # Read weights in the original app's (pickle) format; mixed_room.py, legacy_format.py.
        self.accept_legacy_weights = bool(accept_legacy_weights)
        self._kinds = PeerKinds()
        self._legacy_refused: set[str] = set()  # told once per sender that it was refused
        self._own_weights: dict | None = None  # this client's last push: the room's layout
        self.display_name = ""
        self.aggregation_timeout = aggregation_timeout
        self.min_contributors = min_contributors
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_base_delay = reconnect_base_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.ca_file = ca_file
        self.headers = headers
        self._lock = threading.RLock()
        self._connection: transport.Connection | None = None
        self._dispatcher: transport.MessageDispatcher | None = None
        self._sender_thread = threading.local()  # .is_sender: True on the sender thread
        self._sender = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sync-send", initializer=self._mark_sender_thread
        )
        self._transfer_ids = itertools.count(secrets.randbits(40))
        self._mode: str | None = None  # "relay" or "direct"
        self._url = ""
        self._room_code: str | None = None
        self._capabilities: RelayCapabilities | None = None
        self._resume_token: str | None = None
        self._in_room = False
        self._closing = False
        self._reconnecting = False
        self._users: list[dict] = []
        self._host_id: str | None = None
        self._host_attested = False  # a relay named the host (`host_id`) in this session
        self._architecture = ""
        self._global_weights: dict | None = None
        self._aggregation_round = 0
        self._round: AggregationRound | None = None
        self._transfers: dict[tuple[str, int], _Transfer] = {}
        self._received_transfers = _RecentTransfers()
        self._last_transfer: _SentTransfer | None = None  # the newest one sent whole
        self._connection_lost_at = 0.0  # time.monotonic() of the last unexpected drop
        # Host: who was in the room when the newest global model was broadcast.
        self._global_model_reached: set[str] = set()
        # Notified whenever the session changes (entered a room, lost the connection, over),
        # for a send waiting to go again after a drop.
        self._session_changed = threading.Condition(self._lock)
        # Plain re-joins tried since a refused resume, while waiting for the host to re-open.
        self._rejoin_tries = 0
        self._announcements: deque[_Announcement] = deque()
        self._pending_crops: dict[str, deque[dict]] = {}
        # Members this client announced as gone (user_left_room): one that resumes after its
        # grace period expired is announced again, so joins and leaves stay balanced.
        self._reported_left: set[str] = set()
        # Members not back yet after this client resumed (say, after a relay restart).
        self._away_members: set[str] = set()
        self._host_trains = False
        self._global_contributors: int | None = None
        self._crop_images: dict[str, bytes] = {}
        self._excluded: set[str] = set()  # host: members whose pushes rounds neither await nor take
        self._init_private()

    # --- properties ---------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """In a room (or LAN session) with an open connection."""
        connection = self._connection
        return self._in_room and connection is not None and connection.open

    @property
    def connection_info(self) -> str:
        if self._mode == "relay" and self._room_code:
            return f"room {self._room_code} via {self._url}"
        if self._mode == "direct":
            return self._url
        return "not connected"

    @property
    def room_code(self) -> str | None:
        """The code to share: with its secret part in a private room (`K7QX2M-4HRT`). Only
        `routing_code` ever goes to the relay."""
        if self._private_code is not None:
            return str(self._private_code)
        return self._room_code

    @property
    def routing_code(self) -> str | None:
        """The relay's 6-character code of the room."""
        return self._room_code

    @property
    def is_relay_mode(self) -> bool:
        return self._mode == "relay"

    @property
    def is_receiving_chunks(self) -> bool:
        return bool(self._transfers) or any(a.parts for a in self._announcements)

    @property
    def users(self) -> list[dict]:
        """The room's members, `[{user_id, display_name}, ...]` in joining order."""
        return list(self._users)

    @property
    def host_id(self) -> str | None:
        """The room's host: the creator as the relay attests it (`host_id`), or with a relay
        that does not (v1), the earliest member."""
        return self._host_id

    @property
    def is_host(self) -> bool:
        return self._host_id is not None and self._host_id == self.user_id

    @property
    def host_trains(self) -> bool:
        """Host: whether its own push belongs in every round. Set it before the first round
        when the host trains too; its first `send_weights` sets it anyway."""
        return self._host_trains

    @host_trains.setter
    def host_trains(self, value: bool) -> None:
        self._host_trains = bool(value)
        self._update_round_members()

    @property
    def is_reconnecting(self) -> bool:
        """The connection dropped and the client is trying to get back into the room."""
        return self._reconnecting

    @property
    def capabilities(self) -> RelayCapabilities | None:
        """What the relay advertised; None for a v1 relay (the original Worker)."""
        return self._capabilities

    @property
    def global_weights(self) -> dict | None:
        return self._global_weights

    @property
    def aggregation_round(self) -> int:
        return self._aggregation_round

    @property
    def global_contributors(self) -> int | None:
        """How many members' pushes the newest global model averages; None when unknown (say,
        from an original host, or a model set by hand before any round)."""
        return self._global_contributors

    # --- connecting ---------------------------------------------------------------------

    def disconnect(self, flush_timeout: float = 10.0) -> None:
        """Says goodbye, leaves the room and closes the connection; `disconnected` follows.
        Sends already queued (say, the global model of a round that just closed) go first,
        for up to `flush_timeout` seconds (none while reconnecting: a send waiting to go again
        after the drop then fails at once)."""
        if self.is_connected:
            self._flush_sends(flush_timeout)
        with self._lock:
            self._closing = True
            connection = self._connection
            was_in_room = self._in_room
            self._session_changed.notify_all()
        if self._round is not None:
            self._round.shutdown()
        if connection is None:
            return
        if was_in_room and connection.open:
            try:
                connection.send_text(create_goodbye_message(self.user_id).to_json())
                if self._mode == "relay":
                    connection.send_text(leave_room_message().to_json())
            except transport.ConnectionClosed:
                pass
        with contextlib.suppress(transport.ConnectionClosed):
            connection.close(1000, "disconnect")
        if self._dispatcher is not None and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(5)

    def _mark_sender_thread(self) -> None:
        self._sender_thread.is_sender = True

    def _flush_sends(self, timeout: float) -> None:
        """Waits for the sends queued so far; never on the sender thread (a send's failure
        callback may disconnect), where that would wait for itself."""
        if getattr(self._sender_thread, "is_sender", False) or self._connection is None:
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._sender.submit(lambda: None).result(timeout)

    def _start_relay(self, user_name: str, relay_url: str | None, room_code: str | None) -> None:
        try:
            found = relay_config.find_relay_url(relay_url)
        except ValueError as exc:
            self._report(str(exc))
            return
        if found is None:
            self._report(
                "No relay configured: pass relay_url, set SEGMENTATION_SUITE_RELAY_URL, or save "
                "one with relay_config.save_user_relay_url()"
            )
            return
        if self._begin("relay", _websocket_url(found.url), user_name, room_code):
            threading.Thread(
                target=self._open_relay_session, args=(room_code,), name="sync-connect", daemon=True
            ).start()

    def _begin(self, mode: str, url: str, user_name: str, room_code: str | None) -> bool:
        """Resets the session state for a new connection; False (reported) if one is open."""
        with self._lock:
            if self._connection is not None and self._connection.open:
                self._report("Already connected: disconnect() first")
                return False
            self.display_name = user_name or self.user_id
            self._mode = mode
            self._url = url
            self._room_code = room_code
            self._closing = False
            self._in_room = False
            self._resume_token = None
            self._capabilities = None
            self._users = []
            self._host_id = None
            self._host_attested = False
            self._away_members.clear()
            self._global_model_reached.clear()
            self._last_transfer = None
            self._rejoin_tries = 0
            self._reset_private_session()
            if mode != "relay":
                self._private_code = None  # LAN sessions are open (docs/security.md)
        return True

    def _open_relay_session(self, room_code: str | None) -> None:
        self.sync_status.emit(f"Connecting to {self._url}")
        if not self._connect():
            return
        if room_code is None:
            self._send_json(create_room_message(self.user_id, self.display_name))
        else:
            self._send_json(join_room_message(room_code, self.user_id, self.display_name))

    def _open_connection(self):
        """A new WebSocket to the relay with this client's settings (raises on failure)."""
        # Naming the room lets a load balancer put its members on one relay node.
        url = _with_room(self._url, self._room_code) if self._mode == "relay" else self._url
        return transport.connect(
            url,
            headers=self.headers,
            ca_file=self.ca_file,
            connect_timeout=self.connect_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            reassemble_transfers=True,  # issue 15: one Transfer per chunked transfer
        )

    def _connect(self) -> bool:
        """Opens the WebSocket and starts the dispatcher; False (error reported) on failure."""
        try:
            connection = self._open_connection()
        except (ConnectionError, ValueError) as exc:
            self._report(_describe_connect_failure(self._url, exc))
            return False
        with self._lock:
            self._connection = connection
            self._dispatcher = transport.MessageDispatcher(
                connection, self._on_message, self._on_close, name=f"sync {self.user_id}"
            )
        return True

    # --- sending ------------------------------------------------------------------------

    def send_weights(
        self, weights: dict, epoch: int, loss: float, num_samples: int = 1
    ) -> concurrent.futures.Future | None:
        """Pushes this member's weights to the host for the current round.

        Serialized here (the caller may keep training), sent on the client's sender thread;
        the returned Future completes when the relay took the last byte, with the serialized
        size in bytes as its result. The host's own push goes straight into its round."""
        if not self._require_connection("send weights") or self._host_missing("send weights"):
            return None
        try:
            if self.is_host:
                data = serialize_weights(weights, epoch=epoch, loss=loss, num_samples=num_samples)
            else:
                data = self._member_deltas.encode_push(
                    weights, epoch=epoch, loss=loss, num_samples=num_samples
                )
        except (TypeError, ValueError) as exc:
            self._report(f"Cannot send these weights: {exc}")
            return None
        if self.is_host:
            if not self._host_trains:
                self.host_trains = True
            own, _ = decode_weights(data)
            self._own_weights = own
            self._accept_push(self.user_id, own, {"num_samples": num_samples, "epoch": epoch})
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_result(len(data))
            return future
        self._own_weights = weights
        announcement = create_weights_push_message(self.user_id, epoch, loss, num_samples)
        to = self._to()
        return self._submit(self._send_mixed_transfer, announcement, FrameKind.WEIGHTS, data, to)

    def request_global_model(self) -> None:
        """Asks the host for the current global model; `global_model_received` follows."""
        if not self._require_connection("request the global model"):
            return
        if self._host_missing("request the global model"):
            return
        if self.is_host:
            if self._global_weights is not None:
                self.global_model_received.emit(self._global_weights)
            return
        self._submit(self._send_json, create_request_model_message(self.user_id), self._to())

    def send_architecture(self, architecture: str) -> None:
        """Tells the room (and later joiners, when sent by the host) the model architecture."""
        self._architecture = architecture
        if self._require_connection("send the architecture"):
            self._submit(self._send_json, create_session_info_message(architecture))

    def send_control(self, control: dict, to: list[str] | None = None) -> None:
        """Sends a small JSON object to the room, or to the members in `to`; each receiver's
        `control_received(sender_id, control)` follows (apps agree on its meaning, e.g. a
        training plan). Carried as the `control` field of a `session_info` payload next to
        the architecture: peers that do not know the field ignore it."""
        if self._require_connection("send a control message"):
            message = create_session_info_message(self._architecture)
            message.payload["control"] = dict(control)
            self._submit(self._send_json, message, to)

    def exclude_member(self, user_id: str, excluded: bool = True) -> None:
        """Host: rounds stop waiting for this member and ignore its pushes (a member who
        opted out, or one the host removed); `excluded=False` takes it back."""
        if excluded:
            self._excluded.add(user_id)
        else:
            self._excluded.discard(user_id)
        self._update_round_members()

    def send_training_data(
        self, image_array: Any, mask_array: Any, slice_index: int = 0
    ) -> concurrent.futures.Future | None:
        """Sends one training crop (image and mask, each as a PNG) to the host."""
        if not self._require_connection("send training data"):
            return None
        if self._host_missing("send training data"):
            return None
        try:
            image_png = encode_png(image_array, "image")
            mask_png = encode_png(mask_array, "mask")
        except (TypeError, ValueError) as exc:
            self._report(f"Cannot send this training crop: {exc}")
            return None
        crop_size = int(max(np.shape(image_array)[:2]))
        header = create_training_data_message(
            self.user_id, self.display_name, crop_size, int(slice_index)
        )
        return self._submit(self._send_mixed_crop, header, image_png, mask_png, self._to())

    def _to(self) -> list[str] | None:
        """Recipients of what members send to the host; None before a host is known."""
        return [self._host_id] if self._host_id and not self.is_host else None

    def _submit(self, function, *args) -> concurrent.futures.Future:
        """Runs a send on the sender thread, so sends keep their order and never block the
        caller or the dispatcher. A failure is reported through `error`."""
        future = self._sender.submit(function, *args)
        future.add_done_callback(self._check_send)
        return future

    def _check_send(self, future: concurrent.futures.Future) -> None:
        exc = future.exception()
        if isinstance(exc, transport.ConnectionClosed):
            log.warning("send failed, the connection closed: %s", exc)
        elif exc is not None:
            self._report(f"Sending failed: {exc}")

    def _send_json(self, message: Message, to: list[str] | None = None) -> None:
        if to is not None:
            message.to = list(to)
        connection = self._connection
        if connection is None:
            raise transport.ConnectionClosed("not connected")
        connection.send_text(message.to_json())

    def _chunk_size(self) -> int:
        if self._capabilities is not None:
            return self._capabilities.chunk_size
        return MAX_CHUNK_SIZE

    def _send_transfer(
        self, announcement: Message, kind: int, data: memoryview, to: list[str] | None
    ) -> int:
        """Sends a whole transfer; one cut off by a dropped connection goes again, under the
        same transfer id, once the session resumed (relays that resume sessions only). Returns
        the size once the relay took the last byte; raises when the session is over."""
        transfer_id = next(self._transfer_ids) & (2**64 - 1)
        data = self._seal_outgoing(data, transfer_id, kind)  # after encoding and compression
        transfer = _SentTransfer(announcement, kind, data, to, transfer_id)
        for resends in itertools.count():
            transfer.connection = self._connection
            try:
                size = self._send_transfer_once(transfer)
            except transport.ConnectionClosed:
                if resends == TRANSFER_RESENDS or not self._wait_to_resend(transfer):
                    raise
                log.info("connection back: sending transfer %d again", transfer.transfer_id)
                continue
            transfer.sent_at = time.monotonic()
            with self._lock:
                self._last_transfer = transfer
            return size
        raise AssertionError("unreachable")

    def _resend_last_transfer(self, transfer: _SentTransfer) -> None:
        """After a resume: the newest transfer the lost connection took whole goes again, as
        the relay may have died with its tail unread (the receiver drops it if it arrived)."""
        if not self._wait_to_resend(transfer):
            return
        log.info("connection back: sending transfer %d again", transfer.transfer_id)
        self._send_transfer_once(transfer)

    def _wait_to_resend(self, transfer: _SentTransfer) -> bool:
        """Waits until a connection other than the one `transfer` went out on is in the room
        with every recipient present. False when there is no point: the relay cannot resume
        sessions (v1), the session is over, or it did not come back in RESEND_WAIT_SECONDS."""
        failed, to = transfer.connection, transfer.to
        capabilities = self._capabilities
        if capabilities is None or not capabilities.supports(Feature.RESUME):
            return False

        def ready() -> bool:
            present = {u.get("user_id") for u in self._users}
            # A member's push waits for the attested host: after a relay restart, whoever
            # holds the host's id before the host is back is not the host.
            to_host = not self.is_host and self._relay_attests_host
            return (
                self._connection is not failed
                and self.is_connected
                and all(user in present for user in to or ())
                and (not to_host or list(to or ()) == [self._host_id])
            )

        with self._session_changed:
            self._session_changed.wait_for(lambda: self._closing or ready(), RESEND_WAIT_SECONDS)
            return not self._closing and ready()

    def _send_transfer_once(self, transfer: _SentTransfer) -> int:
        """Announcement, then the framed binaries. Behind a v1 relay, a payload over one chunk
        is also wrapped in the original's chunk_start/chunk_end."""
        announcement, kind, data = transfer.announcement, transfer.kind, transfer.data
        to, transfer_id = transfer.to, transfer.transfer_id
        connection = self._connection
        if connection is None:
            raise transport.ConnectionClosed("not connected")
        chunk_size = self._chunk_size()
        recipients = list(to or ())
        chunks = transport.chunk_count(self.user_id, recipients, len(data), chunk_size)
        announcement.extra[FRAMED_FIELD] = True
        self._send_json(announcement, to)
        wrapped = self._capabilities is None and chunks > 1
        if wrapped:
            start = create_chunk_start_message(
                str(transfer_id),
                chunks,
                len(data),
                announcement.type.value,
                **{k: v for k, v in announcement.payload.items() if k != "timestamp"},
                display_name=self.display_name,
            )
            start.extra[FRAMED_FIELD] = True
            self._send_json(start, to)
        connection.send_chunked(kind, transfer_id, self.user_id, recipients, data, chunk_size)
        if wrapped:
            end = create_chunk_end_message(str(transfer_id))
            end.extra[FRAMED_FIELD] = True
            self._send_json(end, to)
        return len(data)

    def _send_crop(
        self, header: Message, image_png: bytes, mask_png: bytes, to: list[str] | None
    ) -> None:
        connection = self._connection
        if connection is None:
            raise transport.ConnectionClosed("not connected")
        header.extra[FRAMED_FIELD] = True
        self._send_json(header, to)
        recipients = list(to or ())
        parts = ((FrameKind.TRAINING_IMAGE, image_png), (FrameKind.TRAINING_MASK, mask_png))
        for kind, png in parts:
            transfer_id = next(self._transfer_ids) & (2**64 - 1)
            wire = self._seal_outgoing(png, transfer_id, kind)
            connection.send_chunked(kind, transfer_id, self.user_id, recipients, wire, 2**31 - 1)

    def _send_global_model(
        self, weights: dict, aggregation_round: int, contributors: int, to: list[str] | None = None
    ) -> None:
        """The (canonical) global model, whole: to a member that asked for it."""
        metadata = {
            "aggregation_round": aggregation_round,
            "contributor_count": contributors,
            ACCEPTS_DELTAS_KEY: self._ledger.compression is not None,
        }
        data = serialize_weights(weights, metadata=metadata)
        self._send_global_data(data, aggregation_round, contributors, to)

    def _send_global_data(
        self, data: memoryview, aggregation_round: int, contributors: int, to: list[str] | None
    ) -> None:
        announcement = create_global_model_message(aggregation_round, contributors)
        present_before = self._present_ids()
        self._send_mixed_transfer(announcement, FrameKind.GLOBAL_MODEL, data, to)
        with self._lock:
            if to is None:  # who was there all along got all of it
                self._global_model_reached = present_before & self._present_ids()
            else:
                self._global_model_reached.update(to)

    def _present_ids(self) -> set[str]:
        return {u.get("user_id") for u in self._users}

    def _require_connection(self, what: str) -> bool:
        if self.is_connected:
            return True
        self._report(f"Cannot {what}: not connected to a session")
        return False

    # --- receiving ----------------------------------------------------------------------

    def _on_message(self, is_binary: bool, data: Any) -> None:
        if is_binary:
            self._on_binary(data)
            return
        try:
            message = Message.from_json(data)
        except ValueError as exc:
            log.warning("ignoring a malformed text message: %s", exc)
            return
        if message.to is not None and self.user_id not in message.to:
            return  # directed at others; a v1 relay delivers it to everyone
        handler = self._HANDLERS.get(message.type)
        if handler is not None:
            handler(self, message)

    def _on_room_created(self, message: Message) -> None:
        payload = message.payload
        resumed = self._reconnecting
        self._enter_room(payload, [{"user_id": self.user_id, "display_name": self.display_name}])
        self._host_id = self.user_id
        self._rejoin_tries = 0
        if not self._private_room_created():
            return
        if resumed:
            self.sync_status.emit(f"Room {self._room_code} re-created after reconnecting")
        self.room_created.emit(self.room_code)
        self.connected.emit()
        self.user_list_updated.emit(self.users)

    def _on_room_joined(self, message: Message) -> None:
        payload = message.payload
        resumed = bool(payload.get("resumed"))
        users = [u for u in payload.get("users", []) if isinstance(u, dict)]
        if resumed:
            # A restarted relay re-opens a room one resume at a time: who is not back yet is
            # away, not gone, and a round must not close without it (until its timeout).
            back = {u.get("user_id") for u in users}
            self._away_members |= {u.get("user_id") for u in self._users} - back - {self.user_id}
        self._enter_room(payload, users)
        self._take_attested_host(payload)
        if not self._relay_attests_host:
            # A relay that does not name the host: never guess it from the order of `users`
            # (the original Worker reorders it after idling); the creator says so (peer_hello).
            # After a relay restart a member may resume before the host: the host is then only
            # late, not gone. A host that really left is told by user_left.
            ids = [u.get("user_id") for u in users]
            if self._host_id not in ids and not (resumed and self._host_id):
                self._host_id = None
            self._say_peer_hello()
        if self._rejoin_tries:
            self._rejoin_tries = 0
            self.sync_status.emit(f"Back in room {self._room_code}: the host re-opened it")
        if resumed:
            self.sync_status.emit(f"Back in room {self._room_code}")
        if not self._private_room_joined(resumed) and not resumed:
            self.room_joined.emit(self._room_code)
            self.connected.emit()
        self.user_list_updated.emit(self.users)
        self._update_round_members()

    def _enter_room(self, payload: dict, users: list[dict]) -> None:
        try:
            capabilities = parse_relay_capabilities(payload)
        except ValueError as exc:
            log.warning("relay capabilities unreadable, speaking v1: %s", exc)
            capabilities = None
        with self._lock:
            back_after_drop = self._reconnecting
            self._room_code = payload.get("room_code", self._room_code)
            self._capabilities = capabilities
            self._resume_token = payload.get("resume_token") or self._resume_token
            self._users = users
            self._reset_kinds(capabilities, users)
            self._in_room = True
            self._reconnecting = False
            self._session_changed.notify_all()
            last, self._last_transfer = self._last_transfer, None
        unconfirmed = (
            last is not None
            and last.connection is not self._connection
            and self._connection_lost_at - last.sent_at < UNCONFIRMED_TRANSFER_SECONDS
        )
        if back_after_drop and unconfirmed:
            self._submit(self._resend_last_transfer, last)

    def _on_user_joined(self, message: Message) -> None:
        payload = message.payload
        with self._lock:
            self._users = [u for u in payload.get("users", []) if isinstance(u, dict)]
            self._kinds.take_user_list(self._users)
            self._take_attested_host(payload)
            self._session_changed.notify_all()  # a recipient an interrupted send waits for
        self._say_peer_hello()  # for the newcomer, where the relay attests nothing
        self._away_members.discard(payload["user_id"])
        returned = payload["user_id"] in self._reported_left
        self._reported_left.discard(payload["user_id"])
        if payload.get("resumed"):  # it may have missed a global: the next one goes whole
            self._ledger.forget_held(payload["user_id"])
        if not payload.get("resumed") or returned:
            self.user_joined_room.emit(payload.get("display_name") or payload["user_id"])
        self.user_list_updated.emit(self.users)
        self._update_round_members()
        if self.is_host and self._architecture:
            self._submit(
                self._send_json,
                create_session_info_message(self._architecture),
                [payload["user_id"]],
            )
        if payload.get("resumed"):
            self._send_missed_global_model(payload["user_id"])

    def _send_missed_global_model(self, user_id: str) -> None:
        """Host: the newest global model to a member back by resume that was not in the room
        when it was broadcast (the relay delivers only to who is there)."""
        with self._lock:
            missed = user_id not in self._global_model_reached
            self._global_model_reached.add(user_id)
        if missed and self.is_host and self._global_weights is not None:
            self._submit(
                self._send_global_model,
                self._global_weights,
                self._aggregation_round,
                self._global_contributors or 0,
                [user_id],
            )

    def _on_user_left(self, message: Message) -> None:
        payload = message.payload
        left = payload["user_id"]
        self._users = [u for u in payload.get("users", []) if isinstance(u, dict)]
        self._kinds.take_user_list(self._users)
        self._ledger.remove(left)
        for key in [k for k in self._transfers if k[0] == left]:
            del self._transfers[key]
        self._pending_crops.pop(left, None)
        host_left = left == self._host_id
        self._away_members.discard(left)
        self._take_attested_host(payload)
        if host_left and self._relay_attests_host:
            # Nobody else may take the host's place: its global models are the only ones taken.
            self.sync_status.emit("The host left; waiting for it to come back")
        elif host_left:
            # Nobody is named host by list order; a new creator would announce itself.
            self._host_id = None
            self.sync_status.emit("The host left the room")
        self._private_member_left(left)
        self._reported_left.add(left)
        self.user_left_room.emit(payload.get("display_name") or left)
        self.user_list_updated.emit(self.users)
        self._update_round_members()

    def _on_error(self, message: Message) -> None:
        payload = message.payload
        code = payload.get("code", "")
        template = _RELAY_ERRORS.get(code)
        if template is None:
            text = f"Relay error: {payload['error']}"
            if payload.get("details"):
                text += f" ({payload['details']})"
        else:
            text = template.format(
                code=self._room_code or "",
                retry_after=payload.get("retry_after", 60),
                url=self._url,
                user_id=self.user_id,
            )
        if self._reconnecting and code in _REJOIN_REFUSALS:
            self._resume_failed(code, payload.get("retry_after"))
            return
        self._report(text)
        if not self._in_room and code in _RELAY_ERRORS:
            # The join or create failed: there is no session to keep this connection for.
            self._closing = True
            connection = self._connection
            if connection is not None:
                threading.Thread(target=connection.close, daemon=True).start()

    def _on_weights_push(self, message: Message) -> None:
        if not message.extra.get(FRAMED_FIELD):
            self._announcements.append(_Announcement(message, [FrameKind.WEIGHTS]))

    def _on_global_model(self, message: Message) -> None:
        if not message.extra.get(FRAMED_FIELD):
            self._announcements.append(_Announcement(message, [FrameKind.GLOBAL_MODEL]))

    def _on_chunk_start(self, message: Message) -> None:
        if message.extra.get(FRAMED_FIELD):
            return
        kind = (
            FrameKind.GLOBAL_MODEL
            if message.payload["original_type"] == MessageType.GLOBAL_MODEL.value
            else FrameKind.WEIGHTS
        )
        total = message.payload["total_chunks"]
        if not 1 <= total <= 1024:
            log.warning("ignoring chunk_start announcing %s chunks", total)
            return
        self._announcements.append(_Announcement(message, [kind], chunks_left=total))

    def _on_training_data(self, message: Message) -> None:
        sender = message.sender_id or message.payload["user_id"]
        info = dict(message.payload, sender_id=sender)
        if message.extra.get(FRAMED_FIELD):
            self._pending_crops.setdefault(sender, deque(maxlen=64)).append(info)
        else:
            kinds = [FrameKind.TRAINING_IMAGE, FrameKind.TRAINING_MASK]
            self._announcements.append(_Announcement(message, kinds))

    def _on_request_model(self, message: Message) -> None:
        requester = message.sender_id or message.payload["user_id"]
        if not self.is_host:
            return
        self.model_requested.emit(requester)
        # what the other members hold (float16-rounded), whole
        latest = self._ledger.latest if self._ledger.latest is not None else self._global_weights
        if latest is not None:
            self._submit(
                self._send_global_model,
                latest,
                self._aggregation_round,
                self._global_contributors or 0,
                [requester],
            )

    def _on_session_info(self, message: Message) -> None:
        control = message.payload.get("control")
        if isinstance(control, dict):  # one of our members' control messages (send_control)
            self.control_received.emit(message.sender_id or "", control)
            return
        if message.sender_id:
            self._learn_original_host(message.sender_id)
        self._architecture = message.payload["architecture"]
        self.architecture_received.emit(self._architecture)

    def _on_goodbye(self, message: Message) -> None:
        log.info("%s says goodbye", message.sender_name or message.payload["user_id"])

    def _on_binary(self, data: memoryview | transport.Transfer) -> None:
        if isinstance(data, transport.Transfer):  # issue 15: reassembled in C, in one buffer
            header = data.header
            if not header.recipients or self.user_id in header.recipients:
                key = (header.sender, header.transfer_id)
                self._on_whole_transfer(key, header.kind, memoryview(data))
            return
        try:
            header = transport.parse_frame_header(data)
        except ValueError as exc:
            log.warning("ignoring a binary message with a bad frame header: %s", exc)
            return
        if header is None:
            self._on_unframed_binary(data)
            return
        if header.recipients and self.user_id not in header.recipients:
            return  # addressed to others (a v1 relay delivers to everyone)
        payload = data[header.header_size :]
        key = (header.sender, header.transfer_id)
        if header.chunk_count == 1:
            if len(payload) != header.total_size:
                log.warning("discarding a truncated transfer from %s", header.sender)
                return
            self._on_whole_transfer(key, header.kind, payload)
            return
        transfer = self._transfers.get(key)
        if header.chunk_index == 0:
            if header.total_size > 2**34:
                log.warning("ignoring a %d-byte transfer from %s", header.total_size, key[0])
                return
            transfer = _Transfer(
                header.kind,
                header.total_size,
                header.chunk_count,
                bytearray(header.total_size),
                chunk_payload=len(payload),
            )
            self._transfers[key] = transfer
        if transfer is None or header.chunk_index != transfer.next_index:
            self._transfers.pop(key, None)
            log.warning("discarding an out-of-order transfer from %s", header.sender)
            return
        last = header.chunk_index == header.chunk_count - 1
        end = transfer.offset + len(payload)
        if end > transfer.total_size or (not last and len(payload) != transfer.chunk_payload):
            del self._transfers[key]
            log.warning("discarding a malformed or truncated transfer from %s", header.sender)
            return
        transfer.buffer[transfer.offset : end] = payload
        transfer.offset = end
        transfer.next_index += 1
        if last:
            del self._transfers[key]
            if end != transfer.total_size:
                log.warning("discarding a truncated transfer from %s", header.sender)
                return
            self._on_whole_transfer(key, transfer.kind, memoryview(transfer.buffer))

    def _on_whole_transfer(self, key: tuple[str, int], kind: int, payload: Any) -> None:
        """A whole framed transfer; one its sender sent again after a drop is handled once."""
        if not self._received_transfers.first_time(key):
            log.info("dropping transfer %d from %s: already received", key[1], key[0])
            return
        payload = self._open_incoming(key[0], key[1], kind, payload)
        if payload is not None:
            self._on_transfer(key[0], kind, payload)

    def _on_unframed_binary(self, data: memoryview) -> None:
        """A binary from an original client: it belongs to the oldest open announcement."""
        if self._private_code is not None:
            log.warning("ignoring an unframed binary: a private room carries sealed ones only")
            return
        if not self._announcements:
            log.warning("ignoring a binary message that no announcement preceded")
            return
        announcement = self._announcements[0]
        sender = announcement.message.sender_id or announcement.message.payload.get("user_id", "")
        if announcement.message.type is MessageType.TRAINING_DATA:
            announcement.parts.append(bytes(data))
            if len(announcement.parts) == 2:
                self._announcements.popleft()
                info = dict(announcement.message.payload, sender_id=sender)
                image, mask = announcement.parts
                if self._checked_crop(sender, image, mask):
                    self.training_data_received.emit(image, mask, info)
            return
        announcement.parts.append(bytes(data))
        if self._original_transfer_too_big(announcement):
            return
        announcement.chunks_left -= 1
        if announcement.chunks_left == 0:
            self._announcements.popleft()
            payload = b"".join(announcement.parts)
            announcement.parts.clear()
            self._on_original_transfer(sender, announcement.kinds[0], payload, announcement.message)

    def _on_transfer(self, sender: str, kind: int, payload: Any) -> None:
        """A whole binary transfer from `sender`."""
        if kind == FrameKind.WEIGHTS:
            if not self.is_host:
                return
            try:
                reference = self._ledger.reference_for(payload, also_held=self._member_deltas.held)
                weights, metadata = decode_weights(payload, reference=reference)
            except ValueError as exc:
                self._report(f"Weights from {self._name_of(sender)} are unreadable: {exc}")
                return
            self._ledger.note_push(sender, metadata)
            self._accept_push(sender, weights, metadata)
        elif kind == FrameKind.GLOBAL_MODEL:
            if not self._may_send_global_model(sender):
                self._report(
                    f"Refused a global model from {self._name_of(sender)}: only the host "
                    f"({self._name_of(self._host_id or '')}) sends global models in this room"
                )
                return
            try:
                weights, metadata = self._member_deltas.receive_global(payload)
            except ValueError as exc:
                self._report(f"The global model from {self._name_of(sender)} is unreadable: {exc}")
                if self._member_deltas.held is not None:  # a delta against another global:
                    self.request_global_model()  # ask for the whole model
                return
            self._global_weights = weights
            round_number = metadata["extra"].get("aggregation_round")
            if isinstance(round_number, int):
                self._aggregation_round = round_number
            count = metadata["extra"].get("contributor_count")
            self._global_contributors = count if isinstance(count, int) and count > 0 else None
            self.sync_status.emit(f"Global model of round {self._aggregation_round} received")
            self.global_model_received.emit(weights)
        elif kind == FrameKind.TRAINING_IMAGE:
            self._crop_images[sender] = bytes(payload)
        elif kind == FrameKind.TRAINING_MASK:
            image = self._crop_images.pop(sender, None)
            pending = self._pending_crops.get(sender)
            if image is None or not pending:
                log.warning("ignoring a training mask from %s without its image", sender)
                return
            self.training_data_received.emit(image, bytes(payload), pending.popleft())

    @property
    def _relay_attests_host(self) -> bool:
        """Whether the relay names the host in membership messages (feature `host_id`, or a
        `host_id` seen in this session)."""
        capabilities = self._capabilities
        advertised = capabilities is not None and capabilities.supports(Feature.HOST_ID)
        return advertised or self._host_attested

    def _take_attested_host(self, payload: dict) -> None:
        """Takes the host from a membership payload's `host_id`, when the relay sent one:
        null means the creator is not in the room (left, or not yet back after a restart),
        and then nobody is the host, whoever holds its id."""
        if "host_id" in payload:
            self._host_id = attested_host(payload)
            self._host_attested = True

    def _host_missing(self, what: str) -> bool:
        """True (reported) when a member cannot `what` because the relay attests no host now:
        sending to everyone instead would hand it to whoever is in the room."""
        if self._host_id is None and self._relay_attests_host and not self.is_host:
            self._report(
                f"Cannot {what}: the room's host is not in the room; try again when it is back"
            )
            return True
        return False

    def _may_send_global_model(self, sender: str) -> bool:
        """Only the attested host's global models are taken: any member's would let an
        impostor overwrite everyone's model. Behind a relay that attests nobody (v1), only the
        host that announced itself (peer_hello), or before any did, whoever sends one."""
        if self._relay_attests_host:
            return sender == self._host_id
        return self._host_id is None or sender == self._host_id

    # --- the host's rounds ----------------------------------------------------------------

    def _ensure_round(self) -> AggregationRound:
        with self._lock:
            if self._round is None:
                self._round = AggregationRound(
                    self._on_round_complete,
                    timeout=self.aggregation_timeout,
                    min_contributors=self.min_contributors,
                )
                self._round.set_members(self._member_ids())
            return self._round

    def _member_ids(self) -> list[str]:
        """Whose pushes a round waits for: the other members, and the host itself once it
        trains (else a round could close on the members' pushes just before the host's)."""
        present = [
            u["user_id"]
            for u in self._users
            if (u.get("user_id") != self.user_id or self._host_trains)
            and u.get("user_id") not in self._excluded
        ]
        return self._private_round_members(present + sorted(self._away_members.difference(present)))

    def _update_round_members(self) -> None:
        if self._round is not None and self.is_host:
            self._round.set_members(self._member_ids())

    def _accept_push(self, sender: str, weights: dict, metadata: dict) -> bool:
        """Adds a push to the round; False (reported) if the round refused it."""
        if sender in self._excluded:
            log.info("ignoring a push from %s, excluded from the rounds", sender)
            return False
        num_samples = as_num_samples(metadata.get("num_samples"))
        aggregation = self._ensure_round()
        try:
            aggregation.take(sender, weights, num_samples)
        except ValueError as exc:
            self._report(f"Push from {self._name_of(sender)} rejected: {exc}")
            return False
        info = {k: metadata.get(k) for k in ("epoch", "loss", "num_samples")}
        # Reported before the round it completes closes: whoever reads the round's pushes when
        # round_complete or the global model arrives must find this one among them.
        self.weights_received.emit(sender, info)
        aggregation.close_if_complete()
        return True

    def _on_round_complete(self, weights: dict, aggregation_round: int, contributors: list) -> None:
        metadata = {"aggregation_round": aggregation_round, "contributor_count": len(contributors)}
        members = [u["user_id"] for u in self._users if u.get("user_id") != self.user_id]
        try:
            # what members hold: the float16-rounded global, rebuilt from a delta or not
            canonical, sends = self._ledger.publish(weights, members, metadata=metadata)
        except (TypeError, ValueError) as exc:
            self._report(f"Cannot send the global model of round {aggregation_round}: {exc}")
            return
        self._global_weights = weights
        self._aggregation_round = aggregation_round
        self._global_contributors = len(contributors)
        names = {u["user_id"]: u.get("display_name", u["user_id"]) for u in self._users}
        who = describe_contributors(contributors, names)
        self.sync_status.emit(f"Round {aggregation_round} aggregated from {who}")
        with self._lock:
            self._global_model_reached = set()  # the sends below say who gets this round's
        if self._kinds.originals(members):
            # Original members read only whole models (and on a v1 relay every transfer goes in
            # their format, to everyone): in a mixed room the global goes whole to all.
            self._submit(self._send_global_model, canonical, aggregation_round, len(contributors))
        else:
            for data, recipients in sends:
                self._submit(
                    self._send_global_data, data, aggregation_round, len(contributors), recipients
                )
        if self._away_members:
            # They had a whole round to come back; a restarted relay will never say they left.
            self._away_members.clear()
            self._update_round_members()
        self.round_complete.emit(aggregation_round, contributors)
        # the host trains on from exactly what its members hold (global_weights stays exact)
        self.global_model_received.emit(canonical)

    def publish_global_model(self, weights: dict, aggregation_round: int = 0) -> dict | None:
        """Host: sends `weights` to every member as the global model of `aggregation_round`,
        as a closed round's goes (a saved model a session starts from is round 0's; see
        training/session_plan.py). Returns what the members hold (rounded as the wire
        carries it), or None after reporting why it could not be sent."""
        before = self._ledger.latest
        self._on_round_complete(weights, aggregation_round, [])
        latest = self._ledger.latest
        return latest if latest is not None and latest is not before else None

    def trigger_aggregation(self) -> bool:
        """Host: closes the current round now with the pushes it has."""
        return self._round is not None and self._round.close_now()

    # --- losing and regaining the connection ----------------------------------------------

    def _on_close(self, code: int | None, reason: str | None) -> None:
        with self._lock:
            closing = self._closing
            was_in_room = self._in_room
            # Lost while waiting for the host to re-open the room: keep trying all the same.
            waiting_for_room = self._reconnecting
            self._connection_lost_at = time.monotonic()
            self._in_room = False
            self._transfers.clear()
            self._announcements.clear()
            self._session_changed.notify_all()
        if closing or not (was_in_room or waiting_for_room):
            if was_in_room:
                self.disconnected.emit()
            elif not closing:  # before the relay answered the join: say so, never hang
                self._report(
                    f"The connection to {self._url} closed before the session began "
                    f"({code} {reason or ''}); try again"
                )
            return
        if self._mode == "direct" and reason == LAN_HOST_LEFT:
            self._report("The LAN host ended the session")
            self.disconnected.emit()
            return
        log.warning("connection to %s lost (%s %s); reconnecting", self._url, code, reason)
        self.sync_status.emit(f"Connection lost ({code} {reason or ''}); reconnecting")
        self._reconnecting = True
        threading.Thread(target=self._reconnect, name="sync-reconnect", daemon=True).start()

    def _reconnect(self) -> None:
        """Exponential backoff with full jitter, then `resume` (or a plain re-join)."""
        for attempt in range(self.reconnect_attempts):
            time.sleep(self._backoff(attempt))
            if self._closing:
                return
            try:
                connection = self._open_connection()
            except (ConnectionError, ValueError) as exc:
                log.info("reconnect attempt %d failed: %s", attempt + 1, exc)
                continue
            with self._lock:
                self._connection = connection
                self._dispatcher = transport.MessageDispatcher(
                    connection, self._on_message, self._on_close, name=f"sync {self.user_id}"
                )
            try:
                self._send_json(self._rejoin_message())
            except transport.ConnectionClosed:
                continue
            return
        self._end_session()
        self._report(f"Could not reconnect to {self._url} after {self.reconnect_attempts} tries")
        self.disconnected.emit()

    def _end_session(self) -> None:
        """Nothing more to wait for: interrupted sends fail now instead of going again."""
        with self._lock:
            self._reconnecting = False
            self._closing = True
            self._session_changed.notify_all()

    def _rejoin_message(self) -> Message:
        if self._mode == "direct":
            return create_hello_message(self.user_id, self.display_name)
        if self._resume_token and self._room_code:
            return resume_message(
                self._room_code, self.user_id, self.display_name, self._resume_token
            )
        if self.is_host:
            return create_room_message(self.user_id, self.display_name)
        return join_room_message(self._room_code or "", self.user_id, self.display_name)

    def _resume_failed(self, code: str, retry_after: Any = None) -> None:
        """The relay would not take us back. The host opens a new room at once; a member
        waits for the host to re-open its room. Further refusals are retried with backoff a
        bounded number of times (never a tight loop into the relay's rate limits)."""
        if code == ErrorCode.INVALID_RESUME_TOKEN.value:
            self._resume_token = None  # the relay forgot the secret that signed it
        room = self._room_code or ""
        self._rejoin_tries += 1
        if self.is_host and self._rejoin_tries == 1:
            self.sync_status.emit(
                f"The relay no longer knows room {room}; opening a new room: share its new code"
            )
            with contextlib.suppress(transport.ConnectionClosed):
                self._send_json(self._rejoin_message())
            return
        if self._rejoin_tries > self.reconnect_attempts:
            self._end_session()
            self._report(
                f"Could not open a new room after {self.reconnect_attempts} tries; try again later"
                if self.is_host
                else f"Room {room} did not come back after {self.reconnect_attempts} tries: "
                "the host has not re-opened it. Join again with the code the host shares"
            )
            connection = self._connection
            if connection is not None:
                threading.Thread(target=connection.close, daemon=True).start()
            self.disconnected.emit()
            return
        delay = self._backoff(self._rejoin_tries - 1)
        if code == ErrorCode.RATE_LIMITED.value and isinstance(retry_after, (int, float)):
            delay = max(delay, float(retry_after))
        tries = f"try {self._rejoin_tries} of {self.reconnect_attempts} in {delay:.0f} s"
        self.sync_status.emit(
            f"The relay refused a new room for now ({code}); trying again ({tries})"
            if self.is_host
            else f"The relay does not have room {room} any more (it may have restarted); "
            f"waiting for the host to open it again ({tries})"
        )
        timer = threading.Timer(delay, self._retry_rejoin)
        timer.daemon = True
        timer.start()

    def _retry_rejoin(self) -> None:
        if self._closing or not self._reconnecting:
            return
        with contextlib.suppress(transport.ConnectionClosed):
            self._send_json(self._rejoin_message())

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: the wait before retry number `attempt`."""
        return random.uniform(
            0, min(self.reconnect_max_delay, self.reconnect_base_delay * 2**attempt)
        )

    # --- helpers ------------------------------------------------------------------------

    def _name_of(self, user_id: str) -> str:
        for user in self._users:
            if user.get("user_id") == user_id:
                return user.get("display_name") or user_id
        return user_id

    def _report(self, text: str) -> None:
        """Every failure: a logging record and the `error` signal."""
        log.error("%s", text)
        self.error.emit(text)

    def __del__(self) -> None:
        executor = getattr(self, "_sender", None)
        if executor is not None:
            executor.shutdown(wait=False)

    # --- LAN mode ---------------------------------------------------------------------------

    def connect_direct(self, host_ip: str, port: int, user_name: str) -> None:
        """Joins a LAN session hosted by an AggregationServer at host_ip:port; `connected`
        follows once the host has welcomed this member, or `error`."""
        if not isinstance(port, int) or not 0 < port < 65536:
            self._report(f"Cannot join {host_ip}:{port}: the port must be 1 to 65535")
            return
        host = f"[{host_ip}]" if ":" in host_ip else host_ip
        if self._begin("direct", f"ws://{host}:{port}/ws", user_name, None):
            threading.Thread(
                target=self._open_direct_session, name="sync-connect", daemon=True
            ).start()

    def _open_direct_session(self) -> None:
        self.sync_status.emit(f"Connecting to the LAN host at {self._url}")
        if self._connect():
            self._send_json(create_hello_message(self.user_id, self.display_name))

    def _on_welcome(self, message: Message) -> None:
        payload = message.payload
        users = [u for u in payload["user_list"] if isinstance(u, dict)]
        resumed = self._reconnecting
        self._enter_room({"relay": payload.get("relay")}, users)
        host_id = payload.get("host_id")
        self._host_id = host_id if isinstance(host_id, str) else None
        if payload.get("architecture"):
            self._architecture = payload["architecture"]
            self.architecture_received.emit(self._architecture)
        if resumed:
            self.sync_status.emit("Back in the LAN session")
        else:
            self.sync_status.emit(f"Joined the LAN session at {self._url}")
            self.connected.emit()
        self.user_list_updated.emit(self.users)

    def _on_user_list(self, message: Message) -> None:
        """LAN mode: the host's list of who is in the session, after every join and leave."""
        before = {u.get("user_id"): u for u in self._users}
        self._users = [u for u in message.payload["users"] if isinstance(u, dict)]
        now = {u.get("user_id"): u for u in self._users}
        for user_id in now.keys() - before.keys() - {self.user_id}:
            self.user_joined_room.emit(now[user_id].get("display_name") or user_id)
        for user_id in before.keys() - now.keys():
            self.user_left_room.emit(before[user_id].get("display_name") or user_id)
        self.user_list_updated.emit(self.users)

    def _on_weights_ack(self, message: Message) -> None:
        if message.payload["received"]:
            self.sync_status.emit("The host received these weights")
        else:
            self._report("The host could not use these weights")

    # Message type -> handler, for every text message a client acts on.
    _HANDLERS = {
        MessageType.ROOM_CREATED: _on_room_created,
        MessageType.ROOM_JOINED: _on_room_joined,
        MessageType.USER_JOINED: _on_user_joined,
        MessageType.USER_LEFT: _on_user_left,
        MessageType.ERROR: _on_error,
        MessageType.WEIGHTS_PUSH: _on_weights_push,
        MessageType.GLOBAL_MODEL: _on_global_model,
        MessageType.CHUNK_START: _on_chunk_start,
        MessageType.TRAINING_DATA: _on_training_data,
        MessageType.REQUEST_MODEL: _on_request_model,
        MessageType.SESSION_INFO: _on_session_info,
        MessageType.GOODBYE: _on_goodbye,
        MessageType.WELCOME: _on_welcome,
        MessageType.USER_LIST: _on_user_list,
        MessageType.WEIGHTS_ACK: _on_weights_ack,
        MessageType.PEER_HELLO: MixedRoomMixin._on_peer_hello,
        **{t: PrivateRoomMixin._on_private_control for t in PRIVATE_CONTROL_TYPES},
    }


class HostClient(SyncClient):
    """The host's own connection to its LAN AggregationServer."""

    def connect_to_local_server(self, port: int, user_name: str) -> None:
        self.connect_direct("127.0.0.1", port, user_name)


def attested_host(payload: dict) -> str | None:
    """The room creator's id as the relay attests it in a membership payload, else None."""
    host = payload.get("host_id")
    return host if isinstance(host, str) and host else None


def _websocket_url(url: str) -> str:
    """The relay's WebSocket endpoint: a URL without a path gets `/ws`, as the Worker serves."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/ws")
    return urllib.parse.urlunsplit(parts)


def _with_room(url: str, room_code: str | None) -> str:
    """The URL with `?room=CODE` (docs/operations.md, "Running a cluster"); relays ignore it."""
    if not room_code:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "room"]
    query.append(("room", room_code))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _describe_connect_failure(url: str, exc: Exception) -> str:
    text = str(exc)
    lowered = text.lower()
    tls_words = ("certificate", "tls", "ssl", "handshake", "verify")
    if url.startswith("wss://") and any(word in lowered for word in tls_words):
        return (
            f"TLS failure connecting to {url}: {text}. Check that the relay's certificate is "
            "valid for this host name and signed by a trusted authority"
        )
    return f"Cannot reach the relay at {url}: {text}. Check the address and your network"


def encode_png(array: Any, what: str) -> bytes:
    """A 2-D crop (or H x W x 3/4) as PNG bytes, with Pillow. uint8 and uint16 keep their
    values; bool becomes 0/255; floats are scaled to 0-255 over the crop's range."""
    from PIL import Image

    values = np.asarray(array)
    if values.ndim not in (2, 3) or values.size == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array, got shape {values.shape}")
    if values.dtype == np.bool_:
        values = values.astype(np.uint8) * 255
    elif np.issubdtype(values.dtype, np.floating):
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scale = 255.0 / (high - low) if high > low else 0.0
        values = np.nan_to_num((values - low) * scale).astype(np.uint8)
    elif values.dtype not in (np.uint8, np.uint16):
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{what}: integer values outside 0..65535 cannot be a PNG")
        values = values.astype(np.uint16 if values.max() > 255 else np.uint8)
    if values.ndim == 3 and values.dtype != np.uint8:
        raise ValueError(f"{what}: colour crops must be uint8")
    if values.ndim == 3 and values.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected 3 or 4 channels, got {values.shape[2]}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(values)).save(buffer, format="PNG")
    return buffer.getvalue()
